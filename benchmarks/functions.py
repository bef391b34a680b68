"""The functions the benchmarks map (importable by worker processes, so not defined in ``__main__``)."""

from __future__ import annotations

import numpy as np

from . import counter


def abs_max_block(block: np.ndarray) -> np.ndarray:
    """Benchmark 2's vectorised block function: the peak amplitude of every spectrum of a block."""
    return np.abs(block).max(axis=-1)


def abs_max(spectrum: np.ndarray) -> float:
    """The same per spectrum (a cheap Python function: runs in worker processes)."""
    return float(np.abs(spectrum).max())


def counted_abs_max_block(block: np.ndarray) -> np.ndarray:
    """:func:`abs_max_block`, counting the positions it computes (vectorised functions run in-process)."""
    counter.positions += block.shape[0]
    return np.abs(block).max(axis=-1)


def scaled_abs_max_block(block: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """A family of computations (one per ``scale``) to fill a file with results groups."""
    counter.positions += block.shape[0]
    return np.abs(block).max(axis=-1) * scale


#: the half-width (points either side of the maximum) of :func:`quadratic_peak`'s fit
FIT_HALF_WIDTH = 3


def quadratic_peak(spectrum: np.ndarray) -> float:
    """Issue 14's cheap per-spectrum function (~20 µs): the height of a parabola fitted around the peak.

    ``np.polyfit`` of degree 2 to the 7 points of ``abs(spectrum)`` around
    its maximum (moved inside the band at the edges); the fitted vertex's
    height is returned (the maximum itself when the parabola opens upwards).
    """
    magnitude = np.abs(spectrum).astype(np.float64)
    h = FIT_HALF_WIDTH
    i = min(max(int(magnitude.argmax()), h), magnitude.size - 1 - h)
    c2, c1, c0 = np.polyfit(np.arange(-h, h + 1.0), magnitude[i - h : i + h + 1], 2)
    if c2 >= 0:
        return float(magnitude[i])
    return float(c0 - c1 * c1 / (4 * c2))
