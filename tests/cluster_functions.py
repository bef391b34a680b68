"""Functions mapped in ``tests/test_cluster.py``, importable by worker processes.

Cluster workers run in their own processes and working directories, so the
functions they evaluate must live in a module on their ``PYTHONPATH``
(``tests/``), not in the test module or a closure. Each function also counts
its calls in its own process, so a test can ask every worker (with
``client.run(calls)``) how many spectra it evaluated.
"""

from __future__ import annotations

import os
import time

import numpy as np

#: seconds slept per spectrum by :func:`peak_features`: makes the run time depend on the
#: number of spectra, not on how busy the machine's cores are
SLEEP_S = 0.002

_CALLS = 0


def peak_features(spectrum: np.ndarray) -> tuple[np.float32, np.int32, np.float32]:
    """Peak magnitude, its index and the mean magnitude of one spectrum; takes about 2 ms.

    Parameters
    ----------
    spectrum : numpy.ndarray, shape (n,)
        One spectrum (any numeric dtype; complex spectra use their modulus).

    Returns
    -------
    tuple of (numpy.float32, numpy.int32, numpy.float32)
        ``max |s|``, ``argmax |s|`` and ``mean |s|``.
    """
    global _CALLS
    _CALLS += 1
    magnitude = np.abs(spectrum)
    peak = int(np.argmax(magnitude))
    time.sleep(SLEEP_S)
    return np.float32(magnitude[peak]), np.int32(peak), np.float32(magnitude.mean(dtype=np.float64))


def reference(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`peak_features` over every row of a 2-D array, with a plain loop (no sleep).

    Parameters
    ----------
    rows : numpy.ndarray, shape (n_positions, n_spectral)

    Returns
    -------
    tuple of numpy.ndarray
        The three outputs of :func:`peak_features`, one value per row.
    """
    peaks = np.empty(len(rows), np.float32)
    where = np.empty(len(rows), np.int32)
    means = np.empty(len(rows), np.float32)
    for i, row in enumerate(rows):
        magnitude = np.abs(row)
        where[i] = np.argmax(magnitude)
        peaks[i] = magnitude[where[i]]
        means[i] = magnitude.mean(dtype=np.float64)
    return peaks, where, means


def calls() -> int:
    """How many spectra :func:`peak_features` evaluated in this process."""
    return _CALLS


def process_io() -> dict[str, int]:
    """This process's id and I/O counters (``/proc/self/io``: ``rchar``, ``read_bytes``...)."""
    with open("/proc/self/io") as f:
        counters = {k: int(v) for k, v in (line.split(":") for line in f)}
    return {"pid": os.getpid(), **counters}
