"""The engine: map a function over every spectrum of a (lazy) USID dataset.

``map_spectra`` turns an xarray object into a flat ``(positions, *core)``
dask array, plans blocks of positions under a memory budget, and builds one
task per block that evaluates the function (in worker processes when it is
a Python per-spectrum function). Nothing runs until the result is computed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import xarray as xr

from .core.function import OutputsLike, SpectralFunction, infer_outputs, takes_position
from .core.plan import BlockPlan, BudgetLike, plan_blocks
from .errors import SpectralFunctionError
from .graph import SpectralMap, direct_reader
from .inputs import (
    as_dataarray,
    as_roi,
    position_index,
    read_spectrum,
    split_params,
    untouched_source,
    value_at,
)
from .run.schedulers import choose_scheduler

#: positions tried in turn to infer the outputs with ``on_error="skip"`` (the function may fail at the first)
INFER_TRIES = 20

#: documented once, shared by :func:`map_spectra` and :func:`plan_spectra`
_ENGINE_DOC = """
    core_dims : str or sequence of str, optional
        Dimensions ``func`` works along (default: the spectroscopic
        dimensions). Any other dimension, including a spectroscopic one not
        named here, is looped over.
    params : mapping, optional
        Keyword arguments for ``func``; scalars, strings, lists, dicts,
        numpy arrays are the same at every position. An xarray DataArray (or
        Dataset) with loop dimensions of the data is a **per-position
        input**: ``func`` gets that position's value (a numpy scalar or
        array over its other dimensions; a dict of them for a Dataset), a
        vectorised ``func`` the block's slice. A stored lazyusid result is
        identified by its own token (``docs/pipelines.md``). If ``func`` has
        a parameter ``position``, it gets the N-D index of its spectrum (a
        tuple of ints; vectorised: a tuple of index arrays).
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
        Show a progress bar (tqdm; terminal or notebook) while blocks finish.
    roi : numpy.ndarray or xarray.DataArray of bool, optional
        Region of interest over the loop dimensions: ``func`` runs only where
        it is True; elsewhere the outputs hold their fill value (NaN for
        floats, 0 otherwise). Stored: the result keeps the full grid and
        flags only the ROI's positions; the ROI is not part of the identity,
        so a larger ROI (or ``roi=None``) later computes only what is new.
    on_error : {"raise", "skip"}
        ``"skip"``: a position where ``func`` raises gets the fill value and
        the run goes on; the result has a ``failed_positions`` mask
        (``result.usid.failed``, a valid ``roi=``) and, stored, the first
        errors (``lazyusid.errors_of(result)``)."""


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
    roi=None,
    on_error: str = "raise",
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
    if not callable(func):
        raise TypeError(f"func must be callable, got {func!r}")
    raw_params = dict(params or {})
    params, varying = split_params(raw_params, data, loop_dims)
    mask = as_roi(roi, data, loop_dims)
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

    if mask is not None and not mask.any():
        raise ValueError("roi selects no position: there is nothing to compute")
    # the outputs are inferred at the first position (of the ROI); with on_error="skip", at the first
    # of the next few where the function does not raise
    candidates = range(n_positions) if mask is None else np.flatnonzero(mask)
    for k, at in enumerate(candidates[: INFER_TRIES if on_error == "skip" else 1]):
        first = position_index(data, loop_dims, int(at))
        sample = read_spectrum(data, loop_dims, first)
        kwargs = _call_kwargs(func, params, varying, loop_dims, first, vectorized)
        tic = time.perf_counter()
        try:
            outs, single = infer_outputs(
                func,
                sample[None] if vectorized else sample,
                kwargs,
                outputs,
                vectorized,
                position=int(at),
                coords=first,
            )
            break
        except SpectralFunctionError:
            if on_error != "skip" or k == min(INFER_TRIES, len(candidates)) - 1:
                raise
    seconds = time.perf_counter() - tic
    function = SpectralFunction(func, params, outs, vectorized=vectorized, single=single, on_error=on_error)

    writes_to = os.path.abspath(writes_to) if writes_to is not None else None
    reader = direct_reader(data, len(core_dims), writes_to=writes_to) if source else None
    readers = _input_readers(raw_params, varying, loop_dims, writes_to)
    in_process = None
    if writes_to is not None and writes_to == _abspath(data.attrs.get("usid_file")):
        if reader is None or reader.rows.how == "h5py":
            in_process = "it reads the file results are written into, through HDF5"
    read_by_hdf5 = {k: v for k, v in varying.items() if _how(readers.get(k)) != "lock-free"}
    if writes_to is not None and any(writes_to == _abspath(f) for f in _files(read_by_hdf5)):
        in_process = "a per-position input reads the file results are written into, through HDF5"
    scheduler = choose_scheduler(
        vectorized=vectorized,
        estimated_seconds=0.0 if vectorized else seconds * n_positions,
        cores=cores,
        client=client,
        in_process=in_process,
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
    return SpectralMap(
        data,
        loop_dims,
        core_dims,
        function,
        plan,
        scheduler,
        reader,
        progress,
        inputs=varying,
        readers=readers,
        roi=mask,
    )


def _abspath(path) -> str | None:
    return os.path.abspath(path) if path else None


def _input_readers(raw: Mapping, varying: Mapping, loop_dims, writes_to) -> dict:
    """Direct row readers of the per-position inputs that are untouched reads in the data's loop order.

    A block task then reads its slice of them itself, where it runs, like
    its spectra (a :class:`~lazyusid.graph.FlatReader`; a dict of them for
    a Dataset whose every variable is such a read).
    """
    readers = {}
    for name, value in varying.items():
        arrays = dict(value.data_vars) if isinstance(value, xr.Dataset) else {None: value}
        originals = dict(raw[name].data_vars) if isinstance(raw[name], xr.Dataset) else {None: raw[name]}
        found = {}
        for key, arr in arrays.items():
            original = originals[key]
            if tuple(original.dims) != tuple(arr.dims) or tuple(arr.dims[: len(loop_dims)]) != tuple(
                loop_dims
            ):
                break  # transposed or broadcast to the data's positions: read through its graph
            reader = direct_reader(original, arr.ndim - len(loop_dims), writes_to=writes_to)
            if reader is None:
                break
            found[key] = reader
        else:
            readers[name] = found[None] if None in found else found
    return readers


def _how(reader) -> str | None:
    """``"lock-free"`` when every row reader of an input needs no HDF5 file lock."""
    if reader is None:
        return None
    parts = reader.values() if isinstance(reader, dict) else [reader]
    return "lock-free" if all(r.rows.how != "h5py" for r in parts) else "h5py"


def _files(varying: Mapping) -> set:
    """The HDF5 files the per-position inputs read."""
    files = set()
    for value in varying.values():
        arrays = value.data_vars.values() if isinstance(value, xr.Dataset) else [value]
        files.update(a.attrs["usid_file"] for a in arrays if "usid_file" in a.attrs)
    return files


def _call_kwargs(func, params: dict, varying: Mapping, loop_dims, index: Mapping, vectorized: bool) -> dict:
    """The keyword arguments of ``func`` at one position, as the full run passes them."""
    kwargs = {**params, **value_at(varying, loop_dims, index)}
    if "position" not in params and takes_position(func):
        kwargs["position"] = tuple(index[d] for d in loop_dims)
    if vectorized:  # a block of one position
        kwargs.update({k: _one(kwargs[k]) for k in [*varying, "position"] if k in kwargs})
    return kwargs


def _one(value):
    if isinstance(value, dict):
        return {k: np.asarray(v)[None] for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(np.asarray([i]) for i in value)
    return np.asarray(value)[None]


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
    roi=None,
    on_error: str = "raise",
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
        roi=roi,
        on_error=on_error,
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
    roi=None,
    on_error: str = "raise",
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
        roi=roi,
        on_error=on_error,
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
    params, varying = split_params(params, data, loop_dims)
    block = spectrum[None]
    shape = tuple(data.sizes[d] for d in loop_dims)
    flat = int(np.ravel_multi_index(tuple(index[d] for d in loop_dims), shape)) if loop_dims else 0
    kwargs = _call_kwargs(func, params, varying, loop_dims, index, vectorized)
    outs, single = infer_outputs(
        func, block if vectorized else spectrum, kwargs, outputs, vectorized, position=flat, coords=index
    )
    function = SpectralFunction(func, params, outs, vectorized=vectorized, single=single)
    extras = {k: _one(v) for k, v in value_at(varying, loop_dims, index).items()}
    evaluated = function.evaluate(
        block, first=flat, loop_shape=shape, loop_dims=loop_dims, extras=extras or None
    )
    values = [v[0] for v in evaluated]
    return values[0] if single else {o.name: v for o, v in zip(outs, values)}
