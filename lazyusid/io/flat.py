"""Flat positions of a stored dataset, read by the block tasks themselves: :class:`FlatReader` and who gets one.

An untouched :func:`~lazyusid.open_usid` array or stored lazyusid result in
file order is a run of the file's rows per block of positions: a block task
reads exactly its rows, where it runs, through a picklable
:class:`~lazyusid.io.rows.RowReader` (memory-mapped or raw chunks, lock-free;
else ``read_direct``). Used for the spectra and for per-position inputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from ..inputs import untouched_source
from ..usid.files import open_file
from ..usid.layout import read_layout
from .rows import RowReader, row_reader


@dataclass(frozen=True)
class FlatReader:
    """A main dataset as flat positions ``(rows × n_extra, *core_shape)``: reads runs of positions.

    The C-order flattening of the loop dimensions of an array in file order
    (positions slowest first, then spectroscopic dimensions slowest first,
    the function's core dimensions last) is the order of the file's rows; a
    block of positions is a run of whole or partial rows. Picklable.
    """

    rows: RowReader
    core_shape: tuple[int, ...]
    n_extra: int

    @property
    def n_positions(self) -> int:
        return self.rows.n_rows * self.n_extra

    def for_positions(self, a: int, b: int) -> FlatReader:
        """This reader, carrying only what positions ``a:b`` need (a block task's share)."""
        return replace(self, rows=self.rows.for_rows(a // self.n_extra, -(-b // self.n_extra)))

    def read(self, a: int, b: int) -> np.ndarray:
        """Positions ``a:b`` as ``(b - a, *core_shape)``; only the rows holding them are read."""
        r0, r1 = a // self.n_extra, -(-b // self.n_extra)
        block = self.rows(r0, r1).reshape((-1, *self.core_shape))
        offset = a - r0 * self.n_extra
        if offset == 0 and block.shape[0] == b - a:
            return block
        return block[offset : offset + b - a].copy()  # do not hold the rest of the rows


def direct_reader(data: xr.DataArray, n_core_dims: int, *, writes_to: str | None) -> FlatReader | None:
    """A :class:`FlatReader` of the file's rows when ``data`` is an untouched read in file order, else None.

    Untouched reads are :func:`~lazyusid.open_usid` arrays and stored
    results (:func:`lazyusid.inputs.untouched_source`); ``writes_to`` is the
    file results go into (its rows are then trusted by inode, not mtime).
    """
    source = untouched_source(data)
    if source is None:
        return None
    path, dataset = source
    with open_file(path) as f:  # a file another process holds for writing: StoreBusyError, naming it
        dset = f[dataset]
        order = data.encoding.get("usid_file_order")
        if order is None:  # open_usid: positions slowest first, then spectroscopic dims slowest first
            layout = read_layout(dset)
            pos, spec = layout.pos, layout.spec
            order = tuple(pos.dims[i] for i in pos.sort_order) + tuple(spec.dims[i] for i in spec.sort_order)
        rows = row_reader(dset, strict=os.path.abspath(path) != writes_to)
    return flat_reader(data, n_core_dims, file_order=tuple(order), rows=rows)


def flat_reader(
    data: xr.DataArray, n_core_dims: int, *, file_order: tuple, rows: RowReader
) -> FlatReader | None:
    """A :class:`FlatReader` of ``rows`` when ``data`` (an untouched source) has its dimensions in file order."""
    if tuple(data.dims) != tuple(file_order):
        return None
    core_shape = tuple(data.shape[len(data.shape) - n_core_dims :]) if n_core_dims else ()
    core = math.prod(core_shape)
    if core < 1 or rows.width % core:
        return None
    return FlatReader(rows, core_shape, rows.width // core)


def input_readers(raw: Mapping, varying: Mapping, loop_dims, writes_to) -> dict:
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


def how(reader) -> str | None:
    """``"lock-free"`` when every row reader of an input needs no HDF5 file lock."""
    if reader is None:
        return None
    parts = reader.values() if isinstance(reader, dict) else [reader]
    return "lock-free" if all(r.rows.how != "h5py" for r in parts) else "h5py"
