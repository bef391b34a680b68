"""The sink stage: stream finished blocks into HDF5 or zarr, with checkpoints, resume and identity.

:func:`store_map` runs a planned :class:`~lazyusid.compute.SpectralMap` into
a target and returns the stored result, opened lazily:

1. the computation's token (:mod:`lazyusid.identity`) is looked up in the
   target; a complete result with the same token is returned at once;
2. otherwise the target is opened for writing (which locks it), a partial
   result with the same token is resumed or a new one created;
3. only rows without a checkpoint flag are computed; each finished block is
   written by this process: data, flush, flags, flush.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable
from dataclasses import dataclass

import h5py
import numpy as np
import xarray as xr

from ..identity import computation_token, digest
from ..layout import read_layout, remembering_layouts
from .base import ResultShape, stream, todo_ranges
from .hdf5 import HDF5Sink, _opened
from .zarr import ZarrSink

__all__ = [
    "HDF5Sink",
    "ResultShape",
    "StoreTarget",
    "ZarrSink",
    "order_for_store",
    "prepare_store",
    "store_map",
]


def order_for_store(data: xr.DataArray, core_dims) -> tuple[xr.DataArray, tuple, tuple]:
    """Transpose to position dims (slowest first, the row order of the file), other loop dims, core dims.

    Returns ``(data, pos_dims, extra_dims)``.
    """
    spec = _as_list(data.attrs.get("usid_spectroscopic_dims"))
    pos_order = _as_list(data.attrs.get("usid_position_dims"))
    loop = [d for d in data.dims if d not in core_dims]
    pos = [d for d in pos_order if d in loop] + [d for d in loop if d not in pos_order and d not in spec]
    extra = [d for d in loop if d not in pos]
    if not pos:  # every loop dim is spectroscopic: rows are the first loop dim
        pos, extra = extra[:1], extra[1:]
    return data.transpose(*pos, *extra, *core_dims), tuple(pos), tuple(extra)


def store_map(
    smap,
    store,
    *,
    pos_dims: tuple,
    extra_dims: tuple,
    group: str | None = None,
    tool: str | None = None,
    override: bool = False,
    resume: str | None = None,
    result_dims: tuple | None = None,
):
    """Compute ``smap`` into ``store`` (checkpointed, resumable) and return the stored result lazily.

    See :func:`lazyusid.map_spectra` for the meaning of the arguments. The
    result's ``attrs["usid_rows_computed"]`` counts the rows computed by
    this call (0 when the stored result was returned).
    """
    if resume is not None and override:
        raise ValueError("pass either resume= (continue that group) or override=True (a new one), not both")
    with remembering_layouts():  # the source's layout is read once, not per check and per output
        target = prepare_store(smap, store, pos_dims=pos_dims, extra_dims=extra_dims, group=group, tool=tool)
        sink, shape, token = target.sink, target.shape, target.token
        found = sink.find(token, resume)
        computed = 0
        if found and found[-1].complete and not override:
            name = found[-1].name
        else:
            with sink.writing():
                found = sink.find(token, resume)  # again, now that no one else can write
                if found and found[-1].complete and not override:  # finished by another process meanwhile
                    name = found[-1].name
                else:
                    partial = (
                        next((f for f in reversed(found) if not f.complete), None) if not override else None
                    )
                    done = sink.prepare(token, target.identity, dict(smap.function.params), resume=partial)
                    name = sink.name
                    ranges = todo_ranges(done, shape.rows_per_block)
                    computed = sum(b - a for a, b in ranges)
                    key = f"{token}-{os.getpid()}-{id(sink)}" if smap.progress else None
                    try:
                        stream(smap, ranges, target.n_extra, sink.write, progress_key=key)
                    finally:
                        sink.commit()  # flag every block written, also when a block failed
    out = _as_xarray(sink, name, shape, smap, token, result_dims)
    out.attrs["usid_rows_computed"] = computed
    return out


@dataclass(frozen=True, eq=False)
class StoreTarget:
    """Where and as what a planned computation is stored: the sink, the result's shape, the token."""

    sink: HDF5Sink | ZarrSink
    shape: ResultShape
    token: str
    identity: dict
    n_extra: int

    def find(self, name: str | None = None):
        """Stored results of this computation: a list of :class:`~lazyusid.sinks.hdf5.Found`, oldest first."""
        return self.sink.find(self.token, name)


def prepare_store(smap, store, *, pos_dims, extra_dims, group=None, tool=None) -> StoreTarget:
    """Resolve ``store`` and compute the token; reads the target, never writes."""
    data = smap.data
    tool = _tool_name(tool or smap.function.name)
    n_extra = int(np.prod([data.sizes[d] for d in extra_dims], dtype=np.int64))
    shape = ResultShape(
        pos_dims=pos_dims,
        pos_shape=tuple(data.sizes[d] for d in pos_dims),
        extra_dims=extra_dims,
        extra_shape=tuple(data.sizes[d] for d in extra_dims),
        outputs=smap.function.outputs,
        coords={k: v.variable for k, v in data.coords.items() if set(v.dims) <= set(pos_dims + extra_dims)},
        rows_per_block=max(1, smap.plan.positions_per_block // max(1, n_extra)),
    )
    sink = _open_sink(store, group, tool=tool, shape=shape, data=data)
    source = _source_identity(data, smap.core_dims, in_file=getattr(sink, "in_file", False))
    token, identity = computation_token(tool=tool, function=smap.function, source=source)
    return StoreTarget(sink, shape, token, identity, n_extra)


def _as_xarray(sink, name, shape: ResultShape, smap, token: str, result_dims):
    variables = sink.result(name)
    attrs = {
        "usid_function": smap.function.name,
        "usid_store": sink.where if sink.kind == "zarr" else f"{sink.where}{name}",
        "usid_token": token,
    }
    for key in ("usid_file", "usid_dataset"):
        if key in smap.data.attrs:
            attrs[key] = smap.data.attrs[key]
    arrays = {}
    for o in shape.outputs:
        var = variables[o.name]
        var.attrs.update(attrs)
        arrays[o.name] = var
    coords = dict(shape.coords)
    if smap.function.single:
        (key,) = arrays
        out = xr.DataArray(arrays[key], coords=coords, name=key)
    else:
        out = xr.Dataset(arrays, coords=coords, attrs={"usid_function": smap.function.name, **attrs})
    if result_dims is not None:
        out = out.transpose(*result_dims, ...)
    return out


def _open_sink(store, group, *, tool, shape, data):
    source_file = data.attrs.get("usid_file")
    source_dataset = data.attrs.get("usid_dataset")
    if isinstance(store, (h5py.Group, h5py.File)):
        if group is not None:
            raise ValueError("give the HDF5 group either as store=<h5py.Group> or as group=, not both")
        store, group = store.file.filename, store.name
    path = os.path.abspath(os.fspath(store))
    if path.rstrip("/").endswith(".zarr") or os.path.isdir(path):
        if group is not None:
            raise ValueError(f"group= is for HDF5 targets; {path} is a zarr store")
        return ZarrSink(path, tool=tool, shape=shape, source_file=source_file, source_dataset=source_dataset)
    in_file = source_file is not None and os.path.abspath(source_file) == path
    if group is None:
        group = (source_dataset.rsplit("/", 1)[0] or "/") if in_file else "/"
    base = (source_dataset or str(data.name or "Data")).rsplit("/", 1)[-1]
    base = re.sub(r"[-/]", "_", base) or "Data"
    return HDF5Sink(
        path,
        group,
        base=base,
        tool=tool,
        shape=shape,
        source_file=source_file,
        source_dataset=source_dataset,
        reuse_positions=source_file is not None and _same_positions(source_file, source_dataset, shape),
    )


def _same_positions(path: str, dataset: str, shape: ResultShape) -> bool:
    """Whether the result's rows are exactly the source's positions, in file order."""
    with _opened(path, "r") as f:
        pos = read_layout(f[dataset]).pos
    if pos.complete:
        dims = tuple(pos.labels[i] for i in pos.order)
        values = {pos.labels[i]: pos.values[i] for i in pos.order}
    else:
        dims, values = ("Position",), dict(zip(pos.labels, pos.values))
    if tuple(map(str, shape.pos_dims)) != dims or shape.pos_shape != pos.sorted_shape:
        return False
    for label, vals in values.items():
        coord = shape.coords.get(label)
        if coord is None or coord.shape != np.shape(vals) or not np.array_equal(coord.values, vals):
            return False
    return True


def _source_identity(data: xr.DataArray, core_dims, *, in_file: bool) -> dict:
    """Plain data naming the input: dataset path, shape, dtype, dims and a digest of the loop coordinates.

    The file path counts unless results go into the source file itself, so
    two scans of the same layout mapped into one results file stay apart.
    Dataset, shape and coordinates identify the input only when it is the
    source dataset or a selection of it (``isel``, ``sel``, ``transpose``,
    ``chunk``) with a coordinate along every dimension. xarray keeps the
    ``usid_*`` attributes through arithmetic, so an input computed from the
    source (``data * 2``, ``abs(data)``) also counts its dask graph's name,
    and in-memory values count by digest: such inputs never pass for the
    source itself. A file dataset also counts by its content fingerprint
    (:func:`lazyusid.fingerprint.content_fingerprint`: shape, dtype, layout
    and a sample of rows), so that a source rewritten in place computes anew.
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
    if "usid_dataset" in data.attrs:
        source["dataset"] = data.attrs["usid_dataset"]
        source["file"] = None if in_file else os.path.abspath(data.attrs["usid_file"])
        if not hasattr(arr, "dask"):  # loaded into memory, maybe changed there
            source["data"] = digest(np.asarray(arr))
        else:  # read from the file when it runs: what the file holds now
            from ..fingerprint import content_fingerprint

            source["fingerprint"] = content_fingerprint(data.attrs["usid_file"], data.attrs["usid_dataset"])
            if not _selects_source(data):
                source["graph"] = arr.name
    else:  # not from a file: identify the values themselves
        source["data"] = arr.name if hasattr(arr, "dask") else digest(np.asarray(arr))
    return source


#: dask layers that select or rearrange values without changing them
_SELECTION_LAYERS = ("getitem-", "transpose-", "rechunk-")
#: dask layers of xarray's own read of a backend variable (``xr.open_dataset(..., chunks={})``)
_BACKEND_LAYERS = ("original-open_dataset-", "open_dataset-")


def _selects_source(data: xr.DataArray) -> bool:
    """Whether ``data`` is the lazily read source dataset, or a selection of it that its coordinates name.

    The read is :func:`lazyusid.open_usid`'s (a ``usid-`` layer), or
    xarray's read of a variable of lazyusid's backend: that one is trusted
    only when the variable's encoding carries ``usid_source``
    (``"<file>:<dataset>"``), which selections keep and computations drop,
    and which is never written to netCDF or zarr.
    """
    layers = list(data.data.dask.layers)
    reads = [name for name in layers if not name.startswith(_SELECTION_LAYERS)]
    marker = f"{data.attrs.get('usid_file')}:{data.attrs.get('usid_dataset')}"
    by_backend = data.encoding.get("usid_source") == marker and all(
        name.startswith(_BACKEND_LAYERS) for name in reads
    )
    if not (len(reads) == 1 and reads[0].startswith("usid-")) and not (by_backend and len(reads) <= 2):
        return False
    if len(reads) == len(layers):  # nothing selected
        return True
    located = {d for v in data.coords.values() if v.dtype.kind in "biufcmM" for d in v.dims}
    return all(d in located for d in data.dims)


def _tool_name(name: str) -> str:
    """pyUSID reserves '-' in group names; ``<lambda>`` becomes ``lambda``."""
    name = re.sub(r"[^0-9A-Za-z_.]+", "_", str(name)).strip("_")
    return name or "Tool"


def _as_list(value) -> list[Hashable]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
