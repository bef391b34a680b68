"""The :class:`Dimension` value and the ancillary matrices built from dimensions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: dtypes pyUSID uses for the ancillary datasets
INDICES_DTYPE = np.uint32
VALUES_DTYPE = np.float32


@dataclass(frozen=True, eq=False)
class Dimension:
    """One named dimension of a USID dataset.

    Parameters
    ----------
    name : str
        Label of the dimension, e.g. ``"X"`` or ``"Frequency"``.
    units : str
        Units of the values, e.g. ``"m"`` or ``"Hz"``.
    values : array-like or int
        The value at each step of the dimension. An integer ``n`` means
        ``np.arange(n)``.

    Examples
    --------
    >>> Dimension("Frequency", "Hz", np.linspace(300e3, 350e3, 5))
    Dimension('Frequency', 'Hz', 5 values from 300000 to 350000)
    """

    name: str
    units: str
    values: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Dimension name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.units, str):
            raise TypeError(f"units of dimension {self.name!r} must be a str, got {self.units!r}")
        values = self.values
        if isinstance(values, (int, np.integer)):
            values = np.arange(values)
        values = np.asarray(values)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(
                f"values of dimension {self.name!r} must be a non-empty 1-D array, got shape {values.shape}"
            )
        values = values.copy()
        values.flags.writeable = False
        object.__setattr__(self, "values", values)

    @property
    def size(self) -> int:
        """Number of steps of the dimension."""
        return int(self.values.size)

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dimension):
            return NotImplemented
        return (
            self.name == other.name
            and self.units == other.units
            and np.array_equal(self.values, other.values)
        )

    def __hash__(self) -> int:
        return hash((self.name, self.units, self.values.tobytes()))

    def __repr__(self) -> str:
        v = self.values
        if v.size == 1:
            span = f"1 value: {v[0]:g}"
        else:
            span = f"{v.size} values from {v[0]:g} to {v[-1]:g}"
        return f"Dimension({self.name!r}, {self.units!r}, {span})"


def parse_dimensions(dims: Dimension | Sequence[Dimension], what: str) -> tuple[Dimension, ...]:
    """Normalise one dimension or a sequence of them to a tuple, checking names."""
    if isinstance(dims, Dimension):
        dims = (dims,)
    dims = tuple(dims)
    if not dims:
        raise ValueError(f"{what} needs at least one Dimension")
    for d in dims:
        if not isinstance(d, Dimension):
            raise TypeError(f"{what} must hold lazyusid.Dimension objects, got {d!r}")
    names = [d.name for d in dims]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} has repeated dimension names: {names}")
    return dims


def build_ancillary(dims: Sequence[Dimension]) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values matrices for dimensions given slowest first.

    Returns arrays of shape ``(n_dims, prod(sizes))``: row ``i`` describes
    dimension ``i``, the last dimension varies fastest. Transpose them for
    position ancillaries.
    """
    sizes = [d.size for d in dims]
    grids = np.indices(sizes).reshape(len(sizes), -1)
    indices = grids.astype(INDICES_DTYPE)
    values = np.empty(indices.shape, dtype=VALUES_DTYPE)
    for i, d in enumerate(dims):
        values[i] = d.values[grids[i]]
    return indices, values
