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

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.callbacks import Callback

from .core.function import FAILED, SpectralFunction
from .core.plan import BlockPlan
from .inputs import flat_inputs
from .io.flat import FlatReader
from .run.progress import progress_bar
from .run.schedulers import Scheduler

#: prefix of the keys of block tasks (the progress bar counts them)
BLOCK_PREFIX = "lazyusid-block-"


class BlockJob:
    """What one block task does besides evaluating: positions ``a:b``, where they come from, what to return.

    A plain object, so that dask does not traverse it when the graph is built.
    """

    __slots__ = ("a", "b", "inputs", "mask", "pick", "reader", "where", "write")

    def __init__(
        self, a: int, b: int, where: dict, *, reader=None, write=None, pick=None, mask=None, inputs=None
    ):
        self.a, self.b, self.where, self.reader, self.write, self.pick = a, b, where, reader, write, pick
        self.mask, self.inputs = mask, inputs

    def __reduce__(self):
        return (
            _job,
            (self.a, self.b, self.where, self.reader, self.write, self.pick, self.mask, self.inputs),
        )


def _job(a, b, where, reader, write, pick, mask=None, inputs=None) -> BlockJob:
    return BlockJob(a, b, where, reader=reader, write=write, pick=pick, mask=mask, inputs=inputs)


def run_block(function: SpectralFunction, job: BlockJob, block=None, extras=None):
    """Read (or take) the job's positions, evaluate the function; a block task's body, on any worker.

    ``extras`` are the block's slices of the per-position inputs. Returns
    the tuple of outputs (``job.pick``: only that one). With ``job.write`` (a
    sink's picklable region writer) the outputs are stored here and only
    ``(a, b)`` is returned (``(a, b, errors)`` with ``on_error="skip"``).
    """
    a, b = job.a, job.b
    if job.mask is not None and not job.mask.any():  # outside the region of interest: nothing to read
        outs = function.filled(b - a)
    else:
        if job.reader is not None:
            block = job.reader.read(a, b)
        if job.inputs:  # per-position inputs this task reads itself
            extras = dict(extras or {})
            for name, reader in job.inputs.items():
                if isinstance(reader, dict):
                    extras[name] = {k: r.read(a, b) for k, r in reader.items()}
                else:
                    extras[name] = reader.read(a, b)
        outs = function.evaluate(block, first=a, extras=extras, mask=job.mask, **job.where)
    if job.write is None:
        return outs if job.pick is None else outs[job.pick]
    job.write(a, b, outs)
    return (a, b) if function.on_error == "raise" else (a, b, outs[-1])


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
    progress : bool
    inputs : dict
        Per-position inputs by parameter name: DataArrays or Datasets with
        the loop dimensions first (:func:`lazyusid.inputs.split_params`).
    readers : dict
        Direct row readers (:class:`FlatReader`, or a dict of them for a
        Dataset) of the per-position inputs that block tasks read
        themselves; the others are read through their dask graphs.
    roi : numpy.ndarray or None
        Flat boolean mask of the positions to evaluate (None: all).
    """

    data: xr.DataArray
    loop_dims: tuple[Hashable, ...]
    core_dims: tuple[Hashable, ...]
    function: SpectralFunction
    plan: BlockPlan
    scheduler: Scheduler
    reader: FlatReader | None = None
    progress: bool = True
    inputs: dict = field(default_factory=dict)
    readers: dict = field(default_factory=dict)
    roi: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"<SpectralMap {self.function.name} on {self.scheduler}: {self.plan!r}>"

    @property
    def loop_shape(self) -> tuple[int, ...]:
        return tuple(self.data.sizes[d] for d in self.loop_dims)

    @property
    def core_shape(self) -> tuple[int, ...]:
        return tuple(self.data.sizes[d] for d in self.core_dims)

    @cached_property
    def flat_inputs(self) -> dict:
        """The per-position inputs as flat ``(positions, ...)`` dask arrays (dicts of them for Datasets)."""
        return flat_inputs({k: v for k, v in self.inputs.items() if k not in self.readers}, self.loop_dims)

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
        extras = {k: _names(v) for k, v in self.flat_inputs.items()}
        return dask.base.tokenize(
            source,
            fn,
            self.function.vectorized,
            self.function.on_error,
            self.loop_shape,
            self.core_shape,
            extras,
            self.readers,
            self.roi,
        )

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
        edges = sorted({0, self.plan.n_positions, *(x for r in ranges for x in r)})
        extras = [{} for _ in ranges]
        for name, value in self.flat_inputs.items():
            if isinstance(value, dict):
                parts = {k: _cut(v, edges, ranges) for k, v in value.items()}
                for i, extra in enumerate(extras):
                    extra[name] = {k: p[i] for k, p in parts.items()}
            else:
                for extra, piece in zip(extras, _cut(value, edges, ranges)):
                    extra[name] = piece
        jobs = [
            BlockJob(
                a,
                b,
                where,
                reader=None if self.reader is None else self.reader.for_positions(a, b),
                write=write,
                pick=pick,
                mask=None if self.roi is None or self.roi[a:b].all() else self.roi[a:b].copy(),
                inputs={k: _share(r, a, b) for k, r in self.readers.items()} or None,
            )
            for a, b in ranges
        ]
        if self.reader is not None:  # the task reads its own rows
            blocks = [None] * len(ranges)
        else:
            blocks = self._input_blocks(edges, ranges)
        return [
            run(function, job, block, extra or None, dask_key_name=key)
            for key, job, block, extra in zip(keys, jobs, blocks, extras)
        ]

    def _input_blocks(self, edges, ranges) -> list:
        """The input's own graph, cut into exactly the given blocks of positions (one chunk each)."""
        n = self.plan.n_positions
        chunks = (tuple(np.diff(edges).tolist()),) + tuple((s,) for s in self.core_shape)
        arr = self.data.data
        if isinstance(arr, da.Array):
            flat = arr.reshape((n, *self.core_shape), merge_chunks=True)
        else:
            values = np.asarray(arr).reshape((n, *self.core_shape)).view()
            # a function that mutates its argument must not change the caller's array
            values.flags.writeable = False
            # named by the token, which holds the values' digest already (no second hash of them)
            name = "lazyusid-input-" + dask.base.tokenize(self.token, chunks)
            flat = da.from_array(values, chunks=chunks, name=name)
        return _cut(flat, edges, ranges)

    def result(self) -> xr.DataArray | xr.Dataset:
        """The lazy xarray result: a DataArray for one output, a Dataset for several.

        Computing it directly (``.compute()``, ``.values``, ``.plot()``) runs
        on :attr:`scheduler`; inside other expressions it runs wherever that
        expression is computed.
        """
        ranges = self.plan.blocks()
        skip = self.function.on_error == "skip"
        single = len(self.function.outputs) == 1 and not skip
        tasks = self.blocks(ranges, pick=0 if single else None)
        run = _LazyRun(self.scheduler, len(tasks), self.function.name, self.progress)

        def lazy(i: int, shape: tuple, dtype) -> da.Array:
            pieces = [
                da.from_delayed(task if single else task[i], shape=(b - a, *shape), dtype=dtype)
                for task, (a, b) in zip(tasks, ranges)
            ]
            flat = da.concatenate(pieces, axis=0) if len(pieces) > 1 else pieces[0]
            nd = flat.reshape(self.loop_shape + shape)
            nd.__dask_scheduler__ = run  # dask.compute asks the collection where it runs
            return nd

        arrays = {}
        for i, out in enumerate(self.function.outputs):
            nd = lazy(i, out.shape, out.dtype)
            attrs = {"usid_function": self.function.name, "units": out.units}
            attrs.update(
                {k: self.data.attrs[k] for k in ("usid_file", "usid_dataset") if k in self.data.attrs}
            )
            arrays[out.name] = xr.Variable(self.loop_dims + out.dims, nd, attrs=attrs)
        coords = {k: v for k, v in self.data.coords.items() if set(v.dims) <= set(self.loop_dims)}
        if self.function.single:
            (name,) = arrays
            out = xr.DataArray(arrays[name], coords=coords, name=name)
        else:
            out = xr.Dataset(arrays, coords=coords, attrs={"usid_function": self.function.name})
        if skip:  # computed with the outputs by .compute(); on its own, it runs the function again
            failed = lazy(len(self.function.outputs), (), np.uint8).astype(bool)
            failed.__dask_scheduler__ = run
            # assigned, not passed to the constructor: that deep-copies coordinates, losing the scheduler
            out = out.assign_coords({FAILED: (self.loop_dims, failed, {"long_name": "function failed"})})
        return out


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


def _cut(flat: da.Array, edges, ranges) -> list:
    """A flat ``(positions, ...)`` dask array as one delayed chunk per range of positions."""
    chunks = (tuple(np.diff(edges).tolist()),) + tuple((s,) for s in flat.shape[1:])
    pieces = dict(zip(edges[:-1], flat.rechunk(chunks).to_delayed(optimize_graph=True).ravel()))
    return [pieces[a] for a, _ in ranges]


def _share(reader, a: int, b: int):
    """What a block task needs of an input's row reader(s) for positions ``a:b``."""
    if isinstance(reader, dict):
        return {k: r.for_positions(a, b) for k, r in reader.items()}
    return reader.for_positions(a, b)


def _names(value):
    return {k: v.name for k, v in value.items()} if isinstance(value, dict) else value.name


def _input_name(data: xr.DataArray):
    arr = data.data
    return arr.name if isinstance(arr, da.Array) else dask.base.tokenize(np.asarray(arr))
