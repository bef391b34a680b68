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
