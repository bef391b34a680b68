"""Reading a stored HDF5 result back: its outputs lazily (dask, no open file kept) and its recorded errors."""

from __future__ import annotations

import json

import dask
import h5py
import numpy as np
import xarray as xr

from ..io.open import H5Source, lazy_reads
from .base import ERRORS, FAILED, ResultShape
from .hdf5_group import CHUNK_BYTES


def read_result(path: str, group: str, shape: ResultShape) -> dict[str, xr.Variable]:
    """The outputs of the results group ``group`` of ``path`` (and its failure flags), as lazy variables."""
    out = {}
    for o in shape.outputs:
        cols = shape.columns(o)
        source = H5Source(path, f"{group}/{o.name}", (shape.n_rows,), (cols,), o.dtype)
        rows = max(1, min(shape.n_rows, CHUNK_BYTES * 16 // max(1, cols * o.dtype.itemsize)))
        arr = lazy_reads(source, (rows, cols), "usid-result-" + dask.base.tokenize(source, rows))
        out[o.name] = shape.variable(o, arr)
        out[o.name].attrs["units"] = o.units
    if shape.status:
        source = H5Source(path, f"{group}/{FAILED}", (shape.n_rows,), (shape.n_extra,), np.uint8)
        arr = lazy_reads(source, (shape.n_rows, shape.n_extra), "usid-failed-" + dask.base.tokenize(source))
        out[FAILED] = xr.Variable(shape.loop_dims, arr.reshape(shape.pos_shape + shape.extra_shape))
    return out


def stored_errors(grp: h5py.Group) -> list[dict]:
    """The errors a results group records (``on_error="skip"``), first by position."""
    text = grp.attrs.get(ERRORS)
    return json.loads(text.decode() if isinstance(text, bytes) else text) if text is not None else []
