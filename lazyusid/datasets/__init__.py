"""Synthetic Band-Excitation (BE) data with a known ground truth.

Two generators write realistic USID files, laid out like the files pyUSID's
BE translators produce (main dataset ``/Measurement_000/Channel_000/Raw_Data``,
complex64, quantity ``"Piezoresponse"`` in ``"V"``, position dimensions
``Y`` (slow) then ``X`` (fast) in metres):

- :func:`make_be_pfm`: BE piezoresponse force microscopy, one spectroscopic
  dimension ``Frequency``;
- :func:`make_beps`: BE switching spectroscopy, spectroscopic dimensions
  ``DC_Offset`` (slow) × ``Frequency`` (fast), with a ferroelectric
  hysteresis loop at every position.

Every spectrum is a damped simple harmonic oscillator (:func:`sho_response`)
whose amplitude, resonance frequency, quality factor and phase vary smoothly
across the image, plus complex Gaussian noise. The maps are returned as a
frozen :class:`BEGroundTruth` (or :class:`BEPSGroundTruth`) and also stored
in the file under ``/Ground_Truth`` (plain datasets, not USID main datasets),
from where :func:`load_ground_truth` reads them back.

Files are streamed to disk a block of ``Y`` rows at a time, so their size is
bounded by the disk, not by memory, and the data depend only on the seed:
the noise of ``Y`` row ``j`` comes from ``numpy.random.default_rng([seed, 1, j])``
and the maps from ``numpy.random.default_rng([seed, 0])``.
"""

from .generate import make_be_pfm, make_beps
from .models import polarisation, sho_response
from .truth import GROUND_TRUTH_GROUP, MAIN_DATASET, BEGroundTruth, BEPSGroundTruth, load_ground_truth

__all__ = [
    "GROUND_TRUTH_GROUP",
    "MAIN_DATASET",
    "BEGroundTruth",
    "BEPSGroundTruth",
    "load_ground_truth",
    "make_be_pfm",
    "make_beps",
    "polarisation",
    "sho_response",
]
