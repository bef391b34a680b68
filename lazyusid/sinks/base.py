"""What every sink shares: the shape of a stored result, and the streaming loop.

A stored result is organised by *rows*: one row per position of the source
(pyUSID's ``completed_positions`` has one flag per row). Loop dimensions that
are not position dimensions (``DC_Offset`` when a function works on one
frequency spectrum) are *extra* dimensions inside a row. Blocks are whole
rows, so a row's checkpoint flag covers all of its values.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import xarray as xr

from .. import progress as _progress
from ..function import Output

#: name of the per-row checkpoint flags, as pyUSID names them
MARKERS = "completed_positions"


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
    """

    pos_dims: tuple[Hashable, ...]
    pos_shape: tuple[int, ...]
    extra_dims: tuple[Hashable, ...]
    extra_shape: tuple[int, ...]
    outputs: tuple[Output, ...]
    coords: dict
    rows_per_block: int

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


def stream(
    smap,
    ranges: Sequence[tuple[int, int]],
    n_extra: int,
    write: Callable[[int, int, tuple], None],
    *,
    progress_key: str | None,
) -> None:
    """Compute blocks of rows and hand each finished block to ``write``, in this thread.

    At most ``smap.plan.blocks_in_flight`` blocks are read or computing at
    once; ``write`` (the sink's single writer) runs in the calling thread
    only. If a block fails, blocks already finished are still written, the
    rest are cancelled, and the first error is raised.
    """
    if not ranges:
        return
    with smap.reading_blocks() as reader:  # exactly the rows of a block, not the source's larger chunks
        _stream(smap, ranges, n_extra, write, reader, progress_key)


def _stream(smap, ranges, n_extra: int, write, reader, progress_key) -> None:
    function, executor = smap.function, smap.executor
    io_lock = threading.Lock()  # one HDF5 access at a time in this process: reads here, writes in `write`
    failed = threading.Event()  # once a block fails, queued blocks are skipped
    where = {"loop_shape": smap.loop_shape, "loop_dims": smap.loop_dims}
    # lazyusid's own worker processes (this machine) read their blocks themselves when they can
    remote_read = reader.anywhere if executor.kind == "processes" else None

    def job(r0: int, r1: int):
        if failed.is_set():
            return None
        a, b = r0 * n_extra, r1 * n_extra
        try:
            if remote_read is not None:
                outs = executor.run(_read_and_evaluate, function, remote_read, a, b, **where)
            else:
                with io_lock:
                    block = reader.read(a, b)
                block = executor.put(block)  # on a worker already: this process keeps no copy
                outs = executor.run(function.evaluate, block, first=a, **where)
        except BaseException as exc:
            failed.set()
            with contextlib.suppress(AttributeError, TypeError):  # which block failed, for _failed_at
                exc.__lazyusid_block__ = a  # type: ignore[attr-defined]
            raise
        return r0, r1, outs

    total = len(ranges)
    if progress_key is not None:
        _progress.tick(progress_key, total, function.name, done=0)
    todo = iter(ranges)
    in_flight = max(1, smap.plan.blocks_in_flight)
    error: BaseException | None = None
    with ThreadPoolExecutor(in_flight, thread_name_prefix="lazyusid-block") as pool:
        # twice as many jobs as threads: a thread that finishes a block starts the next one at once
        # (a queued job has read nothing yet, so it holds no memory)
        pending = {pool.submit(job, *r) for r in _take(todo, 2 * in_flight)}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    done = fut.result()
                    if done is None:  # skipped after a failure
                        continue
                    r0, r1, outs = done
                except BaseException as exc:  # report the failure at the first position, whatever the order
                    error = exc if error is None else min(error, exc, key=_failed_at)
                    continue
                with io_lock:
                    write(r0, r1, outs)
                if progress_key is not None:
                    _progress.tick(progress_key, total, function.name)
            if error is None:
                pending |= {pool.submit(job, *r) for r in _take(todo, len(finished))}
    if error is not None:
        if progress_key is not None:
            _progress.close(progress_key)
        raise error


def _read_and_evaluate(function, read, a: int, b: int, **where) -> tuple:
    """Read positions ``a:b`` and evaluate the function on them (in a worker process)."""
    return function.evaluate(read(a, b), first=a, **where)


def _failed_at(exc: BaseException) -> int:
    """The first position of the failed block (the function's own errors name the exact position)."""
    position = getattr(exc, "position", None)
    return position if isinstance(position, int) else getattr(exc, "__lazyusid_block__", 0)


def _take(it: Iterator, n: int) -> list:
    out: list = []
    if n <= 0:
        return out
    for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out
