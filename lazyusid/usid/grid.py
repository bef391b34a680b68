"""How the index rows of a USID ancillary dataset tile a grid: pure NumPy, no file access.

:mod:`lazyusid.usid.layout` reads the ancillary datasets and uses these to
find the order of the dimensions (slowest first) and whether, and with which
sizes, their indices tile a full C-order grid.
"""

from __future__ import annotations

import math

import numpy as np


def n_distinct(row: np.ndarray) -> int:
    """Number of distinct values in a row of indices (by counting when they are small and non-negative)."""
    if row.size and 0 <= int(row.min()) and int(row.max()) < 4 * row.size:
        return int(np.count_nonzero(np.bincount(row.astype(np.intp, copy=False))))
    return int(np.unique(row).size)


def slowest_first(inds: np.ndarray) -> tuple[int, ...]:
    """Order of the rows of ``inds`` from slowest to fastest changing (as pyUSID sorts)."""
    changes = np.count_nonzero(inds[:, 1:] != inds[:, :-1], axis=1)
    return tuple(int(i) for i in np.argsort(changes, kind="stable"))


def grid_sizes(inds: np.ndarray, order) -> tuple[int, ...] | None:
    """Sizes (in row order) of the full C-order grid, slowest first in ``order``, that ``inds`` tile; or None.

    Without building the grid: along each dimension the indices must count
    0, 1, ... and repeat over every other dimension.
    """
    if inds.shape[1] == 0 or int(inds.min()) != 0:
        return None
    sizes = tuple(int(m) + 1 for m in inds.max(axis=1))
    sorted_sizes = [sizes[i] for i in order]
    if math.prod(sorted_sizes) != inds.shape[1]:
        return None
    for j, i in enumerate(order):
        steps = np.arange(sorted_sizes[j]).reshape([-1 if k == j else 1 for k in range(len(order))])
        if not (inds[i].reshape(sorted_sizes) == steps).all():
            return None
    return sizes
