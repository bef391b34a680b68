"""One dask graph per computation: a task per block of positions that reads its own spectra and evaluates.

A block task of an untouched :func:`lazyusid.open_usid` array in file order
reads its rows itself, where it runs (:class:`FlatReader`: path, dataset,
rows; memory-mapped or decoded from raw chunks without HDF5's file lock, or
``read_direct``). Any other input (``data * 2``, ``.isel(...)``, an
in-memory array) keeps its own dask graph, re-chunked to the blocks, so each
block task depends on just the input chunks it needs. No task submits to
another scheduler. Nothing runs until the graph is computed (lazily) or
driven by :mod:`lazyusid.run.driver` (stored).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.callbacks import Callback

from .core.function import SpectralFunction
from .core.plan import BlockPlan
from .io.rows import RowReader
from .run.progress import progress_bar
from .run.schedulers import Scheduler

#: prefix of the keys of block tasks (the progress bar counts them)
BLOCK_PREFIX = "lazyusid-block-"


@dataclass(frozen=True)
class FlatReader:
    """A main dataset as flat positions ``(rows × n_extra, *core_shape)``: reads runs of positions.

    The C-order flattening of the loop dimensions of an array in file order
    (positions slowest first, then spectroscopic dimensions slowest first,
    the function's core dimensions last) is the order of the file's rows; a
    block of positions is a run of whole or partial rows. Picklable.
    """

    rows: RowReader
    core_shape: tuple[int, ...]
    n_extra: int

    @property
    def n_positions(self) -> int:
        return self.rows.n_rows * self.n_extra

    def for_positions(self, a: int, b: int) -> FlatReader:
        """This reader, carrying only what positions ``a:b`` need (a block task's share)."""
        return replace(self, rows=self.rows.for_rows(a // self.n_extra, -(-b // self.n_extra)))

    def read(self, a: int, b: int) -> np.ndarray:
        """Positions ``a:b`` as ``(b - a, *core_shape)``; only the rows holding them are read."""
        r0, r1 = a // self.n_extra, -(-b // self.n_extra)
        block = self.rows(r0, r1).reshape((-1, *self.core_shape))
        offset = a - r0 * self.n_extra
        if offset == 0 and block.shape[0] == b - a:
            return block
        return block[offset : offset + b - a].copy()  # do not hold the rest of the rows


class BlockJob:
    """What one block task does besides evaluating: positions ``a:b``, where they come from, what to return.

    A plain object, so that dask does not traverse it when the graph is built.
    """

    __slots__ = ("a", "b", "pick", "reader", "where", "write")

    def __init__(self, a: int, b: int, where: dict, *, reader=None, write=None, pick=None):
        self.a, self.b, self.where, self.reader, self.write, self.pick = a, b, where, reader, write, pick

    def __reduce__(self):
        return (_job, (self.a, self.b, self.where, self.reader, self.write, self.pick))


def _job(a, b, where, reader, write, pick) -> BlockJob:
    return BlockJob(a, b, where, reader=reader, write=write, pick=pick)


def run_block(function: SpectralFunction, job: BlockJob, block=None):
    """Read (or take) the job's positions, evaluate the function; a block task's body, on any worker.

    Returns the tuple of outputs (``job.pick``: only that one). With
    ``job.write`` (a sink's picklable region writer) the outputs are stored
    here and only ``(a, b)`` is returned.
    """
    a, b = job.a, job.b
    if job.reader is not None:
        block = job.reader.read(a, b)
    outs = function.evaluate(block, first=a, **job.where)
    if job.write is None:
        return outs if job.pick is None else outs[job.pick]
    job.write(a, b, outs)
    return (a, b)


@dataclass(frozen=True, eq=False)
class SpectralMap:
    """A planned mapping of a function over a dataset; nothing computed yet.

    Attributes
    ----------
    data : xarray.DataArray
        The input, transposed to loop dimensions first, core dimensions last.
    loop_dims, core_dims : tuple of str
    function : SpectralFunction
    plan : BlockPlan
    scheduler : Scheduler
        Where the blocks run (also :attr:`BlockPlan.scheduler`, in words).
    reader : FlatReader or None
        Direct reads of the source's rows, when the input is an untouched
        :func:`~lazyusid.open_usid` array in file order.
    """

    data: xr.DataArray
    loop_dims: tuple[Hashable, ...]
    core_dims: tuple[Hashable, ...]
    function: SpectralFunction
    plan: BlockPlan
    scheduler: Scheduler
    reader: FlatReader | None = None
    progress: bool = True

    def __repr__(self) -> str:
        return f"<SpectralMap {self.function.name} on {self.scheduler}: {self.plan!r}>"

    @property
    def loop_shape(self) -> tuple[int, ...]:
        return tuple(self.data.sizes[d] for d in self.loop_dims)

    @property
    def core_shape(self) -> tuple[int, ...]:
        return tuple(self.data.sizes[d] for d in self.core_dims)

    @cached_property
    def token(self) -> str:
        """Names this computation's tasks (not its stored identity: see :mod:`lazyusid.core.identity`)."""
        source = self.reader if self.reader is not None else _input_name(self.data)
        try:
            fn = dask.base.tokenize(
                self.function.func, self.function.params, [o.to_dict() for o in self.function.outputs]
            )
        except Exception:  # pragma: no cover - exotic parameters: a fresh name
            fn = id(self)
        return dask.base.tokenize(source, fn, self.function.vectorized, self.loop_shape, self.core_shape)

    def blocks(
        self, ranges: Sequence[tuple[int, int]], write: Callable | None = None, pick: int | None = None
    ) -> list:
        """One :class:`dask.delayed.Delayed` per ``(a, b)`` range of positions, in order.

        Each returns the tuple of output arrays of its block, or with
        ``write`` (see :func:`run_block`) stores them and returns ``(a, b)``.
        """
        where = {"loop_shape": self.loop_shape, "loop_dims": self.loop_dims}
        function = dask.delayed(self.function, pure=True, name=f"lazyusid-function-{self.token}")
        run = dask.delayed(run_block, pure=True)
        suffix = "" if write is None and pick is None else "-" + dask.base.tokenize(write, pick)
        keys = [f"{BLOCK_PREFIX}{self.token}{suffix}-{a:012d}-{b:012d}" for a, b in ranges]
        if self.reader is not None:  # the task reads its own rows
            return [
                run(
                    function,
                    BlockJob(a, b, where, reader=self.reader.for_positions(a, b), write=write, pick=pick),
                    dask_key_name=key,
                )
                for key, (a, b) in zip(keys, ranges)
            ]
        return [
            run(function, BlockJob(a, b, where, write=write, pick=pick), block, dask_key_name=key)
            for key, block, (a, b) in zip(keys, self._input_blocks(ranges), ranges)
        ]

    def _input_blocks(self, ranges) -> list:
        """The input's own graph, cut into exactly the given blocks of positions (one chunk each)."""
        n = self.plan.n_positions
        edges = sorted({0, n, *(x for r in ranges for x in r)})
        chunks = (tuple(np.diff(edges).tolist()),) + tuple((s,) for s in self.core_shape)
        arr = self.data.data
        if isinstance(arr, da.Array):
            flat = arr.reshape((n, *self.core_shape), merge_chunks=True).rechunk(chunks)
        else:
            values = np.asarray(arr).reshape((n, *self.core_shape)).view()
            # a function that mutates its argument must not change the caller's array
            values.flags.writeable = False
            # named by the token, which holds the values' digest already (no second hash of them)
            name = "lazyusid-input-" + dask.base.tokenize(self.token, chunks)
            flat = da.from_array(values, chunks=chunks, name=name)
        pieces = dict(zip(edges[:-1], flat.to_delayed(optimize_graph=True).ravel()))
        return [pieces[a] for a, _ in ranges]

    def result(self) -> xr.DataArray | xr.Dataset:
        """The lazy xarray result: a DataArray for one output, a Dataset for several.

        Computing it directly (``.compute()``, ``.values``, ``.plot()``) runs
        on :attr:`scheduler`; inside other expressions it runs wherever that
        expression is computed.
        """
        ranges = self.plan.blocks()
        single = len(self.function.outputs) == 1
        tasks = self.blocks(ranges, pick=0 if single else None)
        run = _LazyRun(self.scheduler, len(tasks), self.function.name, self.progress)
        arrays = {}
        for i, out in enumerate(self.function.outputs):
            pieces = [
                da.from_delayed(task if single else task[i], shape=(b - a, *out.shape), dtype=out.dtype)
                for task, (a, b) in zip(tasks, ranges)
            ]
            flat = da.concatenate(pieces, axis=0) if len(pieces) > 1 else pieces[0]
            nd = flat.reshape(self.loop_shape + out.shape)
            nd.__dask_scheduler__ = run  # dask.compute asks the collection where it runs
            attrs = {"usid_function": self.function.name, "units": out.units}
            attrs.update(
                {k: self.data.attrs[k] for k in ("usid_file", "usid_dataset") if k in self.data.attrs}
            )
            arrays[out.name] = xr.Variable(self.loop_dims + out.dims, nd, attrs=attrs)
        coords = {k: v for k, v in self.data.coords.items() if set(v.dims) <= set(self.loop_dims)}
        if self.function.single:
            (name,) = arrays
            return xr.DataArray(arrays[name], coords=coords, name=name)
        return xr.Dataset(arrays, coords=coords, attrs={"usid_function": self.function.name})


class _LazyRun:
    """The scheduler ``get`` of a lazy result: the computation's scheduler, with a progress bar."""

    def __init__(self, scheduler: Scheduler, n_blocks: int, name: str, progress: bool):
        self.scheduler, self.n_blocks, self.name, self.progress = scheduler, n_blocks, name, progress

    def __call__(self, dsk, keys, **kwargs):
        if not self.progress or self.scheduler.distributed:
            return self.scheduler.get(dsk, keys, **kwargs)
        with progress_bar(self.n_blocks, self.name) as bar:
            with BlockCallback(lambda key, result: bar.update()):
                return self.scheduler.get(dsk, keys, **kwargs)


class BlockCallback(Callback):
    """Calls ``on_block(key, result)`` in the scheduling thread as each block task of a local scheduler ends."""

    def __init__(self, on_block: Callable):
        super().__init__()
        self.on_block = on_block

    def _posttask(self, key, result, dsk, state, worker_id):
        name = key[0] if isinstance(key, tuple) else key
        # a lazy result's block fused with its array's layer: "from-value-lazyusid-block-..."
        if isinstance(name, str) and name.startswith((BLOCK_PREFIX, "from-value-" + BLOCK_PREFIX)):
            self.on_block(key, result)


def _input_name(data: xr.DataArray):
    arr = data.data
    return arr.name if isinstance(arr, da.Array) else dask.base.tokenize(np.asarray(arr))


def flat_reader(
    data: xr.DataArray, n_core_dims: int, *, file_order: tuple, rows: RowReader
) -> FlatReader | None:
    """A :class:`FlatReader` of ``rows`` when ``data`` (an untouched source) has its dimensions in file order."""
    if tuple(data.dims) != tuple(file_order):
        return None
    core_shape = tuple(data.shape[len(data.shape) - n_core_dims :]) if n_core_dims else ()
    core = math.prod(core_shape)
    if core < 1 or rows.width % core:
        return None
    return FlatReader(rows, core_shape, rows.width // core)
