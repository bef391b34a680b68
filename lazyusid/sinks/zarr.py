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
import itertools
import json
import math
import os
import shutil
from contextlib import contextmanager

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..core.function import MAX_ERRORS
from ..core.identity import to_json
from ..errors import ReadOnlyStoreError, StoreBusyError, StoreConflictError
from ..usid.write import bookkeeping_attrs
from .base import ERRORS, FAILED, MARKERS, Found, ResultShape, Sink, boxes, check_result_names, merge_errors
from .hdf5_file import alive
from .zarr_checks import check_names, check_skeleton, metadata_problems
from .zarr_region import ZarrRegion, missing_metadata

_NEW_SUFFIX = ".lazyusid-partial"


class ZarrSink(Sink):
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
        self._done = np.zeros(0, np.uint8)

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
        if self._problems():  # resumed (or rebuilt) by prepare, never returned as it is
            return [Found("/", 0, False)]
        done = int(attrs.get("last_pixel", 0))
        return [Found("/", done, done >= self.shape.n_rows)]

    def _problems(self) -> list[str]:
        return metadata_problems(zarr.open_group(self.path, mode="r", zarr_format=3), self.shape)

    def check(self, token: str, identity: dict, params: dict) -> None:
        """Refuse what cannot be stored here before anything is written: names, dtypes, permissions.

        The store's skeleton is first written into memory
        (:func:`~.zarr_checks.check_skeleton`).
        """
        check_result_names(self.shape, self.where)
        check_names(self.shape, self.where)
        self._check_writable()
        check_skeleton(lambda: self._skeleton(token, identity), self.where)

    def _check_writable(self) -> None:
        target = self.path if os.path.exists(self.path) else os.path.dirname(self.path) or "."
        if not os.access(target, os.W_OK):
            raise ReadOnlyStoreError(f"cannot write results into {self.path}: {target} is read-only")

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
        self._check_writable()
        self._fd = _lock(self.path) if os.path.exists(self.path) else None
        try:
            yield self
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def prepare(self, token: str, identity: dict, params: dict, *, resume: Found | None) -> np.ndarray:
        if not os.path.exists(self.path):
            self._create(token, identity)
            self._fd = _lock(self.path)
        elif self._problems():
            self._rebuild(token, identity, override=resume is None)
        for stale in glob.glob(os.path.join(glob.escape(self.path), "**", "*.partial"), recursive=True):
            os.remove(stale)  # a chunk a killed run was writing: its flag was never set
        self._group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        self._markers = self._group[MARKERS]
        if resume is None:  # override: compute everything again; clear the flags on disk before any block
            self._markers[...] = 0
            self._group.attrs["last_pixel"] = 0
        done = np.asarray(self._markers[...], dtype=np.uint8).reshape(-1)
        self._done = done
        return done.copy()

    def todo(self, done: np.ndarray) -> list[tuple[int, int]]:
        """Rows to compute: every chunk of the result that holds an unflagged row, whole.

        Blocks are exactly the result's chunks, so no two tasks ever write one chunk.
        """
        sizes = _chunk_rows(self.shape.pos_shape, self._markers.chunks)
        edges = np.concatenate(([0], np.cumsum(sizes)))
        return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a and not done[a:b].all()]

    def region_writer(self, n_extra: int) -> ZarrRegion:
        """What block tasks call to store their outputs themselves, where they run."""
        return ZarrRegion(self.path, self.shape, n_extra)

    def saved(self) -> int:
        """Rows flagged as computed."""
        return int(self._done.sum())

    def _rebuild(self, token: str, identity: dict, *, override: bool) -> None:
        """Replace a store of this computation whose metadata is not lazyusid's, if nothing in it is flagged.

        With ``override`` (compute everything again) it is replaced whatever
        it holds; otherwise a store with flagged rows, or flags that cannot be
        read, is refused: lazyusid does not delete finished work unasked.
        """
        problems = self._problems()
        flagged = _flagged(self.path, self.shape)
        if not override and flagged != 0:
            held = (
                "flags lazyusid cannot read"
                if flagged is None
                else f"{flagged} positions flagged as computed"
            )
            raise StoreConflictError(
                f"{self.path} holds this computation, but not as lazyusid writes it ({'; '.join(problems)}), "
                f"and {held}; lazyusid writes into it no more. Pass override=True to compute everything again "
                "into a rebuilt store, or delete the store (or choose another store path)."
            )
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        shutil.rmtree(self.path)
        self._create(token, identity)
        self._fd = _lock(self.path)

    def _skeleton(self, token: str, identity: dict) -> tuple[xr.Dataset, dict]:
        """The store as an xarray Dataset of lazy zeros, and its encoding: what :meth:`_create` writes."""
        shape = self.shape
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
        if shape.status:
            full = shape.pos_shape + shape.extra_shape
            data_vars[FAILED] = (
                shape.loop_dims,
                da.zeros(full, dtype=np.uint8, chunks=pos_chunks + shape.extra_shape),
            )
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
        if self.inputs:
            attrs["lazyusid_inputs"] = to_json(self.inputs)
        ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
        encoding = {o.name: {"fill_value": o.fill} for o in shape.outputs if o.dtype.names is None}
        encoding[MARKERS] = {"fill_value": 0}
        if shape.status:
            encoding[FAILED] = {"fill_value": 0}
        return ds, encoding

    def _create(self, token: str, identity: dict) -> None:
        for stale in glob.glob(glob.escape(self.path) + ".*" + _NEW_SUFFIX):
            pid = stale[len(self.path) + 1 : -len(_NEW_SUFFIX)]
            if pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = f"{self.path}.{os.getpid()}{_NEW_SUFFIX}"
        ds, encoding = self._skeleton(token, identity)
        try:
            ds.to_zarr(tmp, mode="w-", compute=False, zarr_format=3, consolidated=False, encoding=encoding)
            group = zarr.open_group(tmp, mode="r+", zarr_format=3)
            group.attrs["lazyusid_token"] = token  # last: a store is found only once it is whole
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.rename(tmp, self.path)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreBusyError(f"{self.path} was created by another process meanwhile; try again") from None

    def finished(self, r0: int, r1: int, outs=None) -> None:
        """Flag rows ``r0:r1``, whose values their task has written (data, then flags).

        Unless the store was deleted meanwhile: flags written then would
        recreate a store of flags and attributes without its arrays.
        """
        gone = missing_metadata(self.path, [MARKERS])
        if gone:
            raise StoreConflictError(
                f"{self.path} was deleted (its {gone} is gone) while lazyusid computed into it; nothing more is "
                "written into it. Run the same call again to compute into a new store."
            )
        flags = (
            np.ones(r1 - r0, np.uint8) if self.flag_only is None else self.flag_only[r0:r1].astype(np.uint8)
        )
        for index, i, j in boxes(r0, r1, self.shape.pos_shape):
            self._markers[index] = flags[i - r0 : j - r0].reshape(tuple(s.stop - s.start for s in index))
        if isinstance(outs, tuple) and len(outs) == 3 and outs[2]:  # (a, b, errors) of on_error="skip"
            errors = merge_errors(_errors(self._group.attrs), outs[2], MAX_ERRORS)
            self._group.attrs[ERRORS] = json.dumps(errors)  # index keys in dimension order
        self._done[r0:r1] |= flags
        rest = np.flatnonzero(self._done == 0)
        self._group.attrs["last_pixel"] = int(rest[0]) if rest.size else int(self._done.size)

    def commit(self) -> None:
        """Nothing to do: zarr blocks are flagged as they are written."""

    def result(self, name: str = "/") -> dict[str, xr.Variable]:
        ds = xr.open_zarr(self.path, consolidated=False, zarr_format=3)
        names = [o.name for o in self.shape.outputs] + ([FAILED] if self.shape.status else [])
        return {k: ds[k].variable for k in names}

    def errors(self, name: str = "/") -> list[dict]:
        """The first errors stored with ``on_error="skip"``, by position."""
        return _errors(zarr.open_group(self.path, mode="r", zarr_format=3).attrs)


def _errors(attrs) -> list[dict]:
    text = attrs.get(ERRORS)
    return json.loads(text) if text else []


def _flagged(path: str, shape: ResultShape) -> int | None:
    """Rows flagged in the store's ``completed_positions``, or None when they cannot be read as lazyusid's."""
    try:
        markers = zarr.open_group(path, mode="r", zarr_format=3)[MARKERS]
        flags = np.asarray(markers[...])
    except Exception:  # no metadata, or unreadable chunks: nothing known
        return None
    if flags.shape != shape.pos_shape or flags.dtype != np.uint8:
        return None
    return int(np.count_nonzero(flags))


def _chunk_rows(pos_shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[int]:
    """Rows of each chunk over the position dimensions, in flat (C) order.

    The chunks of :func:`_chunks` are whole trailing dimensions, a run along
    one dimension, and single steps before it: each is one run of rows.

    Examples
    --------
    >>> _chunk_rows((3, 4), (1, 3))
    [3, 1, 3, 1, 3, 1]
    """
    pos_shape, chunks = tuple(pos_shape), tuple(chunks)
    split = [d for d, (n, c) in enumerate(zip(pos_shape, chunks)) if c < n]
    if not split:
        return [math.prod(pos_shape)]
    j = split[-1]
    if any(c != 1 for c in chunks[:j]):
        raise StoreConflictError(
            f"the zarr store's chunks {chunks} over positions {pos_shape} are not runs of rows; lazyusid "
            "writes only stores it made. Choose another store path."
        )
    inner = math.prod(pos_shape[j + 1 :])
    along = [min(chunks[j], pos_shape[j] - s) * inner for s in range(0, pos_shape[j], chunks[j])]
    return along * math.prod(pos_shape[:j])


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
