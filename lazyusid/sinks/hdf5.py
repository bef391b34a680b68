"""Results in HDF5: a USID results group ``<Main>-<Tool>_NNN`` with checkpoint flags.

One writer (the process that runs the computation) holds the file open
``r+`` for the whole run, so HDF5's file lock keeps other writers out. Each
finished block's data is written at once; a checkpoint (at most every
:data:`CHECKPOINT_SECONDS`, and at the end) flushes, sets the flags and
``last_pixel`` of the blocks written since the last one, and flushes again
(docs/design.md, decision 6: data, flush, flags, flush). The skeleton
allocates all the space the run writes into, so no checkpoint moves the
file's end. A new file is built whole, skeleton included, under a temporary
name and linked into place; a new results group in an existing file is
built anonymous and linked once whole and flushed, so a kill never leaves a
group that lazyusid or pyUSID would take for a partial result.

Opening the file (locks, a full disk, stale temporary files) is
:mod:`lazyusid.sinks.hdf5_file`; the results group's skeleton, and the
checks that run before anything is written, :mod:`lazyusid.sinks.hdf5_group`.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import ExitStack, contextmanager, suppress

import dask
import h5py
import numpy as np
import xarray as xr

from ..core.function import MAX_ERRORS
from ..errors import DiskFullError, LazyUSIDError, StoreConflictError
from .base import (
    ERRORS,
    FAILED,
    MARKERS,
    Found,
    ResultShape,
    Sink,
    check_result_names,
    flagged_prefix,
    merge_errors,
    merged_ranges,
    todo_ranges,
)
from .hdf5_file import (
    NEW_FILE_SUFFIX,
    add_group,
    alive,
    check_writable,
    create_file,
    is_disk_full,
    opened,
    refuse_non_group,
    remove_stale_new_files,
)
from .hdf5_group import (
    BUILDING,
    RESERVED_ATTRS,
    build_group,
    check_group,
    errors_text,
    refuse_unplain,
    skeleton_problems,
)
from .hdf5_read import read_result, stored_errors

#: seconds between checkpoints: blocks written meanwhile are flagged together (each costs two
#: flushes); dask config ``lazyusid.checkpoint-interval`` (env ``DASK_LAZYUSID__CHECKPOINT_INTERVAL``),
#: 0 for a checkpoint after every block
CHECKPOINT_SECONDS = 1.0
# the names other modules (and tests) import from here
_BUILDING, _opened, _alive, _NEW_FILE_SUFFIX = BUILDING, opened, alive, NEW_FILE_SUFFIX
__all__ = ["CHECKPOINT_SECONDS", "RESERVED_ATTRS", "HDF5Sink", "results_prefix"]


def results_prefix(base: str, tool: str) -> str:
    return f"{base}-{tool}_"


class HDF5Sink(Sink):
    """Results groups in an HDF5 file.

    Parameters
    ----------
    path : str
        The HDF5 file (created if missing).
    group : str
        HDF5 path of the group holding results groups.
    base : str
        Name of the source main dataset (the ``<Main>`` of group names).
    tool : str
    shape : ResultShape
    source_file, source_dataset : str or None
        The source main dataset, when the data came from a USID file.
    reuse_positions : bool
        Whether the result's positions are exactly the source's (then its
        position ancillary datasets are reused, or copied from another file).
    """

    kind = "hdf5"

    def __init__(
        self, path, group, *, base, tool, shape: ResultShape, source_file, source_dataset, reuse_positions
    ):
        self.path = os.path.abspath(os.fspath(path))
        self.group = "/" + group.strip("/") if group else "/"
        self.base = base
        self.tool = tool
        self.shape = shape
        self.source_file = source_file
        self.source_dataset = source_dataset
        self.reuse_positions = reuse_positions
        self.in_file = source_file is not None and os.path.abspath(source_file) == self.path
        self._file: h5py.File | None = None
        self._stack: ExitStack | None = None  # what :meth:`writing` closes at its end
        self._group: h5py.Group | None = None
        self._done: np.ndarray | None = None
        self._prefix = 0
        self._pending: list[tuple[int, int]] = []

    def __repr__(self) -> str:
        return f"HDF5Sink({self.path!r}, group={self.group!r})"

    @property
    def where(self) -> str:
        return f"{self.path}:{self.group.rstrip('/')}/"

    def check(self, token: str, identity: dict, params: dict) -> None:
        """Refuse what cannot be stored here before anything is written (:func:`~.hdf5_group.check_group`).

        Also refuses a read-only target and a ``group=`` that is not a group
        of the file, so that a refusal never leaves a new file behind.
        """
        check_result_names(self.shape, self.where)
        check_writable(self.path, self.in_file)
        with ExitStack() as stack:
            f = stack.enter_context(opened(self.path, "r")) if os.path.exists(self.path) else None
            if f is not None:
                refuse_non_group(f, self.group)
            src = None
            if self.source_file is not None and self.reuse_positions:
                src = f if self.in_file else stack.enter_context(opened(self.source_file, "r"))
            check_group(
                self.where,
                self.group,
                shape=self.shape,
                tool=self.tool,
                token=token,
                identity=identity,
                params=params,
                source=None if self.source_file is None else (self.source_file, self.source_dataset),
                positions=None if src is None else src[self.source_dataset],
            )

    # -- finding ---------------------------------------------------------------------------------

    def find(self, token: str, name: str | None = None) -> list[Found]:
        """Results groups of this tool holding ``token`` (``name`` only, if given), newest last."""
        if self._file is not None:  # while writing: the file this sink holds open
            return self._find(self._file, token, name)
        if not os.path.exists(self.path):
            if name is not None:
                raise FileNotFoundError(f"{self.path} does not exist, so it holds no results group {name!r}")
            return []
        with opened(self.path, "r") as f:
            return self._find(f, token, name)

    def _find(self, f: h5py.File, token: str, name: str | None) -> list[Found]:
        refuse_non_group(f, self.group)
        parent = f.get(self.group)
        if name is not None:
            grp = parent.get(name) if isinstance(parent, h5py.Group) else None
            if not isinstance(grp, h5py.Group):
                raise KeyError(f"no results group {name!r} in {self.where}")
            if _text(grp.attrs.get("lazyusid_token")) != token:
                raise StoreConflictError(
                    f"results group {grp.name!r} in {self.path} holds a different computation "
                    f"(tool {_text(grp.attrs.get('tool'))!r}, token {_text(grp.attrs.get('lazyusid_token'))!r}); "
                    "it cannot be resumed with this function, these parameters and this source"
                )
            refuse_unplain(parent, name, self.shape, self.path)
            return [self._found(grp)]
        if not isinstance(parent, h5py.Group):
            return []
        prefix = results_prefix(self.base, self.tool)
        found = []
        numbered = (k for k in parent if re.fullmatch(re.escape(prefix) + r"\d+", k))
        for key in sorted(numbered, key=lambda k: int(k[len(prefix) :])):  # _1000 after _999
            grp = parent.get(key)
            if isinstance(grp, h5py.Group) and _text(grp.attrs.get("lazyusid_token")) == token:
                refuse_unplain(parent, key, self.shape, self.path)
                found.append(self._found(grp))
        return found

    def _found(self, grp: h5py.Group) -> Found:
        done = int(grp.attrs.get("last_pixel", 0))
        return Found(grp.name.rsplit("/", 1)[-1], done, done >= self.shape.n_rows)

    # -- writing ---------------------------------------------------------------------------------

    @contextmanager
    def writing(self):
        """Hold the file open for writing (and so locked) while the block runs.

        A file that does not exist yet is opened by :meth:`prepare`, once it
        has been built whole, skeleton included, under a temporary name and
        linked into place (:func:`~.hdf5_file.create_file`).
        """
        check_writable(self.path, self.in_file)
        remove_stale_new_files(self.path)
        with ExitStack() as stack:
            self._stack = stack
            if os.path.exists(self.path):
                self._file = stack.enter_context(opened(self.path, "r+", unbuffered=True))
            try:
                yield self
            finally:  # no h5py object of the file outlives it
                self._file = self._group = self._markers = self._stack = None
                self._dsets = []

    def prepare(self, token: str, identity: dict, params: dict, *, resume: Found | None) -> np.ndarray:
        """Open the group to resume, or create a new one; return the per-row flags."""
        try:
            return self._prepare(token, identity, params, resume=resume)
        except (OSError, RuntimeError, ValueError) as exc:
            if isinstance(exc, LazyUSIDError) or not is_disk_full(exc):
                raise
            need = sum(
                self.shape.n_rows * self.shape.columns(o) * o.dtype.itemsize for o in self.shape.outputs
            )
            raise DiskFullError(
                f"No space left on device while writing {self.where}: preparing its results group (its "
                f"datasets take {need / 2**20:.1f} MiB), before computing anything; free space and run again"
            ) from exc

    def _prepare(self, token: str, identity: dict, params: dict, *, resume: Found | None) -> np.ndarray:
        if self._file is None:  # a new file
            built = []
            create_file(self.path, lambda f: built.append(self._create_group(f, token, identity, params)))
            self._file = self._stack.enter_context(opened(self.path, "r+", unbuffered=True))
            if built and built[0] in self._file[self.group]:  # else another process made the file first
                return self._attach(self._file[self.group][built[0]])
        f = self._file
        if resume is not None:
            grp = f[self.group][resume.name]
            problems = skeleton_problems(grp, self.shape)
            if not problems:
                return self._attach(grp)
            if MARKERS in grp and np.any(grp[MARKERS][()]):
                raise StoreConflictError(
                    f"results group {grp.name!r} in {self.path} is damaged ({'; '.join(problems)}) but holds "
                    "finished positions; lazyusid will not remove it. Pass override=True to compute into a new "
                    "group, or delete it."
                )
            del f[self.group][resume.name]  # a skeleton left by a killed run, with nothing finished
            f.flush()
        return self._attach(f[self.group][self._create_group(f, token, identity, params)])

    def _create_group(self, f: h5py.File, token, identity, params) -> str:
        """Build a new results group in ``f`` and link it into place (:func:`~.hdf5_file.add_group`)."""
        parent = f.require_group(self.group)
        if BUILDING in parent:  # left by an older version killed while building; we hold the lock now
            del parent[BUILDING]
        prefix = results_prefix(self.base, self.tool)
        taken = [int(m.group(1)) for k in parent if (m := re.fullmatch(re.escape(prefix) + r"(\d+)", k))]
        name = f"{prefix}{max(taken, default=-1) + 1:03d}"
        source = None if self.source_file is None else (self.source_file, self.source_dataset)
        with ExitStack() as stack:
            src = None
            if self.source_file is not None and self.reuse_positions:
                src = f if self.in_file else stack.enter_context(h5py.File(self.source_file, "r"))
            add_group(
                parent,
                name,
                lambda grp: build_group(
                    grp,
                    shape=self.shape,
                    tool=self.tool,
                    token=token,
                    identity=identity,
                    params=params,
                    positions=src[self.source_dataset] if src is not None else None,
                    source=source,
                    source_ref=f[self.source_dataset].ref if self.in_file else None,
                    inputs=self.inputs,
                ),
            )
        return name

    def _attach(self, grp: h5py.Group) -> np.ndarray:
        self._group = grp
        self._dsets = [grp[o.name] for o in self.shape.outputs]
        self._markers = grp[MARKERS]
        self._failed = grp[FAILED] if self.shape.status else None
        self._errors = stored_errors(grp)
        self._new_errors: list[dict] = []
        self._done = np.asarray(self._markers[()], dtype=np.uint8)
        self._prefix = flagged_prefix(self._done, 0)
        self._pending: list[tuple[int, int]] = []
        self._last_commit = time.monotonic()
        self._interval = float(dask.config.get("lazyusid.checkpoint-interval", CHECKPOINT_SECONDS))
        self.name = grp.name.rsplit("/", 1)[-1]
        return self._done.copy()

    def todo(self, done: np.ndarray) -> list[tuple[int, int]]:
        """Runs of unflagged rows, in blocks of the plan's size."""
        return todo_ranges(done, self.shape.rows_per_block)

    def saved(self) -> int:
        """Rows flagged as computed."""
        return int(self._done.sum()) if self._done is not None else 0

    def finished(self, r0: int, r1: int, outs) -> None:
        """Store a finished block's outputs (see :meth:`write`)."""
        self.write(r0, r1, outs)

    def write(self, r0: int, r1: int, outs) -> None:
        """Store one block of rows; it is flagged by the next checkpoint (:meth:`commit`).

        A checkpoint runs once ``lazyusid.checkpoint-interval`` seconds (dask
        config, default :data:`CHECKPOINT_SECONDS`) have passed since the last
        one, and when the run ends: its two flushes then cost little even when
        blocks finish every few milliseconds, and a kill loses at most that
        much finished work. Blocks slower than the interval are each flagged
        as soon as they are written.
        """
        try:
            for dset, arr in zip(self._dsets, outs):
                dset[r0:r1] = np.asarray(arr).reshape(r1 - r0, -1)
            if self._failed is not None:  # outs: the outputs, then failed flags and errors
                self._failed[r0:r1] = np.asarray(outs[-2]).reshape(r1 - r0, -1)
                self._new_errors.extend(outs[-1])
        except (OSError, RuntimeError) as exc:
            if not is_disk_full(exc):
                raise
            with suppress(DiskFullError):
                self.commit()  # flag the blocks written before this one, if the disk still lets us
            raise self._disk_full(r0, r1) from exc
        self._pending.append((r0, r1))
        if time.monotonic() - self._last_commit >= self._interval:
            self.commit()

    def commit(self) -> None:
        """Checkpoint: flush the data written since the last one, then set their flags and flush again."""
        if self._file is None or not self._pending:
            return
        merged = merged_ranges(self._pending)
        done = self._done.copy()
        try:
            self._file.flush()
            if self._new_errors:  # with the flags: a kill before them computes (and records) the rows again
                self._errors = merge_errors(self._errors, self._new_errors, MAX_ERRORS)
                self._group.attrs.modify(ERRORS, errors_text(self._errors))  # in place: a fixed size
                self._new_errors = []
            for r0, r1 in merged:
                self._markers[r0:r1] = 1
                done[r0:r1] = 1
            prefix = flagged_prefix(done, self._prefix)
            self._group.attrs.modify("last_pixel", prefix)
            self._file.flush()
        except (OSError, RuntimeError) as exc:
            if not is_disk_full(exc):
                raise
            self._pending.clear()  # not flagged: their rows are computed again by the next run
            raise self._disk_full(merged[0][0], merged[-1][1]) from exc
        self._done, self._prefix = done, prefix
        self._pending.clear()
        self._last_commit = time.monotonic()

    def _disk_full(self, r0: int, r1: int) -> DiskFullError:
        self._pending.clear()
        saved = int(np.count_nonzero(self._done))
        return DiskFullError(
            f"No space left on device while writing {self.where}{self.name} at positions {r0}:{r1}; "
            f"{saved} positions are saved; free space and run again to resume"
        )

    # -- reading ---------------------------------------------------------------------------------

    def result(self, name: str) -> dict[str, xr.Variable]:
        """The outputs of results group ``name``, lazily (each read opens the file read-only)."""
        return read_result(self.path, f"{self.group.rstrip('/')}/{name}", self.shape)

    def errors(self, name: str) -> list[dict]:
        """The first errors of results group ``name`` stored with ``on_error="skip"``, by position."""
        with opened(self.path, "r") as f:
            return stored_errors(f[f"{self.group.rstrip('/')}/{name}"])


def _text(value):
    return value.decode() if isinstance(value, bytes) else value
