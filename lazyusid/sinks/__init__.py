"""The sink stage: stream finished blocks into HDF5 or zarr, with checkpoints, resume and identity.

:func:`store_map` runs a planned :class:`~lazyusid.compute.SpectralMap` into
a target and returns the stored result, opened lazily:

1. the computation's token (:mod:`lazyusid.core.identity`) is looked up in the
   target; a complete result with the same token is returned at once;
2. otherwise the target is opened for writing (which locks it), a partial
   result with the same token is resumed or a new one created;
3. only rows without a checkpoint flag are computed, as one dask graph
   (:mod:`lazyusid.run.driver`); HDF5 blocks are written by this process as
   they finish (data, flush, flags, flush), zarr blocks by their tasks, then
   flagged here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import h5py
import numpy as np
import xarray as xr

from ..core.identity import computation_token
from ..run.driver import run_blocks, say_interrupted
from ..usid.layout import read_layout, remembering_layouts
from .base import FAILED, ResultShape, Sink
from .hdf5 import HDF5Sink
from .hdf5_file import opened
from .lineage import input_identity, input_records, inputs_identity

if TYPE_CHECKING:
    from .zarr import ZarrSink

__all__ = [
    "HDF5Sink",
    "ResultShape",
    "Sink",
    "StoreTarget",
    "ZarrSink",
    "order_for_store",
    "prepare_store",
    "store_map",
    "target_file",
]


def __getattr__(name: str):
    if name == "ZarrSink":  # zarr is imported for zarr targets only (~0.2-0.3 s)
        from .zarr import ZarrSink

        return ZarrSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_zarr_target(path: str) -> bool:
    """Whether a store path names a zarr store (``*.zarr``, or an existing directory)."""
    return path.rstrip("/").endswith(".zarr") or os.path.isdir(path)


def target_file(store) -> str | None:
    """The HDF5 file ``store`` writes into (absolute), or None for a zarr store or no store."""
    if store is None:
        return None
    if isinstance(store, (h5py.Group, h5py.File)):
        return os.path.abspath(store.file.filename)
    path = os.path.abspath(os.fspath(store))
    return None if is_zarr_target(path) else path


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
        roi = _roi_rows(smap, target.n_extra, pos_dims, extra_dims)
        sink, shape, token = target.sink, target.shape, target.token
        found = sink.find(token, resume)
        computed = 0
        if found and found[-1].complete and not override:
            name = found[-1].name
        else:
            sink.check(token, target.identity, dict(smap.function.params))  # a refusal writes nothing
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
                    if roi is not None:  # only the ROI's rows; rows computed before are kept (and flagged)
                        keep = roi | done.astype(bool)
                        sink.flag_only = keep
                        smap = replace(smap, roi=np.repeat(keep, target.n_extra))
                        done = done | ~roi
                    computed = _compute(smap, sink, sink.todo(done), target.n_extra)
    out = _as_xarray(sink, name, shape, smap, token, result_dims)
    out.attrs["usid_rows_computed"] = computed
    return out


def _roi_rows(smap, n_extra: int, pos_dims, extra_dims) -> np.ndarray | None:
    """The region of interest as one flag per row of the result (refused if it varies within a row)."""
    if smap.roi is None:
        return None
    rows = smap.roi.reshape(-1, n_extra)
    if n_extra > 1 and not (rows == rows[:, :1]).all():
        raise ValueError(
            f"a stored result is checkpointed per position of {list(pos_dims)}; this roi varies along "
            f"{list(extra_dims)} within a position. Give a roi over {list(pos_dims)} only; nothing was written."
        )
    return rows[:, 0].copy()


def _compute(smap, sink: Sink, rows: list[tuple[int, int]], n_extra: int) -> int:
    """Compute the blocks of ``rows`` into ``sink``; checkpointed at the end, on failure and on Ctrl-C."""
    try:
        run_blocks(
            smap,
            [(r0 * n_extra, r1 * n_extra) for r0, r1 in rows],
            lambda a, b, outs: sink.finished(a // n_extra, b // n_extra, outs),
            write=sink.region_writer(n_extra),
            progress=smap.progress,
        )
    except KeyboardInterrupt:
        sink.commit()
        say_interrupted(sink.saved(), sink.shape.n_rows, sink.where)
        raise
    finally:
        sink.commit()  # flag every block written, also when a block failed
    return sum(r1 - r0 for r0, r1 in rows)


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
        status=smap.function.on_error == "skip",
    )
    sink = _open_sink(store, group, tool=tool, shape=shape, data=data)
    in_file = getattr(sink, "path", None) if getattr(sink, "in_file", False) else None
    source = input_identity(data, smap.core_dims, in_file=in_file, direct=smap.reader is not None)
    inputs = inputs_identity(smap.inputs, in_file=getattr(sink, "path", None))
    token, identity = computation_token(tool=tool, function=smap.function, source=source, inputs=inputs)
    sink.inputs = input_records(data, smap.inputs)
    return StoreTarget(sink, shape, token, identity, n_extra)


def _as_xarray(sink, name, shape: ResultShape, smap, token: str, result_dims):
    variables = sink.result(name)
    attrs = {
        "usid_function": smap.function.name,
        "usid_store": sink.where if sink.kind == "zarr" else f"{sink.where}{name}",
        "usid_token": token,
    }
    arrays, reads = {}, {}
    coords = dict(shape.coords)
    if FAILED in variables:
        coords[FAILED] = variables[FAILED].astype(bool)
        coords[FAILED].attrs.update(long_name="function failed")
    for o in shape.outputs:
        var = variables[o.name]
        var.attrs.update(attrs, usid_output=o.name, quantity=o.name, long_name=o.name)
        if (
            sink.kind == "hdf5"
        ):  # the output is a USID main dataset: what it is read from, as open_usid names it
            var.attrs.update(usid_file=sink.path, usid_dataset=f"{sink.group.rstrip('/')}/{name}/{o.name}")
        # untouched (the read's own name), the block tasks read its rows directly; its dims are the file's order
        reads[o.name] = {"usid_read": var.data.name, "usid_file_order": var.dims}
        if o.dtype.names is None:
            arrays[o.name] = var
            continue
        fields = _record_fields(var, o, attrs["usid_store"] + ("" if sink.kind == "zarr" else "/") + o.name)
        prefix = "" if smap.function.single else f"{o.name}."
        arrays.update({prefix + k: v for k, v in fields.items()})
    if smap.function.single and len(arrays) == 1:
        (key,) = arrays
        out = xr.DataArray(arrays[key], coords=coords, name=key)
    else:
        out = xr.Dataset(arrays, coords=coords, attrs={"usid_function": smap.function.name, **attrs})
    if result_dims is not None and tuple(out.dims) != tuple(result_dims):
        out = out.transpose(*result_dims, ...)
    for key, encoding in reads.items():  # set last: constructors and transposes do not keep encodings
        if isinstance(out, xr.DataArray):
            out.encoding.update(encoding)
        elif key in out.data_vars:
            out[key].encoding.update(encoding)
    errors = sink.errors(name) if FAILED in variables else None
    if errors is not None:
        out.attrs["usid_errors"] = json.dumps(errors)
    return out


def _record_fields(var: xr.Variable, out, record: str) -> dict[str, xr.Variable]:
    """The fields of a stored record output, one float (or int) variable each, as :func:`~lazyusid.io.open.record_fields`.

    Each names the stored records by ``usid_record`` and its field by
    ``usid_field``, not by the source's ``usid_dataset``: a computation on
    one field is neither a computation on the source nor on another field.
    """
    shared = {k: v for k, v in var.attrs.items() if k not in ("usid_file", "usid_dataset", "units")}
    fields = {}
    for name in out.dtype.names:
        attrs = {**shared, "quantity": name, "long_name": name, "units": out.units}
        attrs.update(usid_record=record, usid_field=name)
        fields[name] = xr.Variable(var.dims, var.data[name], attrs=attrs)
    return fields


def _open_sink(store, group, *, tool, shape, data):
    source_file = data.attrs.get("usid_file")
    source_dataset = data.attrs.get("usid_dataset")
    if isinstance(store, (h5py.Group, h5py.File)):
        if group is not None:
            raise ValueError("give the HDF5 group either as store=<h5py.Group> or as group=, not both")
        store, group = store.file.filename, store.name
    path = os.path.abspath(os.fspath(store))
    if is_zarr_target(path):
        if group is not None:
            raise ValueError(f"group= is for HDF5 targets; {path} is a zarr store")
        from .zarr import ZarrSink

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
    with opened(path, "r") as f:
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


def _tool_name(name: str) -> str:
    """pyUSID reserves '-' in group names; ``<lambda>`` becomes ``lambda``."""
    name = re.sub(r"[^0-9A-Za-z_.]+", "_", str(name)).strip("_")
    return name or "Tool"


def _as_list(value) -> list[Hashable]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
