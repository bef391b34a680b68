"""Writing a block's outputs into a zarr store from the task that computed them (docs/design.md, decision 5).

:class:`ZarrRegion` travels to the worker with each block task. It opens
the store's arrays once per process (:func:`_arrays`, keyed by each
array's metadata file, so a store made again at the same path is opened
anew), and it never writes into a store whose metadata is gone: a chunk
written then would recreate a store without metadata.
"""

from __future__ import annotations

import functools
import os
import stat

import numpy as np
import zarr

from ..core.outputs import Output
from ..errors import StoreConflictError
from .base import FAILED, ResultShape, boxes


class ZarrRegion:
    """Stores a block's outputs into the zarr store from the task that computed them (picklable).

    A block is whole chunks of the result (``ZarrSink.todo``); zarr's
    local store writes each chunk to a temporary file and renames it.
    """

    def __init__(self, path: str, shape: ResultShape, n_extra: int):
        self.path, self.shape, self.n_extra = path, shape, n_extra

    def __repr__(self) -> str:
        return f"ZarrRegion({self.path!r})"

    def __dask_tokenize__(self):
        return (type(self).__name__, self.path)

    def __call__(self, a: int, b: int, outs) -> None:
        shape = self.shape
        r0, r1 = a // self.n_extra, b // self.n_extra
        arrays = list(zip(shape.outputs, outs))
        if shape.status:  # outs: the outputs, then the failed flags and the errors
            arrays.append((Output(FAILED, (), np.uint8), outs[len(shape.outputs)]))
        stamps = [_metadata_stamp(self.path, o.name) for o, _ in arrays]
        gone = missing_metadata(self.path, []) or next((s for s in stamps if isinstance(s, str)), None)
        if gone:  # a chunk written now would recreate a store without metadata
            raise StoreConflictError(
                f"cannot store positions {a}:{b} in {self.path}: its {gone} is gone (the store was deleted, "
                "or changed, while lazyusid computed into it); nothing was written. Run the same call again."
            )
        for (o, values), arr in zip(arrays, _arrays(self.path, tuple(stamps))):
            values = np.asarray(values).reshape((r1 - r0, *shape.extra_shape, *o.shape))
            for index, i, j in boxes(r0, r1, shape.pos_shape):
                box = tuple(s.stop - s.start for s in index)
                arr[index] = values[i - r0 : j - r0].reshape(box + values.shape[1:])


def missing_metadata(path: str, arrays) -> str | None:
    """The first metadata document (``zarr.json``) of the store or of one of ``arrays`` that is missing."""
    for where in ("", *arrays):
        if not os.path.isfile(os.path.join(path, where, "zarr.json")):
            return _metadata_name(where)
    return None


def _metadata_name(where: str) -> str:
    return f"metadata {os.path.join(where, 'zarr.json')!r}"


def _metadata_stamp(path: str, name: str) -> tuple[str, int, int] | str:
    """``name`` with the inode and modification time of its ``zarr.json`` (a new store gives a new stamp),
    or what is missing when that file is not there (one ``stat``: the check and the stamp)."""
    try:
        st = os.stat(os.path.join(path, name, "zarr.json"))
    except OSError:  # gone, or its directory replaced by a file
        return _metadata_name(name)
    return (name, st.st_ino, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else _metadata_name(name)


@functools.lru_cache(maxsize=16)
def _arrays(path: str, stamps: tuple) -> list:
    """The arrays ``stamps`` name, opened once per process and store (each open reads its metadata)."""
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    return [group[name] for name, _, _ in stamps]
