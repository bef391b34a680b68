"""The seed tutorial's per-spectrum function: pyUSID's ``PeakFinder`` example.

Kept in the package so the demo, the examples, the tests and the
benchmarks run the very same function (and worker processes can import it).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks_cwt

#: the widths the pyUSID tutorial passes to ``find_peaks_cwt``
PEAK_WIDTHS = np.linspace(20, 60, 30)


def peak_amplitude(spectrum: np.ndarray, widths: np.ndarray = PEAK_WIDTHS) -> float:
    """Amplitude of the peak of ``abs(spectrum)`` closest to the centre of the band.

    ``scipy.signal.find_peaks_cwt`` on the magnitude, as in pyUSID's
    ``PeakFinder`` tutorial; 0 when no peak is found. The amplitude is in
    the units of the spectrum: map it with
    ``outputs={"peak_amplitude": {"units": "same"}}`` to store it in them
    (``"V"`` for the synthetic data), not in arbitrary units.

    Examples
    --------
    >>> f = np.linspace(-1, 1, 119)
    >>> round(peak_amplitude(1 / (1 + 100 * f**2)), 3)
    1.0
    """
    magnitude = np.abs(spectrum)
    peaks = find_peaks_cwt(magnitude, widths)
    if len(peaks) == 0:
        return 0.0
    centre = magnitude.size // 2
    closest = peaks[np.argmin(np.abs(np.asarray(peaks) - centre))]
    return float(magnitude[closest])
