"""Results in a zarr v3 store: one computation per store, readable with ``xr.open_zarr``.

The store holds one array per output with the result's dimensions, the
loop coordinates, ``completed_positions`` over the position dimensions,
and the identity in the root attributes. The skeleton is written by xarray
(``to_zarr(compute=False)``) into a temporary directory that is renamed into
place, so a kill never leaves a half-made store. Blocks are written by the
computing process: data, then flags. zarr's local store writes each chunk
to a temporary file and renames it, so a chunk is either old or new; a kill
can leave those temporary files (``*.partial``), removed on resume. A lock
on the store directory (``flock``, released by the kernel when the process
dies) keeps a second writer out.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
from contextlib import contextmanager

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..errors import ReadOnlyStoreError, StoreBusyError, StoreConflictError
from ..identity import to_json
from ..write import bookkeeping_attrs
from .base import MARKERS, ResultShape, boxes
from .hdf5 import Found, _alive

_NEW_SUFFIX = ".lazyusid-partial"


class ZarrSink:
    """A zarr v3 store (a directory) holding one computation's results."""

    kind = "zarr"

    def __init__(self, path, *, tool: str, shape: ResultShape, source_file, source_dataset):
        self.path = os.path.abspath(os.fspath(path))
        self.tool = tool
        self.shape = shape
        self.source_file = source_file
        self.source_dataset = source_dataset
        self.name = "/"
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"ZarrSink({self.path!r})"

    @property
    def where(self) -> str:
        return self.path

    def find(self, token: str, name: str | None = None) -> list[Found]:
        if not os.path.exists(self.path):
            return []
        attrs = self._attrs()
        if attrs.get("lazyusid_token") != token:
            what = (
                f"results of a different computation (tool {attrs.get('tool')!r}, token "
                f"{attrs.get('lazyusid_token')!r})"
                if "lazyusid_token" in attrs
                else "something that is not a lazyusid result"
            )
            raise StoreConflictError(
                f"{self.path} holds {what}; lazyusid never overwrites it. Choose another store path, "
                "or delete it yourself."
            )
        done = int(attrs.get("last_pixel", 0))
        return [Found("/", done, done >= self.shape.n_rows)]

    def _attrs(self) -> dict:
        try:
            return dict(zarr.open_group(self.path, mode="r", zarr_format=3).attrs)
        except Exception as exc:
            raise StoreConflictError(
                f"{self.path} exists and is not a zarr v3 group ({type(exc).__name__}: {exc}); lazyusid "
                "never overwrites it. Choose another store path."
            ) from exc

    @contextmanager
    def writing(self):
        """Create the store if needed and hold its lock while the block runs."""
        target = self.path if os.path.exists(self.path) else os.path.dirname(self.path) or "."
        if not os.access(target, os.W_OK):
            raise ReadOnlyStoreError(f"cannot write results into {self.path}: {target} is read-only")
        self._fd = _lock(self.path) if os.path.exists(self.path) else None
        try:
            yield self
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def prepare(self, token: str, identity: dict, params: dict, *, resume: Found | None) -> np.ndarray:
        if resume is None and not os.path.exists(self.path):
            self._create(token, identity)
            self._fd = _lock(self.path)
        for stale in glob.glob(os.path.join(glob.escape(self.path), "**", "*.partial"), recursive=True):
            os.remove(stale)  # a chunk a killed run was writing: its flag was never set
        self._group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        self._arrays = [self._group[o.name] for o in self.shape.outputs]
        self._markers = self._group[MARKERS]
        done = np.asarray(self._markers[...], dtype=np.uint8).reshape(-1)
        if resume is None:  # override: compute everything again into the same arrays
            done[:] = 0
        self._done = done
        return done.copy()

    def _create(self, token: str, identity: dict) -> None:
        shape = self.shape
        for stale in glob.glob(glob.escape(self.path) + ".*" + _NEW_SUFFIX):
            pid = stale[len(self.path) + 1 : -len(_NEW_SUFFIX)]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = f"{self.path}.{os.getpid()}{_NEW_SUFFIX}"
        pos_chunks = _chunks(shape.pos_shape, shape.rows_per_block)
        data_vars = {}
        for o in shape.outputs:
            full = shape.pos_shape + shape.extra_shape + o.shape
            chunks = pos_chunks + shape.extra_shape + o.shape
            data_vars[o.name] = (
                shape.loop_dims + o.dims,
                da.zeros(full, dtype=o.dtype, chunks=chunks),
                {"units": o.units},
            )
        data_vars[MARKERS] = (shape.pos_dims, da.zeros(shape.pos_shape, dtype=np.uint8, chunks=pos_chunks))
        coords = {k: v for k, v in shape.coords.items()}
        attrs = {
            "tool": self.tool,
            **bookkeeping_attrs(),
            "lazyusid_identity": to_json(identity),
            "lazyusid_format_version": identity["format_version"],
            "last_pixel": 0,
        }
        if self.source_file is not None:
            attrs.update(source_file_path=self.source_file, source_dataset_path=self.source_dataset)
        ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
        encoding = {o.name: {"fill_value": np.nan} for o in shape.outputs if o.dtype.kind in "fc"}
        encoding[MARKERS] = {"fill_value": 0}
        ds.to_zarr(tmp, mode="w-", compute=False, zarr_format=3, consolidated=False, encoding=encoding)
        group = zarr.open_group(tmp, mode="r+", zarr_format=3)
        group.attrs["lazyusid_token"] = token  # last: a store is found only once it is whole
        try:
            os.rename(tmp, self.path)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreBusyError(f"{self.path} was created by another process meanwhile; try again") from None

    def write(self, r0: int, r1: int, outs) -> None:
        """Checkpoint one block of rows: data, then flags (each chunk is written atomically)."""
        shape = self.shape
        for arr, o, values in zip(self._arrays, shape.outputs, outs):
            values = np.asarray(values).reshape((r1 - r0, *shape.extra_shape, *o.shape))
            for index, a, b in boxes(r0, r1, shape.pos_shape):
                box = tuple(s.stop - s.start for s in index)
                arr[index] = values[a - r0 : b - r0].reshape(box + values.shape[1:])
        for index, _, _ in boxes(r0, r1, shape.pos_shape):
            self._markers[index] = np.ones(tuple(s.stop - s.start for s in index), np.uint8)
        self._done[r0:r1] = 1
        rest = np.flatnonzero(self._done == 0)
        self._group.attrs["last_pixel"] = int(rest[0]) if rest.size else int(self._done.size)

    def commit(self) -> None:
        """Nothing to do: zarr blocks are flagged as they are written."""

    def result(self, name: str = "/") -> dict[str, xr.Variable]:
        ds = xr.open_zarr(self.path, consolidated=False, zarr_format=3)
        return {o.name: ds[o.name].variable for o in self.shape.outputs}


def _chunks(pos_shape: tuple[int, ...], rows: int) -> tuple[int, ...]:
    """Chunk shape over the position dimensions holding about ``rows`` rows, whole trailing dims first."""
    chunks = []
    remaining = max(1, rows)
    for n in reversed(pos_shape):
        take = min(n, remaining)
        chunks.append(take)
        remaining = max(1, remaining // max(1, take)) if take == n else 1
    return tuple(reversed(chunks))


def _lock(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreBusyError(
            f"{path} is being written by another process (its lock is held); wait for it to finish, "
            "or choose another store."
        ) from None
    return fd
