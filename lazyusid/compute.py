"""The engine: map a function over every spectrum of a (lazy) USID dataset.

``map_spectra`` turns an xarray object into a flat ``(positions, *core)``
dask array, plans blocks of positions under a memory budget, and builds one
task per block that evaluates the function (in worker processes when it is
a Python per-spectrum function). Nothing runs until the result is computed.
The options are defined once, in :mod:`lazyusid.options`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace

import numpy as np
import xarray as xr

from .core.function import SpectralFunction
from .core.outputs import infer_outputs
from .core.plan import BlockPlan, CallTimer, plan_blocks
from .errors import SpectralFunctionError
from .graph import SpectralMap
from .inputs import (
    as_dataarray,
    as_roi,
    call_kwargs,
    one_position,
    position_index,
    read_spectrum,
    split_params,
    untouched_source,
    value_at,
)
from .io.flat import direct_reader, how, input_readers
from .options import CALL, RUN, STORE, takes
from .run.schedulers import choose_scheduler

#: positions tried in turn to infer the outputs with ``on_error="skip"`` (the function may fail at the first)
INFER_TRIES = 20


@takes(CALL, RUN)
def prepare_map(
    data,
    func: Callable,
    *,
    writes_to: str | None = None,
    source: tuple[str, str] | bool | None = True,
    **options,
) -> SpectralMap:
    """Check the inputs, infer the outputs on a real spectrum, choose the scheduler and plan the blocks.

    Takes the engine options of :func:`map_spectra`; ``writes_to`` is the
    HDF5 file results will be written into (its readers then must not need
    HDF5's file lock), ``source`` the ``(file, dataset)`` of an untouched
    :func:`~lazyusid.open_usid` input (``True``: find out from ``data``).
    Returns the :class:`~lazyusid.graph.SpectralMap`; nothing runs yet.
    """
    core_dims, params, outputs, vectorized, budget, roi, on_error, cores, client = (
        options[k]
        for k in (
            "core_dims",
            "params",
            "outputs",
            "vectorized",
            "budget",
            "roi",
            "on_error",
            "cores",
            "client",
        )
    )
    data, core_dims = as_dataarray(data, core_dims)
    if source is True:
        source = untouched_source(data)
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
    writes_to = os.path.abspath(writes_to) if writes_to is not None else None
    reader = direct_reader(data, len(core_dims), writes_to=writes_to) if source else None
    # the outputs are inferred at the first position (of the ROI); with on_error="skip", at the first
    # of the next few where the function does not raise
    candidates = range(n_positions) if mask is None else np.flatnonzero(mask)
    for k, at in enumerate(candidates[: INFER_TRIES if on_error == "skip" else 1]):
        first = position_index(data, loop_dims, int(at))
        # one spectrum: through the rows the block tasks will read, else through the input's graph
        sample = (
            reader.read(int(at), int(at) + 1)[0]
            if reader is not None
            else read_spectrum(data, loop_dims, first)
        )
        kwargs = call_kwargs(func, params, varying, loop_dims, first, vectorized)
        # the function's own time (not the inference's ~0.5 ms around it), less any wait for a CPU
        timer = CallTimer()
        try:
            outs, single = infer_outputs(
                func,
                sample[None] if vectorized else sample,
                kwargs,
                outputs,
                vectorized,
                position=int(at),
                coords=first,
                input_units=data.attrs.get("units"),
                timer=timer,
            )
            break
        except SpectralFunctionError:
            if on_error != "skip" or k == min(INFER_TRIES, len(candidates)) - 1:
                raise
    seconds = timer.seconds
    function = SpectralFunction(func, params, outs, vectorized=vectorized, single=single, on_error=on_error)

    readers = input_readers(raw_params, varying, loop_dims, writes_to)
    in_process = None
    if writes_to is not None and writes_to == _abspath(data.attrs.get("usid_file")):
        if reader is None or reader.rows.how == "h5py":
            in_process = "it reads the file results are written into, through HDF5"
    read_by_hdf5 = {k: v for k, v in varying.items() if how(readers.get(k)) != "lock-free"}
    if writes_to is not None and any(writes_to == _abspath(f) for f in _files(read_by_hdf5)):
        in_process = "a per-position input reads the file results are written into, through HDF5"
    scheduler = choose_scheduler(
        vectorized=vectorized,
        estimated_seconds=0.0 if vectorized else seconds * (n_positions if mask is None else int(mask.sum())),
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
        mem_multiplier=options["mem_multiplier"],
        blocks_in_flight=scheduler.workers * (2 if scheduler.distributed else 1),
        positions_per_block=options["positions_per_block"],
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
        options["progress"],
        inputs=varying,
        readers=readers,
        roi=mask,
    )


def _abspath(path) -> str | None:
    return os.path.abspath(path) if path else None


def _files(varying: Mapping) -> set:
    """The HDF5 files the per-position inputs read."""
    files = set()
    for value in varying.values():
        arrays = value.data_vars.values() if isinstance(value, xr.Dataset) else [value]
        files.update(a.attrs["usid_file"] for a in arrays if "usid_file" in a.attrs)
    return files


@takes(CALL, RUN, STORE)
def map_spectra(data, func: Callable, **options) -> xr.DataArray | xr.Dataset:
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
        and returns arrays whose first axis has the same length.{options}

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
    store = options.pop("store")
    stored = {k: options.pop(k) for k in ("group", "tool", "override", "resume")}
    if store is None:
        if (
            stored["group"] is not None
            or stored["tool"] is not None
            or stored["override"]
            or stored["resume"]
        ):
            raise TypeError("group=, tool=, override= and resume= apply only with store=")
        return prepare_map(data, func, **options).result()
    from .sinks import order_for_store, store_map, target_file

    data, core_dims = as_dataarray(data, options.pop("core_dims"))
    source = untouched_source(data)
    result_dims = tuple(d for d in data.dims if d not in core_dims)
    data, pos_dims, extra_dims = order_for_store(data, core_dims)
    smap = prepare_map(
        data, func, core_dims=core_dims, writes_to=target_file(store), source=source, **options
    )
    return store_map(smap, store, pos_dims=pos_dims, extra_dims=extra_dims, result_dims=result_dims, **stored)


@takes(CALL, RUN)
def plan_spectra(data, func: Callable, **options) -> BlockPlan:
    """The :class:`BlockPlan` that :func:`map_spectra` would run, with its scheduler (runs ``func`` once).

    Parameters
    ----------
    data, func
        As for :func:`map_spectra`.{options}
    """
    return prepare_map(data, func, **options).plan


@takes(CALL)
def apply_at(data, func: Callable, position: int | Mapping[Hashable, int] = 0, **options):
    """Run ``func`` on one position only, exactly as :func:`map_spectra` would.

    Reads only that spectrum. pyUSID's ``Process.test()``.

    Parameters
    ----------
    data, func
        As for :func:`map_spectra`.
    position : int or mapping
        Flat index over the loop dimensions, or integer indices per loop
        dimension, e.g. ``{"X": 19, "Y": 103}``.{options}

    Returns
    -------
    numpy scalar or array, or dict of them
        The value (with the output dtype of the full computation); a dict
        by output name when ``func`` returns several outputs.
    """
    core_dims, params, outputs, vectorized = (
        options[k] for k in ("core_dims", "params", "outputs", "vectorized")
    )
    data, core_dims = as_dataarray(data, core_dims)
    loop_dims = tuple(d for d in data.dims if d not in core_dims)
    data = data.transpose(*loop_dims, *core_dims)
    index = position_index(data, loop_dims, position)
    spectrum = read_spectrum(data, loop_dims, index)
    params, varying = split_params(params, data, loop_dims)
    block = spectrum[None]
    shape = tuple(data.sizes[d] for d in loop_dims)
    flat = int(np.ravel_multi_index(tuple(index[d] for d in loop_dims), shape)) if loop_dims else 0
    kwargs = call_kwargs(func, params, varying, loop_dims, index, vectorized)
    outs, single = infer_outputs(
        func,
        block if vectorized else spectrum,
        kwargs,
        outputs,
        vectorized,
        position=flat,
        coords=index,
        input_units=data.attrs.get("units"),
    )
    function = SpectralFunction(func, params, outs, vectorized=vectorized, single=single)
    extras = {k: one_position(v) for k, v in value_at(varying, loop_dims, index).items()}
    evaluated = function.evaluate(
        block, first=flat, loop_shape=shape, loop_dims=loop_dims, extras=extras or None
    )
    values = [v[0] for v in evaluated]
    return values[0] if single else {o.name: v for o, v in zip(outs, values)}
