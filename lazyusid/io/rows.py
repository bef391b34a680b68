"""Reading rows of a 2-D main dataset where the work runs: picklable readers, no h5py object.

A :class:`RowReader` names the file, the dataset, its shape and dtype, and
how its bytes lie in the file, resolved once by the client
(:func:`row_reader`):

``"mapped"``
    A contiguous dataset stored with the native layout of its dtype: its
    rows are mapped straight from the file's bytes (copy on write; the
    file never changes). Needs no HDF5 library, so no HDF5 file lock.
``"chunks"``
    A chunked (possibly compressed) dataset whose chunk locations were
    resolved by the client: a block reads the raw bytes of its chunks and
    decodes them through HDF5's own filter pipeline, in a file held in
    memory. Also lock-free.
``"h5py"``
    Anything else: open read-only, ``read_direct``, close (< 1 ms).

Lock-free reads are what let worker processes read a source file while
the client holds it open for writing (results stored into the source
file; HDF5's file lock then refuses other readers). Byte addresses are
only valid while the file is the one they were resolved from, so every
read checks the file's identity: with ``strict`` the device, inode, size
and modification time must be unchanged (any change falls back to an
``"h5py"`` read), otherwise (the engine's own run, which itself writes
into the file) device and inode. The source dataset's own bytes are never
moved by HDF5 while other objects are added to the file.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
from dataclasses import dataclass, field, replace

import h5py
import numpy as np

#: chunked datasets with more chunks than this are read through h5py (the table travels with every task)
MAX_CHUNKS = 200_000

_counter = itertools.count()


def file_stamp(path: str, strict: bool) -> tuple[int, ...]:
    """What identifies the file at ``path``: device and inode, and with ``strict`` size and mtime."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) if strict else (st.st_dev, st.st_ino)


@dataclass(frozen=True)
class ChunkTable:
    """Where the chunks of a 2-D chunked dataset lie in its file, and how to decode them.

    Attributes
    ----------
    chunk_shape : tuple of int
    chunks : dict
        ``(row, column)`` chunk offset → ``(byte_offset, size, filter_mask)``;
        chunks never written are absent (they read as the fill value).
    filters : tuple
        ``(code, flags, values)`` of each filter in the pipeline.
    fill : bytes
        The fill value's bytes.
    """

    chunk_shape: tuple[int, int]
    chunks: dict
    filters: tuple
    fill: bytes

    def rows(self, r0: int, r1: int) -> ChunkTable:
        """The table of only the chunks holding rows ``r0:r1`` (what one block's task carries)."""
        n = self.chunk_shape[0]
        lo, hi = (r0 // n) * n, r1
        return replace(self, chunks={k: v for k, v in self.chunks.items() if lo <= k[0] < hi})


@dataclass(frozen=True)
class RowReader:
    """Rows of a 2-D dataset, read in any process of a machine that sees the file.

    Build with :func:`row_reader`. Picklable; ``reader(r0, r1)`` returns
    rows ``r0:r1`` as a ``(r1 - r0, width)`` array of ``dtype``.
    """

    path: str
    dataset: str
    n_rows: int
    width: int
    dtype: np.dtype
    how: str = "h5py"
    offset: int | None = None
    table: ChunkTable | None = field(default=None, repr=False)
    stamp: tuple[int, ...] = ()
    strict: bool = True

    def __repr__(self) -> str:
        return f"RowReader({self.path!r}, {self.dataset!r}, ({self.n_rows}, {self.width}), {self.dtype}, {self.how})"

    def __dask_tokenize__(self):
        return (
            type(self).__name__,
            self.path,
            self.dataset,
            self.n_rows,
            self.width,
            self.dtype.str,
            self.how,
        )

    def for_rows(self, r0: int, r1: int) -> RowReader:
        """This reader, carrying only what rows ``r0:r1`` need."""
        return replace(self, table=self.table.rows(r0, r1)) if self.table is not None else self

    def __call__(self, r0: int, r1: int) -> np.ndarray:
        n = max(0, r1 - r0)
        if n == 0 or self.width == 0:
            return np.empty((n, self.width), dtype=self.dtype)
        how = self.how
        if how != "h5py" and file_stamp(self.path, self.strict) != self.stamp:
            if not self.strict:
                raise RuntimeError(
                    f"{self.path} was replaced by another file during the computation; run it again"
                )
            how = "h5py"  # the file changed since the addresses were resolved: ask HDF5 again
        if how != "h5py":
            return self.read_raw(r0, r1)
        with h5py.File(self.path, "r") as f:
            out = np.empty((n, self.width), dtype=self.dtype)
            f[self.dataset].read_direct(out, np.s_[r0:r1])
        return out

    def read_raw(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` from the file's bytes, without checking that the file is still the same one."""
        if self.how == "mapped":
            return _mapped(self.path, self.offset, r0, r1 - r0, self.width, self.dtype)
        return _decoded(self, r0, r1)


def row_reader(dset: h5py.Dataset, *, strict: bool = True, lock_free: bool = True) -> RowReader:
    """The :class:`RowReader` of an open 2-D dataset: mapped, chunk table or plain h5py reads.

    ``lock_free=False`` (or a dataset that fits neither lock-free way)
    gives plain h5py reads. The first and last rows of a lock-free reader
    are checked against h5py's own read.
    """
    path = os.path.abspath(dset.file.filename)
    base = RowReader(path, dset.name, int(dset.shape[0]), int(dset.shape[1]), dset.dtype)
    if not lock_free or dset.ndim != 2 or dset.shape[0] == 0 or dset.file.driver != "sec2":
        return base
    if dset.is_virtual or dset.external or dset.dtype.hasobject:
        return base
    if dset.id.get_type() != h5py.h5t.py_create(dset.dtype):  # padded compounds, odd float formats
        return base
    stamp = file_stamp(path, strict)
    reader = None
    if dset.chunks is None:
        offset = dset.id.get_offset()
        if offset is not None and dset.dtype.isnative:
            reader = replace(base, how="mapped", offset=int(offset), stamp=stamp, strict=strict)
    elif len(dset.chunks) == 2 and dset.id.get_num_chunks() <= MAX_CHUNKS:
        reader = replace(base, how="chunks", table=_chunk_table(dset), stamp=stamp, strict=strict)
    if reader is None:
        return base
    last = dset.shape[0] - 1
    nan = dset.dtype.kind in "fc"
    for r in {0, last}:
        try:
            same = np.array_equal(
                reader.for_rows(r, r + 1).read_raw(r, r + 1), dset[r : r + 1], equal_nan=nan
            )
        except (OSError, ValueError):  # a filter that does not decode outside its file (lzf, plugins)
            same = False
        if not same:
            return base
    return reader


def _chunk_table(dset: h5py.Dataset) -> ChunkTable:
    chunks: dict = {}

    def visit(info) -> None:
        chunks[tuple(int(i) for i in info.chunk_offset)] = (
            int(info.byte_offset),
            int(info.size),
            info.filter_mask,
        )

    dset.id.chunk_iter(visit)
    dcpl = dset.id.get_create_plist()
    filters = tuple(dcpl.get_filter(i)[:3] for i in range(dcpl.get_nfilters()))
    fill = np.zeros(1, dtype=dset.dtype)
    dcpl.get_fill_value(fill)
    return ChunkTable(tuple(int(n) for n in dset.chunks), chunks, filters, fill.tobytes())


def _mapped(path: str, offset: int, r0: int, n: int, width: int, dtype: np.dtype) -> np.ndarray:
    """Rows mapped from the file (copy on write: writable, and the file never changes)."""
    row_bytes = width * dtype.itemsize
    start = offset + r0 * row_bytes
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as fh:  # the map keeps its own handle
        mapped = mmap.mmap(fh.fileno(), start - base + n * row_bytes, access=mmap.ACCESS_COPY, offset=base)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_WILLNEED"):  # start reading a cold file now
        mapped.madvise(mmap.MADV_WILLNEED)
    return np.frombuffer(mapped, dtype, count=n * width, offset=start - base).reshape(n, width)


def _decoded(reader: RowReader, r0: int, r1: int) -> np.ndarray:
    """Rows of a chunked dataset: raw chunk bytes from the file, decoded by HDF5 in memory."""
    table = reader.table
    assert table is not None
    cr = table.chunk_shape[0]
    lo = (r0 // cr) * cr
    hi = -(-r1 // cr) * cr
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(table.chunk_shape)
    for code, flags, values in table.filters:
        dcpl.set_filter(code, flags, values)
    dcpl.set_fill_value(np.frombuffer(table.fill, dtype=reader.dtype).copy())
    name = f"lazyusid-chunks-{os.getpid()}-{threading.get_ident()}-{next(_counter)}"
    out = np.empty((r1 - r0, reader.width), dtype=reader.dtype)
    with h5py.File(name, "w", driver="core", backing_store=False) as mem:
        space = h5py.h5s.create_simple((hi - lo, reader.width))
        dsid = h5py.h5d.create(mem.id, b"rows", h5py.h5t.py_create(reader.dtype), space, dcpl=dcpl)
        with open(reader.path, "rb") as fh:
            for (row, col), (offset, size, mask) in table.chunks.items():
                if lo <= row < hi:
                    dsid.write_direct_chunk((row - lo, col), os.pread(fh.fileno(), size, offset), mask)
        h5py.Dataset(dsid).read_direct(out, np.s_[r0 - lo : r1 - lo])
    return out
