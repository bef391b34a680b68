"""The engine: map a function over every spectrum of a (lazy) USID dataset.

``map_spectra`` turns an xarray object into a flat ``(positions, *core)``
dask array, plans blocks of positions under a memory budget, and builds one
task per block that evaluates the function (in worker processes when it is
a Python per-spectrum function). Nothing runs until the result is computed.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import dask
import dask.array as da
import numpy as np
import xarray as xr

from . import progress as _progress
from .function import Output, OutputsLike, SpectralFunction, infer_outputs
from .open import BlockReader, FlatRows, flat_rows, lazy_reads
from .parallel import Executor, _in_distributed_worker, choose_executor
from .plan import BlockPlan, BudgetLike, plan_blocks


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
    executor : Executor
    where : str
        In words, where blocks run.
    """

    data: xr.DataArray
    loop_dims: tuple[Hashable, ...]
    core_dims: tuple[Hashable, ...]
    function: SpectralFunction
    plan: BlockPlan
    executor: Executor
    where: str
    progress: bool = True

    @property
    def loop_shape(self) -> tuple[int, ...]:
        return tuple(self.data.sizes[d] for d in self.loop_dims)

    @property
    def core_shape(self) -> tuple[int, ...]:
        return tuple(self.data.sizes[d] for d in self.core_dims)

    @cached_property
    def flat_rows(self) -> FlatRows | None:
        """Direct reads of the source file's rows, when the input is an untouched :func:`open_usid` array."""
        return flat_rows(self.data, len(self.core_dims))

    def flat_input(self) -> da.Array:
        """The input as a dask array ``(positions, *core)`` chunked by the plan.

        An untouched :func:`open_usid` array is read a block at a time,
        exactly the rows of each block (not the source's larger chunks);
        anything else is reshaped and re-chunked through dask.
        """
        chunks = (self.plan.positions_per_block,) + (-1,) * len(self.core_shape)
        rows = self.flat_rows
        if rows is not None:
            return lazy_reads(rows, chunks, "usid-flat-" + dask.base.tokenize(rows, chunks))
        arr = self.data.data
        if not isinstance(arr, da.Array):
            arr = da.from_array(np.asarray(arr), chunks=-1)
        arr = arr.reshape((self.plan.n_positions, *self.core_shape), merge_chunks=True)
        return arr.rechunk(chunks)

    @contextmanager
    def reading_blocks(self) -> Iterator[BlockReader]:
        """Yield a :class:`~lazyusid.open.BlockReader` of positions ``a:b`` of the flat input.

        An untouched :func:`open_usid` source is held open meanwhile and
        read directly, exactly the rows of each block.
        """
        rows = self.flat_rows
        if rows is not None:
            with rows.reading() as reader:
                yield reader
            return
        flat = self.flat_input()

        def read(a: int, b: int) -> np.ndarray:
            return np.asarray(flat[a:b].compute(scheduler="sync"))

        yield BlockReader(read)

    def block_tasks(self) -> list:
        """One delayed task per block, each returning a tuple of output arrays."""
        blocks = self.flat_input().to_delayed().ravel()
        key = dask.base.tokenize(
            self.data.data.name if isinstance(self.data.data, da.Array) else id(self),
            _token(self.function),
            self.plan,
        )
        run = dask.delayed(_run_block, pure=True)
        return [
            run(
                block,
                self.function,
                self.executor,
                start,
                self.loop_shape,
                self.loop_dims,
                key if self.progress else None,
                self.plan.n_blocks,
                dask_key_name=f"lazyusid-block-{key}-{i}",
            )
            for i, (block, (start, _)) in enumerate(zip(blocks, self.plan.blocks()))
        ]

    def result(self) -> xr.DataArray | xr.Dataset:
        """The lazy xarray result: a DataArray for one output, a Dataset for several."""
        tasks = self.block_tasks()
        arrays = {}
        for i, out in enumerate(self.function.outputs):
            pieces = [
                da.from_delayed(task[i], shape=(stop - start, *out.shape), dtype=out.dtype)
                for task, (start, stop) in zip(tasks, self.plan.blocks())
            ]
            flat = da.concatenate(pieces, axis=0) if len(pieces) > 1 else pieces[0]
            arrays[out.name] = xr.Variable(
                self.loop_dims + out.dims, flat.reshape(self.loop_shape + out.shape), attrs=self._attrs(out)
            )
        coords = {k: v for k, v in self.data.coords.items() if set(v.dims) <= set(self.loop_dims)}
        if self.function.single:
            (name,) = arrays
            return xr.DataArray(arrays[name], coords=coords, name=name)
        return xr.Dataset(arrays, coords=coords, attrs={"usid_function": self.function.name})

    def _attrs(self, out: Output) -> dict:
        attrs = {"usid_function": self.function.name}
        for key in ("usid_file", "usid_dataset"):
            if key in self.data.attrs:
                attrs[key] = self.data.attrs[key]
        return attrs


def _token(fn: SpectralFunction):
    try:
        return dask.base.tokenize(fn.func, fn.params, [o.to_dict() for o in fn.outputs], fn.vectorized)
    except Exception:  # pragma: no cover - exotic parameters: fall back to identity
        return id(fn)


def _run_block(block, function, executor: Executor, start, loop_shape, loop_dims, progress_key, n_blocks):
    if progress_key is not None and _in_distributed_worker():
        progress_key = None  # a bar per worker of someone else's cluster only confuses
    if progress_key is not None:
        _progress.tick(progress_key, n_blocks, function.name, done=0)
    out = executor.run(function.evaluate, block, first=start, loop_shape=loop_shape, loop_dims=loop_dims)
    if progress_key is not None:
        _progress.tick(progress_key, n_blocks, function.name)
    return out


def prepare_map(
    data,
    func: Callable,
    *,
    core_dims: str | Sequence[Hashable] | None = None,
    params: Mapping | None = None,
    outputs: OutputsLike = None,
    vectorized: bool = False,
    budget: BudgetLike = None,
    mem_multiplier: float = 1.0,
    positions_per_block: int | None = None,
    cores: int | None = None,
    client=None,
    progress: bool = True,
) -> SpectralMap:
    """Check the inputs, infer the outputs on a real spectrum and plan the blocks.

    Takes the arguments of :func:`map_spectra`; returns the :class:`SpectralMap`.
    """
    data, core_dims = as_dataarray(data, core_dims)
    loop_dims = tuple(d for d in data.dims if d not in core_dims)
    data = data.transpose(*loop_dims, *core_dims)
    params = dict(params or {})
    if not callable(func):
        raise TypeError(f"func must be callable, got {func!r}")

    first = {d: 0 for d in loop_dims}
    sample = _spectrum(data, loop_dims, first)
    tic = time.perf_counter()
    outs, single = infer_outputs(
        func, sample[None] if vectorized else sample, params, outputs, vectorized, position=0, coords=first
    )
    seconds = time.perf_counter() - tic
    function = SpectralFunction(func, params, outs, vectorized=vectorized, single=single)

    n_positions = int(math.prod(data.sizes[d] for d in loop_dims))
    estimated = seconds * n_positions if not vectorized else 0.0
    executor, where = choose_executor(
        vectorized=vectorized, estimated_seconds=estimated, cores=cores, client=client
    )
    in_flight = executor.cores * (2 if executor.kind == "processes" else 1)
    plan = plan_blocks(
        n_positions,
        sample.nbytes,
        sum(o.nbytes for o in outs),
        budget=budget,
        mem_multiplier=mem_multiplier,
        blocks_in_flight=in_flight,
        positions_per_block=positions_per_block,
        workers=executor.cores,
    )
    return SpectralMap(data, loop_dims, core_dims, function, plan, executor, where, progress)


def map_spectra(
    data,
    func: Callable,
    *,
    store=None,
    group: str | None = None,
    tool: str | None = None,
    override: bool = False,
    resume: str | None = None,
    **kwargs,
) -> xr.DataArray | xr.Dataset:
    """Apply ``func`` to every spectrum of ``data``: lazily, or into a store with checkpoints.

    Parameters
    ----------
    data : xarray.DataArray, dask.array.Array or numpy.ndarray
        Typically what :func:`lazyusid.open_usid` returns. Plain arrays need
        ``core_dims`` as axis numbers.
    func : callable
        Per spectrum: ``func(spectrum, **params)`` gets one spectrum (an array
        over ``core_dims``) and returns a scalar, an array of fixed shape, a
        tuple, or a dict of those. With ``vectorized=True``:
        ``func(block, **params)`` gets many spectra at once, positions first,
        and returns arrays whose first axis has the same length.
    core_dims : str or sequence of str, optional
        Dimensions ``func`` works along (default: the spectroscopic
        dimensions). Any other dimension, including a spectroscopic one not
        named here, is looped over.
    params : mapping, optional
        Keyword arguments for ``func``; scalars, strings, lists, dicts,
        numpy arrays.
    outputs : sequence of str or mapping, optional
        Names of the outputs (for a tuple result) or ``{name: dtype}``,
        ``{name: {"dtype":, "shape":, "dims":, "units":}}`` or ``{name: Output}``.
        ``units`` (default ``"a. u."``) are stored with the values.
        Anything not declared is inferred by running ``func`` on the first
        real spectrum of the data.
    vectorized : bool
        Whether ``func`` takes a block of spectra.
    budget : int or str, optional
        Memory for the whole computation, e.g. ``"512MiB"`` (default: a
        quarter of the available memory).
    mem_multiplier : float
        Working memory of ``func`` per spectrum, as a multiple of the spectrum's bytes.
    positions_per_block : int, optional
        Force the block size (checked against the budget).
    cores : int, optional
        Parallel workers (default: all but one core, both on a 2-core machine).
    client : distributed.Client, optional
        Compute on this cluster (e.g. a dask-jobqueue cluster's client):
        blocks then evaluate on its workers.
    progress : bool
        Show a progress bar (tqdm; terminal or notebook) while blocks finish.
    store : str, os.PathLike or h5py.Group, optional
        Compute **now** into this target, block by block with checkpoints,
        and return the stored result (lazily). An HDF5 file (the source
        file itself puts a USID results group ``<Main>-<Tool>_NNN`` next to
        the source dataset; another file or group records where the source
        is), or a zarr v3 store (a path ending in ``.zarr``). A rerun of the
        same computation returns the stored result without computing; an
        interrupted one resumes where it stopped. See ``docs/checkpoints.md``.
    group : str, optional
        HDF5 group holding the results group (default: the source dataset's
        group in the source file, the root in another file).
    tool : str, optional
        Tool name in the results group name (default: the function's name).
    override : bool
        Compute again into a new results group even if this computation is
        already stored (for zarr: recompute into the same store).
    resume : str, optional
        Name of the partial results group to resume (pyUSID's
        ``use_partial_computation``); it must hold this same computation.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Lazy (dask) result with the loop dimensions and coordinates of the
        input plus one dimension per axis of a vector output; a Dataset
        when ``func`` returns several outputs. With ``store=``, reads the
        stored values.

    Raises
    ------
    lazyusid.SpectralFunctionError
        When ``func`` fails; names the position (flat index and N-D indices)
        and the parameters, chained to the original exception.
    lazyusid.BudgetError
        If the budget cannot hold one position.
    lazyusid.ReadOnlyStoreError, lazyusid.StoreBusyError, lazyusid.StoreConflictError
        With ``store=``: the target is read-only, being written by another
        process, or holds something else under the requested name.

    Examples
    --------
    >>> data = lazyusid.open_usid("scan.h5")                            # doctest: +SKIP
    >>> amp = lazyusid.map_spectra(data, lambda s: np.abs(s).max())      # doctest: +SKIP
    >>> amp.compute()                                                   # doctest: +SKIP
    >>> stored = lazyusid.map_spectra(data, f, store="scan.h5")          # doctest: +SKIP
    """
    unknown = sorted(set(kwargs) - _ENGINE_OPTIONS)
    if unknown:
        raise TypeError(
            f"map_spectra() got unexpected keyword arguments {unknown}; the function's own parameters go "
            f"in params={{...}}, e.g. params={{{unknown[0]!r}: ...}}"
        )
    if store is None:
        if group is not None or tool is not None or override or resume is not None:
            raise TypeError("group=, tool=, override= and resume= apply only with store=")
        return prepare_map(data, func, **kwargs).result()
    from .sinks import order_for_store, store_map

    data, core_dims = as_dataarray(data, kwargs.pop("core_dims", None))
    result_dims = tuple(d for d in data.dims if d not in core_dims)
    data, pos_dims, extra_dims = order_for_store(data, core_dims)
    smap = prepare_map(data, func, core_dims=core_dims, **kwargs)
    return store_map(
        smap,
        store,
        pos_dims=pos_dims,
        extra_dims=extra_dims,
        group=group,
        tool=tool,
        override=override,
        resume=resume,
        result_dims=result_dims,
    )


_ENGINE_OPTIONS = frozenset(inspect.signature(prepare_map).parameters) - {"data", "func"}


def plan_spectra(data, func: Callable, **kwargs) -> BlockPlan:
    """The :class:`BlockPlan` that :func:`map_spectra` would use (runs ``func`` once)."""
    return prepare_map(data, func, **kwargs).plan


def apply_at(
    data,
    func: Callable,
    position: int | Mapping[Hashable, int] = 0,
    *,
    core_dims: str | Sequence[Hashable] | None = None,
    params: Mapping | None = None,
    outputs: OutputsLike = None,
    vectorized: bool = False,
):
    """Run ``func`` on one position only, exactly as :func:`map_spectra` would.

    Reads only that spectrum. pyUSID's ``Process.test()``.

    Parameters
    ----------
    position : int or mapping
        Flat index over the loop dimensions, or integer indices per loop
        dimension, e.g. ``{"X": 19, "Y": 103}``.

    Returns
    -------
    numpy scalar or array, or dict of them
        The value (with the output dtype of the full computation); a dict
        by output name when ``func`` returns several outputs.
    """
    data, core_dims = as_dataarray(data, core_dims)
    loop_dims = tuple(d for d in data.dims if d not in core_dims)
    data = data.transpose(*loop_dims, *core_dims)
    index = _position_index(data, loop_dims, position)
    spectrum = _spectrum(data, loop_dims, index)
    params = dict(params or {})
    block = spectrum[None]
    shape = tuple(data.sizes[d] for d in loop_dims)
    flat = int(np.ravel_multi_index(tuple(index[d] for d in loop_dims), shape)) if loop_dims else 0
    outs, single = infer_outputs(
        func, block if vectorized else spectrum, params, outputs, vectorized, position=flat, coords=index
    )
    function = SpectralFunction(func, params, outs, vectorized=vectorized, single=single)
    values = [v[0] for v in function.evaluate(block, first=flat, loop_shape=shape, loop_dims=loop_dims)]
    return values[0] if single else {o.name: v for o, v in zip(outs, values)}


def as_dataarray(data, core_dims) -> tuple[xr.DataArray, tuple[Hashable, ...]]:
    """Normalise the input to a DataArray and its core dimensions."""
    if isinstance(data, xr.Dataset):
        if len(data.data_vars) != 1:
            raise TypeError(
                f"map over one variable at a time; this Dataset has {list(data.data_vars)}: pass ds[name]"
            )
        data = data[next(iter(data.data_vars))]
    if not isinstance(data, xr.DataArray):
        arr = data if isinstance(data, da.Array) else np.asarray(data)
        if arr.ndim < 1:
            raise ValueError("data must have at least one dimension")
        dims = tuple(f"dim_{i}" for i in range(arr.ndim))
        if core_dims is None:
            core_dims = (arr.ndim - 1,)
        axes = (core_dims,) if isinstance(core_dims, int) else tuple(core_dims)
        if not all(isinstance(a, (int, np.integer)) for a in axes):
            raise TypeError(f"for a plain array give core_dims as axis numbers, got {core_dims!r}")
        core_dims = tuple(dims[a] for a in axes)
        data = xr.DataArray(arr, dims=dims)
    if core_dims is None:
        spec = data.attrs.get("usid_spectroscopic_dims")
        spec = [spec] if isinstance(spec, str) else list(spec) if spec is not None else []
        core_dims = tuple(d for d in spec if d in data.dims) or (data.dims[-1],)
    elif isinstance(core_dims, str):
        core_dims = (core_dims,)
    core_dims = tuple(core_dims)
    missing = [d for d in core_dims if d not in data.dims]
    if missing:
        raise ValueError(
            f"core_dims {missing} are not dimensions of the data; its dims are {list(data.dims)}"
        )
    if len(set(core_dims)) != len(core_dims):
        raise ValueError(f"core_dims {core_dims} repeat a dimension")
    return data, core_dims


def _position_index(data, loop_dims, position) -> dict:
    shape = tuple(data.sizes[d] for d in loop_dims)
    if isinstance(position, Mapping):
        unknown = [d for d in position if d not in loop_dims]
        missing = [d for d in loop_dims if d not in position]
        if unknown or missing:
            raise ValueError(
                f"position must give an index for each loop dimension {list(loop_dims)}; "
                f"missing {missing}, unknown {unknown}"
            )
        index = {d: int(position[d]) for d in loop_dims}
        for d, n in zip(loop_dims, shape):
            if not 0 <= index[d] < n:
                raise IndexError(f"position {d}={index[d]} is outside 0..{n - 1}")
        return index
    n = math.prod(shape)
    flat = int(position)
    if not 0 <= flat < n:
        raise IndexError(f"position {flat} is outside 0..{n - 1} (flat index over {list(loop_dims)})")
    return dict(zip(loop_dims, (int(i) for i in np.unravel_index(flat, shape))))


def _spectrum(data: xr.DataArray, loop_dims, index: Mapping) -> np.ndarray:
    """Read one spectrum (only it) as a numpy array."""
    one = data.isel({d: index[d] for d in loop_dims}) if loop_dims else data
    with dask.config.set(scheduler="sync"):
        return np.asarray(one.values)
