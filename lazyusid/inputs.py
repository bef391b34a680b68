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


def untouched_source(data) -> tuple[str, str] | None:
    """``(file, dataset)`` when ``data`` holds exactly the values :func:`~lazyusid.open_usid` opened, else None.

    :func:`~lazyusid.open_usid` records the name of its read in the
    ``usid_read`` encoding; any selection or computation changes the name.
    """
    if not isinstance(data, xr.DataArray) or not isinstance(data.data, da.Array):
        return None
    if data.encoding.get("usid_read") != data.data.name:
        return None
    path, dataset = data.attrs.get("usid_file"), data.attrs.get("usid_dataset")
    return (path, dataset) if path and dataset else None


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
