"""Reading a stored HDF5 result back: its outputs lazily (dask, no open file kept) and its recorded errors."""

from __future__ import annotations

import json
import warnings

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
    """The errors a results group records (``on_error="skip"``), first by position.

    A record that is not valid JSON (cut by a kill while a checkpoint
    rewrote it: a write of several pages can stop between two) gives a
    warning and no errors; which positions failed is still in
    ``failed_positions``, written as raw data.
    """
    text = grp.attrs.get(ERRORS)
    if text is None:
        return []
    try:
        errors = json.loads(text.decode() if isinstance(text, bytes) else text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        errors = None
    if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
        warnings.warn(
            f"the error messages recorded in {grp.name!r} of {grp.file.filename} are damaged (cut by a kill?) "
            f"and are left out; the positions that failed are still marked in {FAILED!r}",
            stacklevel=2,
        )
        return []
    return errors
