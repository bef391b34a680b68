"""What the user passes, normalised once: a DataArray and its core dimensions, its provenance, one spectrum.

Shared by the engine (:mod:`lazyusid.compute`) and its faces.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .core.function import takes_position


def untouched_source(data) -> tuple[str, str] | None:
    """``(file, dataset)`` when ``data`` holds exactly the values :func:`~lazyusid.open_usid` opened, else None.

    :func:`~lazyusid.open_usid` records the name of its read in the
    ``usid_read`` encoding; any selection or computation changes the name.
    """
    if not isinstance(data, xr.DataArray) or not isinstance(data.data, da.Array):
        return None
    if data.encoding.get("usid_read") != data.data.name and not _backend_read(data):
        return None
    path, dataset = data.attrs.get("usid_file"), data.attrs.get("usid_dataset")
    return (path, dataset) if path and dataset else None


def _backend_read(data: xr.DataArray) -> bool:
    """Whether ``data`` is a variable of ``xr.open_dataset(..., engine="usid", chunks=...)``, untouched.

    xarray names the dask array it wraps around a backend variable by a
    token of the file's modification time (``open_dataset-<name>-<token>``,
    over one ``original-...`` layer), so the name changes once results are
    written into the file; any selection or computation adds layers.
    """
    if "usid_read" not in data.encoding:
        return False
    name = data.data.name
    return name.startswith("open_dataset-") and set(data.data.dask.layers) == {name, f"original-{name}"}


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


def position_index(data, loop_dims, position) -> dict:
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


def read_spectrum(data: xr.DataArray, loop_dims, index: Mapping) -> np.ndarray:
    """Read one spectrum (only it) as a numpy array."""
    one = data.isel({d: index[d] for d in loop_dims}) if loop_dims else data
    with dask.config.set(scheduler=dask.get):  # a name ("sync") makes dask import distributed
        return np.asarray(one.values)


def split_params(params: Mapping | None, data: xr.DataArray, loop_dims) -> tuple[dict, dict]:
    """Constants and per-position inputs: ``(constants, {name: DataArray or Dataset})``.

    A value that is an xarray DataArray or Dataset with a loop dimension of
    ``data`` is a per-position input (HyperSpy's rule): it is checked
    against ``data`` (sizes, and coordinates where both have them),
    broadcast over the loop dimensions it lacks, and transposed to the loop
    dimensions first, its own dimensions last. Any other value (NumPy arrays
    included; DataArrays without a loop dimension as their values) is the
    same at every position.
    """
    constants, varying = {}, {}
    for name, value in dict(params or {}).items():
        if not isinstance(value, (xr.DataArray, xr.Dataset)):
            constants[name] = value
        elif not set(value.dims) & set(loop_dims):
            constants[name] = (
                value.values
                if isinstance(value, xr.DataArray)
                else {str(k): v.values for k, v in value.data_vars.items()}
            )
        else:
            varying[name] = _aligned(name, value, data, loop_dims)
    if "position" in varying:
        raise ValueError("params['position'] cannot vary per position: lazyusid passes position= itself")
    return constants, varying


def _aligned(name: str, value, data: xr.DataArray, loop_dims):
    """``value`` checked against ``data`` and laid out as loop dims first (broadcast), its own dims last."""
    what = f"params[{name!r}]"
    for d in loop_dims:
        if d not in value.dims:
            continue
        if value.sizes[d] != data.sizes[d]:
            raise ValueError(
                f"{what} has {d}={value.sizes[d]} but the data has {d}={data.sizes[d]}; a per-position input "
                f"must have the data's loop dimensions {dict((k, data.sizes[k]) for k in loop_dims)} (or a "
                "subset of them). Select the same positions of both (e.g. the same .isel)."
            )
        if d in value.coords and d in data.coords:
            mine, theirs = np.asarray(value[d].values), np.asarray(data[d].values)
            if mine.shape != theirs.shape or not np.array_equal(mine, theirs):
                raise ValueError(
                    f"{what} and the data have different {d} coordinates ({_few(mine)} vs {_few(theirs)}); "
                    "a per-position input is matched to the spectra by position, so they must agree. "
                    "Select the same positions of both, or drop the coordinate."
                )
    missing = {d: data.sizes[d] for d in loop_dims if d not in value.dims}
    if missing:
        value = value.expand_dims(missing)
    own = [d for d in value.dims if d not in loop_dims]
    if isinstance(value, xr.Dataset):
        if not value.data_vars:
            raise ValueError(f"{what} is a Dataset without variables")
        return value.transpose(*loop_dims, *own)
    return value.transpose(*loop_dims, *own)


def _few(values: np.ndarray) -> str:
    flat = values.reshape(-1)
    return repr(flat.tolist()) if flat.size <= 4 else f"[{flat[0]!r}, {flat[1]!r}, ..., {flat[-1]!r}]"


def flat_inputs(varying: Mapping, loop_dims) -> dict:
    """Each per-position input as dask arrays ``(positions, *own)`` (a dict of them for a Dataset)."""
    out = {}
    for name, value in varying.items():
        if isinstance(value, xr.Dataset):
            out[name] = {str(k): _flat(v, loop_dims) for k, v in value.data_vars.items()}
        else:
            out[name] = _flat(value, loop_dims)
    return out


def _flat(value: xr.DataArray, loop_dims) -> da.Array:
    value = value.transpose(*loop_dims, ...)
    n = int(math.prod(value.shape[: len(loop_dims)]))
    arr = value.data
    if not isinstance(arr, da.Array):
        values = np.asarray(arr).view()
        values.flags.writeable = False  # the function must not change the caller's array
        arr = da.from_array(values, chunks=values.shape, name="lazyusid-param-" + dask.base.tokenize(values))
    return arr.reshape((n, *value.shape[len(loop_dims) :]), merge_chunks=True)


def value_at(varying: Mapping, loop_dims, index: Mapping) -> dict:
    """Each per-position input's value at one position (as the function receives it)."""
    at = {d: index[d] for d in loop_dims}
    out = {}
    with dask.config.set(scheduler="sync"):
        for name, value in varying.items():
            one = value.isel(at)
            if isinstance(one, xr.Dataset):
                out[name] = {str(k): np.asarray(v.values)[()] for k, v in one.data_vars.items()}
            else:
                out[name] = np.asarray(one.values)[()]
    return out


def as_roi(roi, data: xr.DataArray, loop_dims) -> np.ndarray | None:
    """A region of interest as a flat boolean mask over the positions (loop dims in order), or None."""
    if roi is None:
        return None
    if isinstance(roi, xr.DataArray):
        if roi.dtype != bool:
            raise TypeError(f"roi must be a boolean mask, got dtype {roi.dtype}")
        unknown = [d for d in roi.dims if d not in loop_dims]
        if unknown:
            raise ValueError(
                f"roi has dimensions {unknown} that are not loop dimensions of the data {list(loop_dims)}"
            )
        mask = _aligned("roi", roi, data, loop_dims)
        with dask.config.set(scheduler="sync"):
            flat = np.asarray(mask.values).reshape(-1)
    else:
        arr = np.asarray(roi)
        shape = tuple(data.sizes[d] for d in loop_dims)
        if arr.dtype != bool:
            raise TypeError(f"roi must be a boolean mask, got dtype {arr.dtype}")
        if arr.shape != shape:
            raise ValueError(
                f"roi has shape {arr.shape}; a NumPy mask must have the shape of the loop dimensions "
                f"{dict(zip(loop_dims, shape))} (or give a DataArray with dims)"
            )
        flat = arr.reshape(-1).copy()
    return flat


def call_kwargs(func, params: dict, varying: Mapping, loop_dims, index: Mapping, vectorized: bool) -> dict:
    """The keyword arguments of ``func`` at one position, as the full run passes them."""
    kwargs = {**params, **value_at(varying, loop_dims, index)}
    if "position" not in params and takes_position(func):
        kwargs["position"] = tuple(index[d] for d in loop_dims)
    if vectorized:  # a block of one position
        kwargs.update({k: one_position(kwargs[k]) for k in [*varying, "position"] if k in kwargs})
    return kwargs


def one_position(value):
    """A per-position value as the block of one position a vectorised function gets."""
    if isinstance(value, dict):
        return {k: np.asarray(v)[None] for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(np.asarray([i]) for i in value)
    return np.asarray(value)[None]
