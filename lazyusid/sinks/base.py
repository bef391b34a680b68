"""What every sink shares: the :class:`Sink` interface and the shape of a stored result.

A stored result is organised by *rows*: one row per position of the source
(pyUSID's ``completed_positions`` has one flag per row). Loop dimensions that
are not position dimensions (``DC_Offset`` when a function works on one
frequency spectrum) are *extra* dimensions inside a row. Blocks are whole
rows, so a row's checkpoint flag covers all of its values.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..core.function import FAILED as FAILED  # the sinks store it beside MARKERS
from ..core.outputs import Output

#: name of the per-row checkpoint flags, as pyUSID names them
MARKERS = "completed_positions"
#: attribute holding the first errors (JSON) of a result computed with ``on_error="skip"``
ERRORS = "lazyusid_errors"


@dataclass(frozen=True, eq=False)
class ResultShape:
    """Dimensions, outputs and coordinates of a result, as stored.

    Attributes
    ----------
    pos_dims, pos_shape : tuple
        Position (row) dimensions, slowest first.
    extra_dims, extra_shape : tuple
        Loop dimensions inside a row.
    outputs : tuple of Output
    coords : dict of str to xarray.Variable
        Coordinates of the loop dimensions.
    rows_per_block : int
    status : bool
        Whether the result records failed positions (``on_error="skip"``).
    """

    pos_dims: tuple[Hashable, ...]
    pos_shape: tuple[int, ...]
    extra_dims: tuple[Hashable, ...]
    extra_shape: tuple[int, ...]
    outputs: tuple[Output, ...]
    coords: dict
    rows_per_block: int
    status: bool = False

    @property
    def n_rows(self) -> int:
        return math.prod(self.pos_shape)

    @property
    def n_extra(self) -> int:
        return math.prod(self.extra_shape)

    @property
    def loop_dims(self) -> tuple[Hashable, ...]:
        return self.pos_dims + self.extra_dims

    def columns(self, out: Output) -> int:
        """Values per row of one output (the width of its USID main dataset)."""
        return self.n_extra * math.prod(out.shape)

    def variable(self, out: Output, flat) -> xr.Variable:
        """An output given as ``(rows, columns)`` (numpy or dask) as an N-D variable."""
        shape = self.pos_shape + self.extra_shape + out.shape
        return xr.Variable(self.loop_dims + out.dims, flat.reshape(shape))


@dataclass(frozen=True)
class Found:
    """An existing stored result with the same token."""

    name: str
    rows_done: int
    complete: bool


class Sink(abc.ABC):
    """Where a computation's results are stored, with checkpoint flags per row.

    The stored driver calls, in the client: :meth:`find`; inside
    :meth:`writing`, :meth:`prepare`, :meth:`todo`, then :meth:`finished`
    for every block as it comes (block tasks store their outputs themselves
    when :meth:`region_writer` gives a writer), :meth:`commit` at the end or
    on interruption; :meth:`result` opens what is stored.
    """

    kind: str
    name: str
    #: where the data and each per-position input come from (:func:`~lazyusid.sinks.lineage.input_records`)
    inputs: list | None = None
    #: with a region of interest: the rows whose flags a finished block may set (None: all its rows)
    flag_only: np.ndarray | None = None

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """The target, in words (a path)."""

    def check(self, token: str, identity: dict, params: dict) -> None:
        """Refuse, before anything is written, what this target cannot store (names, dtypes, permissions).

        Called before :meth:`writing`: a refusal changes no file.
        """
        check_result_names(self.shape, self.where)

    @abc.abstractmethod
    def find(self, token: str, name: str | None = None) -> list[Found]:
        """Stored results of the computation ``token`` (oldest first); reads only."""

    @abc.abstractmethod
    def writing(self) -> AbstractContextManager:
        """Hold the target for writing (locked against other writers) meanwhile."""

    @abc.abstractmethod
    def prepare(self, token: str, identity: dict, params: dict, *, resume: Found | None) -> np.ndarray:
        """Open the result to resume (or create it); return the per-row flags."""

    @abc.abstractmethod
    def todo(self, done: np.ndarray) -> list[tuple[int, int]]:
        """The blocks of rows still to compute."""

    def region_writer(self, n_extra: int) -> Callable | None:
        """A picklable ``write(a, b, outs)`` for block tasks, or None when the client writes (:meth:`finished`)."""
        return None

    @abc.abstractmethod
    def finished(self, r0: int, r1: int, outs) -> None:
        """Rows ``r0:r1`` are computed (``outs``: their outputs, or None when their task stored them)."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Checkpoint what finished so far."""

    @abc.abstractmethod
    def saved(self) -> int:
        """Rows stored and flagged."""

    @abc.abstractmethod
    def result(self, name: str) -> dict[str, xr.Variable]:
        """The stored outputs of result ``name``, lazily (and :data:`FAILED` when recorded)."""

    def errors(self, name: str) -> list[dict]:
        """The first errors of result ``name`` recorded with ``on_error="skip"`` (position, index, type, message)."""
        return []


def merge_errors(kept: list[dict], new: list[dict], limit: int) -> list[dict]:
    """The first ``limit`` errors by position, one per position.

    Examples
    --------
    >>> merge_errors([{"position": 5}], [{"position": 2}, {"position": 5}], 2)
    [{'position': 2}, {'position': 5}]
    """
    by_position = {e["position"]: e for e in [*kept, *new]}
    return [by_position[k] for k in sorted(by_position)[:limit]]


def check_result_names(shape: ResultShape, where: str) -> None:
    """Raise :class:`ValueError` when an output's name or dimensions clash with the result's other names.

    An output named like a coordinate or loop dimension (``"Y"``), or with
    a dimension of that name, cannot be a variable of the result beside
    them; found only after computing, it would cost the whole run.
    """
    loop = {str(d) for d in shape.loop_dims} | {str(k) for k in shape.coords}
    for out in shape.outputs:
        if out.name in loop:
            raise ValueError(
                f"cannot store output {out.name!r} in {where}: the result has a coordinate or dimension of that "
                "name. Name the output otherwise (the outputs= names, or the keys of the dict the function "
                "returns); nothing was written."
            )
        clash = [d for d in out.dims if str(d) in loop]
        if clash:
            raise ValueError(
                f"cannot store output {out.name!r} in {where}: its dimension {clash[0]!r} is also a loop "
                f"dimension or coordinate of the result. Declare other dims, e.g. outputs={{{out.name!r}: "
                f"{{'dims': [...]}}}}; nothing was written."
            )


def todo_ranges(done: np.ndarray, rows_per_block: int) -> list[tuple[int, int]]:
    """Runs of unmarked rows, cut into blocks of at most ``rows_per_block`` rows.

    Examples
    --------
    >>> todo_ranges(np.array([1, 0, 0, 0, 1, 0], "u1"), 2)
    [(1, 3), (3, 4), (5, 6)]
    """
    todo = np.concatenate(([False], np.asarray(done) == 0, [False]))
    edges = np.flatnonzero(todo[1:] != todo[:-1]).reshape(-1, 2)  # [start, stop) of each run
    out = []
    for start, stop in edges.tolist():
        out.extend((a, min(a + rows_per_block, stop)) for a in range(start, stop, rows_per_block))
    return out


def merged_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Row ranges with touching ones joined: one write for the many blocks of a checkpoint.

    Examples
    --------
    >>> merged_ranges([(4, 6), (0, 2), (2, 4), (8, 9)])
    [(0, 6), (8, 9)]
    """
    out: list[tuple[int, int]] = []
    for r0, r1 in sorted(ranges):
        if out and r0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(r1, out[-1][1]))
        else:
            out.append((r0, r1))
    return out


def flagged_prefix(done: np.ndarray, start: int) -> int:
    """Length of the run of flagged rows from the start (scanning on from ``start``, a known prefix)."""
    rest = done[start:]
    first = int(np.argmin(rest)) if rest.size else 0  # the first 0, without building an index array
    return int(done.size) if rest.size == 0 or rest[first] else start + first


def boxes(start: int, stop: int, shape: Sequence[int]) -> Iterator[tuple[tuple[slice, ...], int, int]]:
    """Cut the flat (C-order) range ``start:stop`` over ``shape`` into rectangular boxes.

    Yields ``(index, a, b)``: the N-D slices of one box and the flat range it covers.

    Examples
    --------
    >>> [(tuple((s.start, s.stop) for s in i), a, b) for i, a, b in boxes(2, 9, (3, 4))]
    [(((0, 1), (2, 4)), 2, 4), (((1, 2), (0, 4)), 4, 8), (((2, 3), (0, 1)), 8, 9)]
    """
    shape = tuple(shape)
    if start >= stop:
        return
    if len(shape) <= 1:
        yield (slice(start, stop),), start, stop
        return
    inner = math.prod(shape[1:])
    full = tuple(slice(0, n) for n in shape[1:])
    row, offset = divmod(start, inner)
    if offset:  # a partial first row
        end = min(stop, (row + 1) * inner)
        for sub, a, b in boxes(offset, end - row * inner, shape[1:]):
            yield (slice(row, row + 1), *sub), a + row * inner, b + row * inner
        row, start = row + 1, (row + 1) * inner
        if start >= stop:
            return
    last = stop // inner
    if last > row:
        yield (slice(row, last), *full), row * inner, last * inner
    if stop > last * inner:  # a partial last row
        for sub, a, b in boxes(0, stop - last * inner, shape[1:]):
            yield (slice(last, last + 1), *sub), a + last * inner, b + last * inner
