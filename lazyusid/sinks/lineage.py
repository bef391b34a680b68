"""What a stored result is computed from: the identity of every input, and its lineage read back.

An input that is itself a stored lazyusid result (an output of a results
group or zarr store, opened by :func:`~lazyusid.map_spectra` or
:func:`~lazyusid.open_usid`) is identified by that result's token and output
name, not by its bytes or its dask graph (graphchain's chain of hashes): a
pipeline rerun in a new session finds every step, and a change upstream
changes every token downstream. A result not (yet) complete also counts by
its checkpoint flags, so that one completed later is a new input. Any other
file input counts by dataset, a content fingerprint and, when it is a
selection or computation on the file, the name of its dask graph;
in-memory values by digest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import h5py
import numpy as np
import xarray as xr

from ..core.identity import digest
from ..io.fingerprint import content_fingerprint
from .base import MARKERS


def input_identity(
    data: xr.DataArray, core_dims=(), *, in_file: str | None = None, direct: bool = False
) -> dict:
    """Plain data naming one input: dimensions, shape, dtype, a digest of its coordinates, and where it comes from.

    ``in_file`` is the file results are written into: an input in that file
    is named without its path (so a file and its copy identify alike).
    ``direct``: the untouched source, read by the block tasks themselves.
    """
    coords = {str(k): np.asarray(v.values) for k, v in data.coords.items() if v.dtype.kind in "biufcmM"}
    source = {
        "dims": [str(d) for d in data.dims],
        "shape": [int(n) for n in data.shape],
        "dtype": data.dtype.str,
        "core_dims": [str(d) for d in core_dims],
        "coords_sha256": digest(coords),
    }
    arr = data.data
    lazy = hasattr(arr, "dask")
    untouched = lazy and data.encoding.get("usid_read") == arr.name
    stored = stored_state(data.attrs) if "usid_token" in data.attrs else None
    if stored is not None and lazy:
        source["result"] = stored
        if not (untouched or direct):
            source["graph"] = arr.name
    elif "usid_dataset" in data.attrs:
        source["dataset"] = data.attrs["usid_dataset"]
        file = os.path.abspath(data.attrs["usid_file"])
        source["file"] = None if in_file is not None and file == os.path.abspath(in_file) else file
        if not lazy:  # loaded into memory, maybe changed there
            source["data"] = digest(np.asarray(arr))
        else:  # read from the file when it runs: what the file holds now
            source["fingerprint"] = content_fingerprint(data.attrs["usid_file"], data.attrs["usid_dataset"])
            if not direct:
                source["graph"] = arr.name
    else:  # not from a file: identify the values themselves
        source["data"] = arr.name if lazy else digest(np.asarray(arr))
    return source


def stored_state(attrs: Mapping) -> dict | None:
    """``{"token", "output"}`` of a stored result's output (plus ``"flags"`` while it is not complete)."""
    store = attrs.get("usid_store")
    state = {
        "token": str(attrs["usid_token"]),
        "output": str(attrs.get("usid_output", attrs.get("usid_field", ""))),
    }
    if attrs.get("usid_field"):
        state["field"] = str(attrs["usid_field"])
    flags = _flags(str(store)) if store else None
    if flags is None:
        return None
    if not flags.all():
        state["flags"] = digest(flags)
    return state


def _flags(store: str) -> np.ndarray | None:
    """The checkpoint flags of a results group ``file:/group`` or a zarr store, or None when unreadable."""
    try:
        if os.path.isdir(store):
            import zarr

            return np.asarray(zarr.open_group(store, mode="r", zarr_format=3)[MARKERS][...], dtype=bool)
        path, group = store.rsplit(":", 1)
        with h5py.File(path, "r") as f:
            return np.asarray(f[group][MARKERS][()], dtype=bool)
    except Exception:  # moved, deleted, locked: not known as a stored result
        return None


def inputs_identity(inputs: Mapping, *, in_file: str | None) -> dict:
    """The identity of each per-position input (a dict per variable for a Dataset), by parameter name."""
    out = {}
    for name, value in inputs.items():
        if isinstance(value, xr.Dataset):
            out[name] = {str(k): input_identity(v, in_file=in_file) for k, v in value.data_vars.items()}
        else:
            out[name] = input_identity(value, in_file=in_file)
    return out


def input_records(data: xr.DataArray, inputs: Mapping) -> list[dict]:
    """Where the data and each per-position input come from: ``name``, ``file``, ``dataset``/``store``, ``token``.

    The first record is the data (``name="data"``); then one per input
    (per variable of a Dataset input, named ``param.variable``).
    """
    records = [_record("data", data)]
    for name, value in inputs.items():
        if isinstance(value, xr.Dataset):
            records.extend(_record(f"{name}.{k}", v) for k, v in value.data_vars.items())
        else:
            records.append(_record(name, value))
    return records


def _record(name: str, arr: xr.DataArray) -> dict:
    rec = {"name": name}
    for key, attr in (("file", "usid_file"), ("dataset", "usid_dataset"), ("store", "usid_store")):
        if attr in arr.attrs:
            rec[key] = str(arr.attrs[attr])
    if "usid_token" in arr.attrs:
        rec["token"] = str(arr.attrs["usid_token"])
    return rec


def follow(result) -> list[dict]:
    """:func:`lazyusid.lineage`: read the chain of results groups (or zarr stores) behind ``result``."""
    if isinstance(result, (xr.DataArray, xr.Dataset)):
        attrs = result.attrs
        if "usid_store" not in attrs and isinstance(result, xr.Dataset):
            attrs = next(iter(result.data_vars.values())).attrs
        where = attrs.get("usid_store")
        if where is None:
            raise ValueError("this is not a stored lazyusid result (no 'usid_store' attribute)")
    else:
        where = os.fspath(result)
    chain, seen, todo = [], set(), [str(where)]
    while todo:
        store = todo.pop(0)
        if store in seen:
            continue
        seen.add(store)
        step = _step(store)
        if step is None:
            continue
        chain.append(step)
        todo.extend(i["store"] for i in step["inputs"] if "store" in i and "token" in i)
    return chain


def _step(store: str) -> dict | None:
    try:
        if os.path.isdir(store):
            import zarr

            attrs = dict(zarr.open_group(store, mode="r", zarr_format=3).attrs)
        else:
            path, group = store.rsplit(":", 1)
            with h5py.File(path, "r") as f:
                attrs = {k: v for k, v in f[group].attrs.items() if not isinstance(v, h5py.Reference)}
    except Exception:
        return None
    text = attrs.get("lazyusid_inputs")
    text = text.decode() if isinstance(text, bytes) else text
    tool = attrs.get("tool")
    return {
        "store": store,
        "tool": tool.decode() if isinstance(tool, bytes) else tool,
        "token": attrs.get("lazyusid_token").decode()
        if isinstance(attrs.get("lazyusid_token"), bytes)
        else attrs.get("lazyusid_token"),
        "inputs": json.loads(text) if text else [],
    }
