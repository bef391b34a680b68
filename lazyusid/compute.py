"""The engine: map a function over every spectrum of a (lazy) USID dataset.

``map_spectra`` turns an xarray object into a flat ``(positions, *core)``
dask array, plans blocks of positions under a memory budget, and builds one
task per block that evaluates the function (in worker processes when it is
a Python per-spectrum function). Nothing runs until the result is computed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace

import h5py
import numpy as np
import xarray as xr

from .core.function import OutputsLike, SpectralFunction, infer_outputs
from .core.plan import BlockPlan, BudgetLike, CallTimer, plan_blocks
from .graph import SpectralMap, flat_reader
from .inputs import as_dataarray, position_index, read_spectrum, untouched_source
from .io.rows import row_reader
from .run.schedulers import choose_scheduler
from .usid.layout import read_layout

#: documented once, shared by :func:`map_spectra` and :func:`plan_spectra`
_ENGINE_DOC = """
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
        Parallel workers (default: all but one core, both on a 2-core machine;
        capped at the machine's cores unless ``client`` is given).
    client : distributed.Client, optional
        Compute on this cluster (e.g. a dask-jobqueue cluster's client):
        blocks then read their spectra and evaluate on its workers. Default:
        the active default client, if any.
    progress : bool
        Show a progress bar (tqdm; terminal or notebook) while blocks finish."""


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
    writes_to: str | None = None,
    source: tuple[str, str] | bool | None = True,
) -> SpectralMap:
    """Check the inputs, infer the outputs on a real spectrum, choose the scheduler and plan the blocks.

    Takes the engine options of :func:`map_spectra`; ``writes_to`` is the
    HDF5 file results will be written into (its readers then must not need
    HDF5's file lock), ``source`` the ``(file, dataset)`` of an untouched
    :func:`~lazyusid.open_usid` input (``True``: find out from ``data``).
    Returns the :class:`~lazyusid.graph.SpectralMap`; nothing runs yet.
    """
    if source is True:
        source = untouched_source(data)
    data, core_dims = as_dataarray(data, core_dims)
    loop_dims = tuple(d for d in data.dims if d not in core_dims)
    data = data.transpose(*loop_dims, *core_dims)
    params = dict(params or {})
    if not callable(func):
        raise TypeError(f"func must be callable, got {func!r}")
    n_positions = int(math.prod(data.sizes[d] for d in loop_dims))
    if n_positions == 0 or 0 in data.shape:
        where = (
            f" ({data.attrs['usid_dataset']} in {data.attrs['usid_file']})"
            if "usid_file" in data.attrs
            else ""
        )
        raise ValueError(
            f"the data{where} is empty: its shape is {dict(data.sizes)}; there is nothing to map"
        )

    first = {d: 0 for d in loop_dims}
    sample = read_spectrum(data, loop_dims, first)
    with CallTimer() as timer:  # its time, less any wait for a CPU on a loaded machine
        outs, single = infer_outputs(
            func,
            sample[None] if vectorized else sample,
            params,
            outputs,
            vectorized,
            position=0,
            coords=first,
        )
    seconds = timer.seconds
    function = SpectralFunction(func, params, outs, vectorized=vectorized, single=single)

    writes_to = os.path.abspath(writes_to) if writes_to is not None else None
    reader = None
    if source:
        path, dataset = source
        with h5py.File(path, "r") as f:
            dset = f[dataset]
            layout = read_layout(dset)
            rows = row_reader(dset, strict=path != writes_to)
        pos, spec = layout.pos, layout.spec
        order = tuple(pos.dims[i] for i in pos.sort_order) + tuple(spec.dims[i] for i in spec.sort_order)
        reader = flat_reader(data, len(core_dims), file_order=order, rows=rows)
    in_process = None
    if writes_to is not None and writes_to == _abspath(data.attrs.get("usid_file")):
        if reader is None or reader.rows.how == "h5py":
            in_process = "it reads the file results are written into, through HDF5"
    scheduler = choose_scheduler(
        vectorized=vectorized,
        estimated_seconds=0.0 if vectorized else seconds * n_positions,
        cores=cores,
        client=client,
        in_process=in_process,
        module=getattr(func, "__module__", None),
    )
    plan = plan_blocks(
        n_positions,
        sample.nbytes,
        sum(o.nbytes for o in outs),
        budget=budget,
        mem_multiplier=mem_multiplier,
        blocks_in_flight=scheduler.workers * (2 if scheduler.distributed else 1),
        positions_per_block=positions_per_block,
        workers=scheduler.workers,
        seconds_per_position=0.0 if vectorized else seconds,
    )
    plan = replace(plan, scheduler=str(scheduler))
    return SpectralMap(data, loop_dims, core_dims, function, plan, scheduler, reader, progress)


def _abspath(path) -> str | None:
    return os.path.abspath(path) if path else None


def map_spectra(
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
    store=None,
    group: str | None = None,
    tool: str | None = None,
    override: bool = False,
    resume: str | None = None,
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
        and returns arrays whose first axis has the same length.{engine}
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
        when ``func`` returns several outputs. Computing it directly runs on
        the scheduler the plan names. With ``store=``, reads the stored values.

    Raises
    ------
    lazyusid.SpectralFunctionError
        When ``func`` fails; names the position (flat index and N-D indices)
        and the parameters, chained to the original exception.
    lazyusid.WorkerCrashedError
        When ``func`` takes its worker process down; names the block.
    lazyusid.BudgetError
        If the budget cannot hold one position.
    lazyusid.ReadOnlyStoreError, lazyusid.StoreBusyError, lazyusid.StoreConflictError
        With ``store=``: the target is read-only, being written by another
        process, or holds something else under the requested name.
    KeyboardInterrupt
        Ctrl-C or SIGTERM during a stored run, after a checkpoint of what finished.

    Examples
    --------
    >>> data = lazyusid.open_usid("scan.h5")                            # doctest: +SKIP
    >>> amp = lazyusid.map_spectra(data, lambda s: np.abs(s).max())      # doctest: +SKIP
    >>> amp.compute()                                                   # doctest: +SKIP
    >>> stored = lazyusid.map_spectra(data, f, store="scan.h5")          # doctest: +SKIP
    """
    options = dict(
        params=params,
        outputs=outputs,
        vectorized=vectorized,
        budget=budget,
        mem_multiplier=mem_multiplier,
        positions_per_block=positions_per_block,
        cores=cores,
        client=client,
        progress=progress,
    )
    if store is None:
        if group is not None or tool is not None or override or resume is not None:
            raise TypeError("group=, tool=, override= and resume= apply only with store=")
        return prepare_map(data, func, core_dims=core_dims, **options).result()
    from .sinks import order_for_store, store_map, target_file

    source = untouched_source(data)
    data, core_dims = as_dataarray(data, core_dims)
    result_dims = tuple(d for d in data.dims if d not in core_dims)
    data, pos_dims, extra_dims = order_for_store(data, core_dims)
    smap = prepare_map(
        data, func, core_dims=core_dims, writes_to=target_file(store), source=source, **options
    )
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


map_spectra.__doc__ = map_spectra.__doc__.replace("{engine}", _ENGINE_DOC)


def plan_spectra(
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
) -> BlockPlan:
    """The :class:`BlockPlan` that :func:`map_spectra` would run, with its scheduler (runs ``func`` once).

    Parameters
    ----------
    data, func
        As for :func:`map_spectra`.{engine}
    """
    return prepare_map(
        data,
        func,
        core_dims=core_dims,
        params=params,
        outputs=outputs,
        vectorized=vectorized,
        budget=budget,
        mem_multiplier=mem_multiplier,
        positions_per_block=positions_per_block,
        cores=cores,
        client=client,
        progress=progress,
    ).plan


plan_spectra.__doc__ = plan_spectra.__doc__.replace("{engine}", _ENGINE_DOC)


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
    index = position_index(data, loop_dims, position)
    spectrum = read_spectrum(data, loop_dims, index)
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
