"""A cheap content fingerprint of an HDF5 dataset, part of an input's identity.

Path, shape and dtype do not notice a source rewritten in place (a
re-acquisition, a correction applied to the file): the stored result would
be returned for new data. :func:`content_fingerprint` hashes the dataset's
shape, dtype, storage layout and a fixed sample of its rows (the first, the
last and 64 spread evenly between), so that such a rewrite computes anew.
It reads at most 66 rows (of a compressed dataset: the stored bytes of the
chunks holding them, not decompressed), and is memoised per file state
(device, inode, size, modification time), so that a result returned again
costs a ``stat``.

What it cannot catch (docs/checkpoints.md): a change confined to rows it
does not sample, and, within one process, a rewrite that restores the
file's size and modification time to the nanosecond.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading

import h5py
import numpy as np

#: rows sampled between the first and the last
SAMPLED_ROWS = 64
#: fingerprints kept per process (one per file state and dataset)
_MEMO_SIZE = 256

_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()


def sampled_rows(n_rows: int) -> np.ndarray:
    """The rows a fingerprint reads: first, last and ``SAMPLED_ROWS`` spread evenly, sorted, unique.

    Examples
    --------
    >>> sampled_rows(5).tolist()
    [0, 1, 2, 3, 4]
    >>> rows = sampled_rows(10**6)
    >>> int(rows[0]), int(rows[-1]), len(rows)
    (0, 999999, 66)
    """
    if n_rows <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_rows - 1, SAMPLED_ROWS + 2).round().astype(np.int64))


def content_fingerprint(path: str | os.PathLike, dataset: str) -> str:
    """sha256 over shape, dtype, storage layout and sampled rows of ``dataset`` in the HDF5 file ``path``.

    Parameters
    ----------
    path : str or path-like
        The HDF5 file.
    dataset : str
        The dataset's path in the file.

    Returns
    -------
    str
        64 hex characters; equal for two datasets with the same shape,
        dtype, layout (contiguous / chunked with its chunk shape and
        filters) and values in the sampled rows, wherever they are.

    Raises
    ------
    OSError
        If the file cannot be opened for reading.
    KeyError
        If it holds no ``dataset``.
    """
    path = os.path.abspath(os.fspath(path))
    dataset = "/" + dataset.lstrip("/")
    st = os.stat(path)
    key = (path, dataset, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _memo_lock:
        known = _memo.get(key)
    if known is not None:
        return known
    with h5py.File(path, "r") as f:
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise KeyError(f"{path} holds no dataset {dataset!r} to fingerprint")
        value = _fingerprint(f[dataset])
    with _memo_lock:
        if len(_memo) >= _MEMO_SIZE:
            _memo.pop(next(iter(_memo)))  # the oldest
        _memo[key] = value
    return value


def _fingerprint(dset: h5py.Dataset) -> str:
    h = hashlib.sha256()
    dtype = dset.dtype
    h.update(repr((tuple(dset.shape), dtype.str if dtype.fields is None else dtype.descr)).encode())
    h.update(_layout(dset).encode())
    if dset.ndim == 0:
        h.update(_bytes(np.asarray(dset[()])))
        return h.hexdigest()
    rows = sampled_rows(dset.shape[0])
    if dtype.kind == "O" or dset.size == 0:  # variable-length values: by their text, row by row
        for r in rows:
            h.update(repr(np.asarray(dset[int(r)]).tolist()).encode())
        return h.hexdigest()
    if dset.chunks is not None and dset.id.get_create_plist().get_nfilters():
        _hash_stored_chunks(dset, rows, h.update)
        return h.hexdigest()
    values = dset[rows] if len(rows) > 1 else dset[int(rows[0]) : int(rows[0]) + 1]  # one read of them all
    for r, row in zip(rows, values):
        h.update(int(r).to_bytes(8, "little"))
        h.update(_bytes(row[None]))
    return h.hexdigest()


def _hash_stored_chunks(dset: h5py.Dataset, rows: np.ndarray, update) -> None:
    """The stored (still compressed) bytes of every chunk holding a sampled row.

    Measured on 300 000 × 119 complex64 gzip chunks of 2048 rows: 17 ms,
    against 250 ms to decompress the same 66 chunks and read the rows.
    """
    chunks = dset.chunks
    bands = sorted({int(r) // chunks[0] * chunks[0] for r in rows})
    others = [range(0, n, c) for n, c in zip(dset.shape[1:], chunks[1:])]
    for start in bands:
        for rest in itertools.product(*others):
            offset = (start, *rest)
            update(repr(offset).encode())
            try:
                mask, raw = dset.id.read_direct_chunk(offset)
            except RuntimeError:  # never written: the fill value
                update(b"unallocated")
                continue
            update(int(mask).to_bytes(4, "little") + len(raw).to_bytes(8, "little"))
            update(raw)


def _layout(dset: h5py.Dataset) -> str:
    """Layout class, chunk shape, filters (id, flags, parameters) and external files, as text."""
    plist = dset.id.get_create_plist()
    filters = [plist.get_filter(i)[:3] for i in range(plist.get_nfilters())]
    return repr((plist.get_layout(), dset.chunks, filters, plist.get_external_count(), dset.is_virtual))


def _bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).tobytes()
