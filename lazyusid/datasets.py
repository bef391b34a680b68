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

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import h5py
import numpy as np

from .dimension import Dimension
from .errors import DatasetSelectionError
from .files import PathLike, open_file
from .write import write_main

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

#: HDF5 path of the main dataset both generators write
MAIN_DATASET = "/Measurement_000/Channel_000/Raw_Data"
#: HDF5 group holding the ground-truth maps
GROUND_TRUTH_GROUP = "/Ground_Truth"

# bytes of main data generated and written at once (whole Y rows; at least one row)
_BLOCK_BYTES = 64 * 2**20

_UNITS = {
    "amplitude": "V",
    "frequency": "Hz",
    "quality_factor": "",
    "phase": "rad",
    "coercive_voltage": "V",
    "frequencies": "Hz",
    "dc_offsets": "V",
}
_DESCRIPTIONS = {
    "amplitude": "SHO amplitude A (the response far below resonance; |R(w0)| = A*Q)",
    "frequency": "SHO resonance frequency w0",
    "quality_factor": "SHO quality factor Q",
    "phase": "SHO phase",
    "coercive_voltage": "coercive voltage Vc of the hysteresis loop",
    "frequencies": "excitation frequencies (the Frequency dimension)",
    "dc_offsets": "DC offset at each step (the DC_Offset dimension)",
}


def sho_response(freqs, amplitude, frequency, quality_factor, phase) -> np.ndarray:
    """Complex response of a damped simple harmonic oscillator.

    ``R(w) = A · w0² / (w² − w0² − i·w·w0/Q) · exp(i·φ)``, evaluated in
    float64. At resonance ``R(w0) = i·A·Q·exp(i·φ)``; far below it
    ``R → −A·exp(i·φ)``. Only the ratio ``w / w0`` enters, so any frequency
    unit works as long as ``freqs`` and ``frequency`` share it.

    Parameters
    ----------
    freqs : array-like, shape (n_freq,)
        Frequencies ``w`` at which to evaluate the response.
    amplitude, frequency, quality_factor, phase : array-like
        ``A``, ``w0`` (> 0), ``Q`` (> 0) and ``φ`` (radians); scalars or
        arrays that broadcast against each other.

    Returns
    -------
    numpy.ndarray of complex128, shape ``(*broadcast shape of the parameters, n_freq)``

    Examples
    --------
    >>> f = np.linspace(300e3, 350e3, 5)
    >>> r = sho_response(f, 1e-3, 325e3, 100.0, 0.0)
    >>> round(float(r[2].imag), 9)                          # on resonance: i·A·Q
    0.1
    >>> sho_response(f, np.ones((4, 3)), 325e3, 100.0, 0.0).shape
    (4, 3, 5)
    """
    w = np.asarray(freqs, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"freqs must be a 1-D array of frequencies, got shape {w.shape}")
    amp, w0, q, phi = (
        np.asarray(p, dtype=np.float64)[..., None] for p in (amplitude, frequency, quality_factor, phase)
    )
    ratio = w / w0  # only w/w0 enters: w0²/(w² − w0² − i·w·w0/Q) = 1/(r² − 1 − i·r/Q)
    denom = np.empty(ratio.shape, dtype=np.complex128)
    denom.real = ratio * ratio - 1.0
    denom.imag = -ratio / q
    return amp * (np.cos(phi) + 1j * np.sin(phi)) / denom


def polarisation(dc_offsets, coercive_voltage, *, switching_width: float = 1.0) -> np.ndarray:
    """Ferroelectric polarisation along a DC waveform, following a hysteresis loop.

    While the voltage rises, ``P = tanh((V − Vc) / width)`` (switching up
    to +1 above ``+Vc``); while it falls, ``P = tanh((V + Vc) / width)``
    (switching down to −1 below ``−Vc``). Whether step ``k`` rises or falls
    is read from ``V[k] − V[k−1]``, cyclically (the waveform repeats; steps
    with no change keep the previous direction). ``P`` stays in [−1, 1].

    Parameters
    ----------
    dc_offsets : array-like, shape (n_dc,)
        The DC voltage at each step, in the order it is applied.
    coercive_voltage : array-like
        ``Vc`` (positive, same units as ``dc_offsets``), e.g. a 2-D map.
    switching_width : float
        Voltage over which the polarisation switches (``width`` above).

    Returns
    -------
    numpy.ndarray of float64, shape ``(*coercive_voltage.shape, n_dc)``

    Examples
    --------
    >>> v = np.array([0.0, 5.0, 10.0, 5.0, 0.0, -5.0, -10.0, -5.0])
    >>> np.round(polarisation(v, 3.0, switching_width=0.5), 2)
    array([-1.,  1.,  1.,  1.,  1., -1., -1., -1.])
    """
    v = np.asarray(dc_offsets, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"dc_offsets must be a non-empty 1-D array, got shape {v.shape}")
    if not switching_width > 0:
        raise ValueError(f"switching_width must be positive, got {switching_width!r}")
    step = np.sign(v - np.roll(v, 1))
    nonzero = np.flatnonzero(step)
    if nonzero.size == 0:
        rising = np.ones(v.size, dtype=bool)
    else:
        # a step with no change keeps the direction of the last step that changed (cyclically)
        last = np.maximum.accumulate(np.where(step != 0, np.arange(v.size), -1))
        last[last < 0] = nonzero[-1]
        rising = step[last] > 0
    vc = np.asarray(coercive_voltage, dtype=np.float64)[..., None]
    threshold = np.where(rising, vc, -vc)
    return np.tanh((v - threshold) / switching_width)


@dataclass(frozen=True, eq=False, repr=False)
class BEGroundTruth:
    """The parameters a BE-PFM file was generated from.

    The four maps have shape ``(n_y, n_x)`` (float32, read-only); the data at
    ``(y, x)`` are ``sho_response(frequencies, amplitude[y, x],
    frequency[y, x], quality_factor[y, x], phase[y, x])`` plus complex
    Gaussian noise of standard deviation ``noise_std``.

    Attributes
    ----------
    amplitude : numpy.ndarray
        SHO amplitude ``A`` in V (the response far below resonance; the
        on-resonance amplitude is ``A · Q``).
    frequency : numpy.ndarray
        Resonance frequency ``w0`` in Hz.
    quality_factor : numpy.ndarray
        Quality factor ``Q`` (dimensionless).
    phase : numpy.ndarray
        Phase ``φ`` in radians.
    frequencies : numpy.ndarray
        The excitation frequencies in Hz (float64), the ``Frequency`` dimension.
    noise : float
        Relative noise level: ``noise_std / mean(A · Q)``.
    noise_std : float
        Standard deviation of the complex noise in V: ``E|n|² = noise_std²``,
        the real and imaginary parts each having ``noise_std / √2``.
    seed : int
        Seed the file was generated from.
    """

    MAPS: ClassVar[tuple[str, ...]] = ("amplitude", "frequency", "quality_factor", "phase")

    amplitude: np.ndarray
    frequency: np.ndarray
    quality_factor: np.ndarray
    phase: np.ndarray
    frequencies: np.ndarray
    noise: float
    noise_std: float
    seed: int

    def __post_init__(self) -> None:
        shape = None
        for name in self.MAPS:
            value = np.array(getattr(self, name), dtype=np.float32, order="C")
            if value.ndim != 2 or (shape is not None and value.shape != shape):
                raise ValueError(
                    f"{name} must be a 2-D (n_y, n_x) map like the others, got shape {value.shape}"
                )
            shape = value.shape
            value.flags.writeable = False
            object.__setattr__(self, name, value)
        for name in ("frequencies", "dc_offsets"):
            if hasattr(self, name):
                value = np.array(getattr(self, name), dtype=np.float64)
                value.flags.writeable = False
                object.__setattr__(self, name, value)
        object.__setattr__(self, "noise", float(self.noise))
        object.__setattr__(self, "noise_std", float(self.noise_std))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_y, n_x)``: the shape of every map."""
        return self.amplitude.shape

    def model(self, rows: slice = slice(None)) -> np.ndarray:
        """The noise-free data of the ``Y`` rows ``rows``, complex128.

        Shape ``(n_rows, n_x, n_freq)`` (BEPS: ``(n_rows, n_x, n_dc, n_freq)``):
        the N-D data of the file without noise, computed one row at a time.
        """
        js = range(*rows.indices(self.shape[0]))
        out = np.empty((len(js), self.shape[1], *self._spec_shape), dtype=np.complex128)
        for i, j in enumerate(js):
            out[i] = self._model_row(j)
        return out

    @property
    def _spec_shape(self) -> tuple[int, ...]:
        return (self.frequencies.size,)

    def _model_row(self, j: int) -> np.ndarray:
        return sho_response(
            self.frequencies, self.amplitude[j], self.frequency[j], self.quality_factor[j], self.phase[j]
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None  # type: ignore[assignment]  # holds arrays: equal values, no hash

    def __repr__(self) -> str:
        n_y, n_x = self.shape
        spec = " × ".join(str(n) for n in self._spec_shape)
        return (
            f"{type(self).__name__}(n_y={n_y}, n_x={n_x}, spectrum={spec}, "
            f"noise={self.noise:g}, noise_std={self.noise_std:.3g} V, seed={self.seed})"
        )


@dataclass(frozen=True, eq=False, repr=False)
class BEPSGroundTruth(BEGroundTruth):
    """The parameters a BEPS file was generated from.

    As :class:`BEGroundTruth`, plus a ``coercive_voltage`` map (V). The data
    at ``(y, x, k)`` are ``polarisation(dc_offsets, coercive_voltage[y, x],
    switching_width=switching_width)[k]`` times the SHO response at
    ``(y, x)``, plus noise.

    Attributes
    ----------
    coercive_voltage : numpy.ndarray
        Coercive voltage ``Vc`` in V, shape ``(n_y, n_x)``.
    dc_offsets : numpy.ndarray
        The DC offset at each step in V (float64), the ``DC_Offset`` dimension.
    switching_width : float
        Voltage width in V of the tanh switching of the polarisation.
    """

    MAPS: ClassVar[tuple[str, ...]] = (*BEGroundTruth.MAPS, "coercive_voltage")

    coercive_voltage: np.ndarray
    dc_offsets: np.ndarray
    switching_width: float

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "switching_width", float(self.switching_width))

    def polarisation(self, rows: slice = slice(None)) -> np.ndarray:
        """Polarisation of the ``Y`` rows ``rows`` at every DC step, shape ``(n_rows, n_x, n_dc)``."""
        return polarisation(
            self.dc_offsets, self.coercive_voltage[rows], switching_width=self.switching_width
        )

    @property
    def _spec_shape(self) -> tuple[int, ...]:
        return (self.dc_offsets.size, self.frequencies.size)

    def _model_row(self, j: int) -> np.ndarray:
        loop = polarisation(self.dc_offsets, self.coercive_voltage[j], switching_width=self.switching_width)
        return loop[:, :, None] * super()._model_row(j)[:, None, :]


def make_be_pfm(
    path: PathLike,
    *,
    n_x: int = 128,
    n_y: int = 128,
    n_freq: int = 119,
    f_min: float = 300e3,
    f_max: float = 350e3,
    noise: float = 0.03,
    seed: int = 0,
    pixel_size: float = 20e-9,
    amplitude_range: tuple[float, float] = (2e-3, 6e-3),
    frequency_range: tuple[float, float] | None = None,
    quality_range: tuple[float, float] = (60.0, 250.0),
    phase_range: tuple[float, float] = (-math.pi / 2, math.pi / 2),
    overwrite: bool = False,
    chunks: tuple[int, int] | None = None,
) -> BEGroundTruth:
    """Write a synthetic BE-PFM USID file and return its ground truth.

    The main dataset ``/Measurement_000/Channel_000/Raw_Data`` (complex64,
    ``Piezoresponse`` in V) has position dimensions ``Y`` × ``X`` (metres,
    ``0, pixel_size, 2·pixel_size...``) and the spectroscopic dimension
    ``Frequency`` (Hz, ``n_freq`` evenly spaced values from ``f_min`` to
    ``f_max``). Each spectrum is ``sho_response(freqs, A, w0, Q, φ)`` plus
    complex Gaussian noise. The maps of ``A``, ``w0``, ``Q`` and ``φ`` are
    smooth (a few sinusoids of 0.3–1.5 periods across the image plus two
    Gaussian blobs, with random directions and phases from ``seed``) and
    each spans exactly its range. The file is written a block of ``Y`` rows
    at a time (about 64 MiB), so memory stays bounded whatever its size;
    only the float32 maps (16 bytes per position) are held whole.

    Parameters
    ----------
    path : str or os.PathLike
        File to create. Written to ``<path>.partial`` and renamed when
        complete, so an interrupted run never leaves a file at ``path``.
    n_x, n_y : int
        Number of positions along ``X`` (fast) and ``Y`` (slow).
    n_freq : int
        Number of frequency bins.
    f_min, f_max : float
        Excitation band in Hz.
    noise : float
        Standard deviation of the complex noise relative to the mean
        on-resonance amplitude: ``noise_std = noise · mean(A · Q)`` (V), so
        the mean signal-to-noise ratio at resonance is ``1 / noise``. The
        default 0.03 gives a visibly noisy spectrum with SNR ≈ 33 on average
        (≈ 5–100 across the image, as ``A · Q`` varies). 0 gives exact data.
    seed : int
        Non-negative seed of the maps and the noise.
    pixel_size : float
        Distance between positions in m (default 20 nm: 2.56 µm for 128).
    amplitude_range : (float, float)
        Range of ``A`` in V (default 2–6 mV; ``A · Q`` is 0.12–1.5 V).
    frequency_range : (float, float), optional
        Range of ``w0`` in Hz, inside the band. Default: the central 40 % of
        the band (315–335 kHz for 300–350 kHz).
    quality_range : (float, float)
        Range of ``Q`` (default 60–250).
    phase_range : (float, float)
        Range of ``φ`` in radians, within [−π, π] (default ±π/2).
    overwrite : bool
        Replace ``path`` if it exists (default: raise ``FileExistsError``).
    chunks : (int, int), optional
        HDF5 chunk shape ``(positions, spectroscopic points)`` of the main
        dataset. Default: contiguous, as instruments usually write it.

    Returns
    -------
    BEGroundTruth
        The maps, frequencies and noise; also stored in ``/Ground_Truth``.

    Examples
    --------
    >>> truth = make_be_pfm("be.h5", n_x=64, n_y=32)                    # doctest: +SKIP
    >>> data = lazyusid.open_usid("be.h5")                              # doctest: +SKIP
    >>> data.dims, data.shape                                           # doctest: +SKIP
    (('Y', 'X', 'Frequency'), (32, 64, 119))
    >>> fit = sho_response(data.Frequency.values, truth.amplitude,      # doctest: +SKIP
    ...                    truth.frequency, truth.quality_factor, truth.phase)
    """
    freqs = _check_be_args(n_x, n_y, n_freq, f_min, f_max, noise, seed, pixel_size, overwrite, path)
    ranges = _sho_ranges(f_min, f_max, amplitude_range, frequency_range, quality_range, phase_range)
    maps = _smooth_maps(seed, n_y, n_x, ranges)
    truth = BEGroundTruth(
        **maps, frequencies=freqs, noise=noise, noise_std=noise * _mean_on_resonance(maps), seed=seed
    )
    attrs = {
        "data_type": "BELineData",
        "BE_center_frequency_[Hz]": (f_min + f_max) / 2,
        "BE_band_width_[Hz]": f_max - f_min,
    }
    spec_dims = [Dimension("Frequency", "Hz", freqs)]
    _write_file(path, truth, spec_dims, pixel_size, attrs, "make_be_pfm", overwrite, chunks)
    return truth


def make_beps(
    path: PathLike,
    *,
    n_x: int = 32,
    n_y: int = 32,
    n_dc: int = 16,
    n_freq: int = 64,
    f_min: float = 300e3,
    f_max: float = 350e3,
    v_max: float = 10.0,
    noise: float = 0.03,
    seed: int = 0,
    pixel_size: float = 50e-9,
    amplitude_range: tuple[float, float] = (2e-3, 6e-3),
    frequency_range: tuple[float, float] | None = None,
    quality_range: tuple[float, float] = (60.0, 250.0),
    phase_range: tuple[float, float] = (-math.pi / 2, math.pi / 2),
    coercive_range: tuple[float, float] = (2.0, 6.0),
    switching_width: float = 1.0,
    overwrite: bool = False,
    chunks: tuple[int, int] | None = None,
) -> BEPSGroundTruth:
    """Write a synthetic BEPS (switching spectroscopy) USID file and return its ground truth.

    Like :func:`make_be_pfm`, with two spectroscopic dimensions:
    ``DC_Offset`` (V, slow) × ``Frequency`` (Hz, fast). The DC offset is one
    period of a triangle wave sampled at ``n_dc`` steps, ``V_k = v_max ·
    tri(k / n_dc)``: 0 → +v_max → −v_max → back towards 0 (the next period
    would start at 0). At step ``k`` the SHO response of a position is
    multiplied by its polarisation ``P_k`` in [−1, 1]
    (:func:`polarisation`): a hysteresis loop that switches up when ``V``
    rises above ``+Vc`` and down when it falls below ``−Vc``, so negative
    ``P`` flips the phase by π. The coercive voltage ``Vc`` is a smooth map
    like the SHO parameters. Noise as in :func:`make_be_pfm`.

    Defaults are small (32 × 32 positions, 16 DC steps, 64 frequencies:
    8 MiB) so tests and examples run quickly.

    Parameters
    ----------
    path, n_x, n_y, n_freq, f_min, f_max, noise, seed, overwrite, chunks
        As in :func:`make_be_pfm`.
    n_dc : int
        Number of DC steps in the triangle waveform (a multiple of 4 hits
        +v_max and −v_max exactly).
    v_max : float
        Amplitude of the DC waveform in V.
    pixel_size : float
        Distance between positions in m (default 50 nm).
    amplitude_range, frequency_range, quality_range, phase_range
        Ranges of the SHO maps, as in :func:`make_be_pfm`.
    coercive_range : (float, float)
        Range of ``Vc`` in V, within (0, v_max) (default 2–6 V for ±10 V).
    switching_width : float
        Voltage over which the polarisation switches (tanh width, V).

    Returns
    -------
    BEPSGroundTruth

    Examples
    --------
    >>> truth = make_beps("beps.h5")                                    # doctest: +SKIP
    >>> lazyusid.open_usid("beps.h5").dims                              # doctest: +SKIP
    ('Y', 'X', 'DC_Offset', 'Frequency')
    >>> truth.polarisation().shape                                      # doctest: +SKIP
    (32, 32, 16)
    """
    freqs = _check_be_args(n_x, n_y, n_freq, f_min, f_max, noise, seed, pixel_size, overwrite, path)
    _check_size("n_dc", n_dc)
    if not (np.isfinite(v_max) and v_max > 0):
        raise ValueError(f"v_max must be a positive number of volts, got {v_max!r}")
    if not (np.isfinite(switching_width) and switching_width > 0):
        raise ValueError(f"switching_width must be a positive number of volts, got {switching_width!r}")
    ranges = _sho_ranges(f_min, f_max, amplitude_range, frequency_range, quality_range, phase_range)
    ranges["coercive_voltage"] = _check_range("coercive_range", coercive_range, 0.0, v_max, open_low=True)
    maps = _smooth_maps(seed, n_y, n_x, ranges)
    dc = v_max * _triangle(np.arange(n_dc) / n_dc)
    truth = BEPSGroundTruth(
        **maps,
        frequencies=freqs,
        noise=noise,
        noise_std=noise * _mean_on_resonance(maps),
        seed=seed,
        dc_offsets=dc,
        switching_width=switching_width,
    )
    attrs = {
        "data_type": "BEPSData",
        "VS_mode": "DC modulation mode",
        "VS_amplitude_[V]": v_max,
        "VS_steps_per_full_cycle": n_dc,
        "VS_number_of_cycles": 1,
        "BE_center_frequency_[Hz]": (f_min + f_max) / 2,
        "BE_band_width_[Hz]": f_max - f_min,
    }
    spec_dims = [Dimension("DC_Offset", "V", dc), Dimension("Frequency", "Hz", freqs)]
    _write_file(path, truth, spec_dims, pixel_size, attrs, "make_beps", overwrite, chunks)
    return truth


def load_ground_truth(path: PathLike) -> BEGroundTruth:
    """Read the ground truth stored by :func:`make_be_pfm` or :func:`make_beps`.

    Returns
    -------
    BEGroundTruth or BEPSGroundTruth
        Equal (``==``) to what the generator returned.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    lazyusid.DatasetSelectionError
        If the file has no ``/Ground_Truth`` group written by these generators.

    Examples
    --------
    >>> make_be_pfm("be.h5", n_x=8, n_y=8) == load_ground_truth("be.h5")  # doctest: +SKIP
    True
    """
    with open_file(path) as f:
        group = f.get(GROUND_TRUTH_GROUP)
        generator = _text(group.attrs.get("generator")) if isinstance(group, h5py.Group) else None
        classes = {"make_be_pfm": BEGroundTruth, "make_beps": BEPSGroundTruth}
        if generator not in classes:
            raise DatasetSelectionError(
                f"{f.filename!r} holds no ground truth: expected a group {GROUND_TRUTH_GROUP!r} written by "
                "lazyusid.datasets.make_be_pfm or make_beps"
            )
        cls = classes[generator]
        kwargs = {}
        for fld in fields(cls):
            if fld.name in group:
                kwargs[fld.name] = group[fld.name][()]
            else:
                kwargs[fld.name] = group.attrs[fld.name]
    return cls(**kwargs)


# --- arguments ---------------------------------------------------------------


def _check_size(name: str, n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")


def _check_range(name: str, value, low: float, high: float, *, open_low: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    below = lo <= low if open_low else lo < low
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi or below or hi > high:
        bracket = "(" if open_low else "["
        raise ValueError(
            f"{name} must be a pair (low, high) with low <= high inside {bracket}{low:g}, {high:g}], "
            f"got {value!r}"
        )
    return lo, hi


def _check_be_args(n_x, n_y, n_freq, f_min, f_max, noise, seed, pixel_size, overwrite, path):
    """Validate the arguments shared by both generators; return the frequencies in Hz."""
    for name, n in (("n_x", n_x), ("n_y", n_y), ("n_freq", n_freq)):
        _check_size(name, n)
    if not (np.isfinite(f_min) and np.isfinite(f_max) and 0 < f_min < f_max):
        raise ValueError(f"need 0 < f_min < f_max (Hz), got f_min={f_min!r}, f_max={f_max!r}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a non-negative number (relative to mean A·Q), got {noise!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size must be a positive number of metres, got {pixel_size!r}")
    _check_target(path, overwrite)
    return np.linspace(f_min, f_max, n_freq)


def _sho_ranges(f_min, f_max, amplitude_range, frequency_range, quality_range, phase_range):
    if frequency_range is None:
        band = f_max - f_min
        frequency_range = (f_min + 0.3 * band, f_min + 0.7 * band)
    return {
        "amplitude": _check_range("amplitude_range", amplitude_range, 0.0, math.inf, open_low=True),
        "frequency": _check_range("frequency_range", frequency_range, f_min, f_max),
        "quality_factor": _check_range("quality_range", quality_range, 0.0, math.inf, open_low=True),
        "phase": _check_range("phase_range", phase_range, -math.pi, math.pi),
    }


def _check_target(path: PathLike, overwrite: bool) -> None:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; give the path of the file to create")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"{path!r} already exists; pass overwrite=True to replace it, or choose another path"
        )


# --- maps --------------------------------------------------------------------


def _triangle(t: np.ndarray) -> np.ndarray:
    """One period of a triangle wave: 0 → 1 at t=¼ → −1 at t=¾ → 0 at t=1."""
    t = np.mod(t, 1.0)
    return np.where(t < 0.25, 4 * t, np.where(t < 0.75, 2 - 4 * t, 4 * t - 4))


def _smooth_maps(
    seed: int, n_y: int, n_x: int, ranges: dict[str, tuple[float, float]]
) -> dict[str, np.ndarray]:
    """Smooth float32 maps spanning exactly their ranges, computed one row at a time."""
    rng = np.random.default_rng([seed, 0])
    scale = max(n_x, n_y)
    x = np.arange(n_x, dtype=np.float64)
    maps = {}
    for name, (lo, hi) in ranges.items():
        # three plane waves of 0.3–1.5 periods across the image, two Gaussian blobs
        nu = rng.uniform(0.3, 1.5, 3) * 2 * np.pi / scale
        theta = rng.uniform(0, 2 * np.pi, 3)
        kx, ky = nu * np.cos(theta), nu * np.sin(theta)
        psi = rng.uniform(0, 2 * np.pi, 3)
        w_wave = rng.uniform(0.5, 1.0, 3)
        cx, cy = rng.uniform(0, n_x, 2), rng.uniform(0, n_y, 2)
        width = rng.uniform(0.1, 0.25, 2) * scale
        w_blob = rng.choice([-1.0, 1.0], 2) * rng.uniform(0.5, 1.0, 2)
        field = np.empty((n_y, n_x), dtype=np.float32)
        for j in range(n_y):
            waves = w_wave[:, None] * np.cos(kx[:, None] * x + (ky * j + psi)[:, None])
            blobs = w_blob[:, None] * np.exp(
                -((x - cx[:, None]) ** 2 + ((j - cy) ** 2)[:, None]) / (2 * width[:, None] ** 2)
            )
            field[j] = waves.sum(axis=0) + blobs.sum(axis=0)
        low, span = float(field.min()), float(field.max()) - float(field.min())
        for j in range(n_y):
            t = (field[j].astype(np.float64) - low) / span if span > 0 else np.full(n_x, 0.5)
            field[j] = np.clip(lo + (hi - lo) * t, lo, hi)
        maps[name] = field
    return maps


def _mean_on_resonance(maps: dict[str, np.ndarray]) -> float:
    """Mean of ``A · Q`` over the image, in float64, one row at a time."""
    amp, q = maps["amplitude"], maps["quality_factor"]
    total = sum(
        float(np.dot(a.astype(np.float64), b.astype(np.float64))) for a, b in zip(amp, q, strict=True)
    )
    return total / amp.size


# --- writing -----------------------------------------------------------------


def _write_file(
    path,
    truth: BEGroundTruth,
    spec_dims: Sequence[Dimension],
    pixel_size,
    attrs,
    generator,
    overwrite,
    chunks,
):
    """Write the file to ``<path>.partial``, then rename it to ``path``."""
    path = os.fspath(path)
    _check_target(path, overwrite)
    partial = path + ".partial"
    n_y, n_x = truth.shape
    try:
        with h5py.File(partial, "w") as f:
            channel = f.create_group(MAIN_DATASET.rsplit("/", 1)[0])
            measurement = channel.parent
            measurement.attrs.update(
                {**attrs, "grid_num_rows": n_y, "grid_num_cols": n_x, "num_bins": truth.frequencies.size}
            )
            measurement.attrs["synthetic"] = f"lazyusid.datasets.{generator}(seed={truth.seed})"
            channel.attrs["channel_type"] = "BE"
            dset = write_main(
                channel,
                None,
                dtype=np.complex64,
                name=MAIN_DATASET.rsplit("/", 1)[1],
                quantity="Piezoresponse",
                units="V",
                pos_dims=[
                    Dimension("Y", "m", np.arange(n_y) * pixel_size),
                    Dimension("X", "m", np.arange(n_x) * pixel_size),
                ],
                spec_dims=spec_dims,
                chunks=None if chunks is None else tuple(chunks),
            )
            _write_data(dset, truth)
            _write_truth(f, truth, generator)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def _write_data(dset: h5py.Dataset, truth: BEGroundTruth) -> None:
    """Fill the 2-D main dataset a block of ``Y`` rows at a time.

    Each row is computed on its own (model, then noise from its own seed),
    so the data do not depend on the block size.
    """
    n_y, n_x = truth.shape
    n_spec = dset.shape[1]
    rows_per_block = max(1, min(n_y, _BLOCK_BYTES // (n_x * n_spec * dset.dtype.itemsize)))
    scale = np.float32(truth.noise_std / math.sqrt(2))
    block = np.empty((rows_per_block, n_x, n_spec), dtype=np.complex64)
    for start in range(0, n_y, rows_per_block):
        stop = min(n_y, start + rows_per_block)
        for j in range(start, stop):
            row = block[j - start]
            row[...] = truth._model_row(j).reshape(n_x, n_spec)
            if scale > 0:
                rng = np.random.default_rng([truth.seed, 1, j])
                noise = rng.standard_normal((n_x, 2 * n_spec), dtype=np.float32).view(np.complex64)
                noise *= scale
                row += noise
        dset[start * n_x : stop * n_x] = block[: stop - start].reshape(-1, n_spec)


def _write_truth(f: h5py.File, truth: BEGroundTruth, generator: str) -> None:
    """Plain datasets (no ``quantity``, no ancillaries: never USID main datasets)."""
    group = f.create_group(GROUND_TRUTH_GROUP)
    group.attrs["generator"] = generator
    group.attrs["description"] = (
        f"parameters lazyusid.datasets.{generator} generated {MAIN_DATASET} from; "
        "read them with lazyusid.datasets.load_ground_truth"
    )
    for fld in fields(truth):
        value = getattr(truth, fld.name)
        if isinstance(value, np.ndarray):
            dset = group.create_dataset(fld.name, data=value)
            dset.attrs["units"] = _UNITS[fld.name]
            dset.attrs["description"] = _DESCRIPTIONS[fld.name]
        else:
            group.attrs[fld.name] = value


def _text(value):
    return value.decode() if isinstance(value, bytes) else value
