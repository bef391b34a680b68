"""The HDF5 target as a file: opening it with clear errors, locks, a full disk, stale temporary files.

Everything here is about the file, not the results groups in it
(:mod:`lazyusid.sinks.hdf5_group` builds those, :mod:`lazyusid.sinks.hdf5`
writes them): what :class:`~lazyusid.sinks.hdf5.HDF5Sink` checks before it
opens a target for writing, and how it opens and closes it.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Callable
from contextlib import contextmanager, suppress

import h5py
import numpy as np

from ..errors import DiskFullError, ReadOnlyStoreError, StoreBusyError, StoreConflictError
from ..run.pool import wait_for_starting
from ..usid.files import raise_if_locked
from ..usid.write import bookkeeping_attrs

#: suffix of a new target file while it is built, before it is linked into place
NEW_FILE_SUFFIX = ".lazyusid-partial"
#: metadata space held for linking a new group (:func:`add_group`); compact attributes stay under 64 KiB
SPARE_BYTES = 60 * 1024


def refuse_non_group(f: h5py.File, group: str) -> None:
    """Raise :class:`StoreConflictError` unless each existing part of ``group`` is a group of this file.

    Checked while the file is open read-only: a dataset on the way would
    only fail deep in h5py, and an external (or broken) link would put the
    results into another file, or nowhere.
    """
    path = ""
    for part in group.strip("/").split("/") if group.strip("/") else ():
        path += "/" + part
        link = f.get(path, getlink=True)
        if link is None:
            return  # created when results are written
        if isinstance(link, h5py.ExternalLink):
            what = f"an external link (to {link.path!r} in {link.filename!r})"
        else:
            obj = f.get(path)
            kind = "a broken link" if obj is None else f"a {type(obj).__name__.lower()}"  # a dataset, ...
            what = None if isinstance(obj, h5py.Group) else kind
        if what is not None:
            raise StoreConflictError(
                f"cannot store results under group={group!r} in {f.filename}: {path!r} is {what}, not a group "
                "of this file. Choose another group= (a new or existing group) or another store."
            )


def remove_stale_new_files(path: str) -> None:
    """Remove the temporary files of new targets whose creating process is dead.

    A run killed before it linked its new file into place leaves the only
    copy; one killed between linking and removing leaves a second name of
    the target itself. Either way nothing else refers to it.
    """
    for stale in glob.glob(glob.escape(path) + ".*" + NEW_FILE_SUFFIX):
        pid = stale[len(path) + 1 : -len(NEW_FILE_SUFFIX)]
        if pid.isdigit() and not alive(int(pid)):
            with suppress(FileNotFoundError):  # another process removed it first
                os.remove(stale)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(path: str, in_file: bool) -> None:
    target = path if os.path.exists(path) else os.path.dirname(path) or "."
    if not os.access(target, os.W_OK):
        hint = (
            "results go into the source file by default; pass store='results.h5' (another HDF5 file) "
            "or store='results.zarr'"
            if in_file
            else "choose a writable location for store="
        )
        raise ReadOnlyStoreError(f"cannot write results into {path}: it is read-only. {hint}")


def is_disk_full(exc: BaseException) -> bool:
    """Whether an h5py error is the file system's ENOSPC (h5py raises OSError or RuntimeError for it)."""
    text = str(exc)
    return (
        getattr(exc, "errno", None) == errno.ENOSPC
        or "errno = 28," in text
        or "No space left on device" in text
    )


def unbuffered_file(path: str, *, create: bool = False) -> h5py.File:
    """``h5py.File(path, "r+")`` (``"x"`` to ``create``) holding no raw data back: no chunk cache, no sieve buffer.

    Every write of values then reaches the file system during the write
    call, so a full disk fails that write (an error lazyusid translates),
    never a later flush or close with dirty chunks that HDF5 can neither
    write nor drop: measured with h5py on a full tmpfs, that leaves
    ``Can't decrement id ref count`` and a segfault when the interpreter
    exits, whatever the order of closing. Blocks are written whole, a
    chunk or more at a time, so the cache saved nothing.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)  # as h5py.File does
    mdc, slots, _, w0 = fapl.get_cache()
    fapl.set_cache(mdc, slots, 0, w0)
    fapl.set_sieve_buf_size(0)
    if create:
        return h5py.File(h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_EXCL, fapl=fapl))
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl=fapl))


def add_group(parent: h5py.Group, name: str, build: Callable[[h5py.Group], object]) -> None:
    """``build(grp)`` a new group and link it as ``parent[name]``, both flushed, so that a kill anywhere harms least.

    A kill may land between any two writes of HDF5's flush, which writes
    the changed metadata in address order and the superblock (the file's
    end) last (docs/design.md, decision 6). So the group is built anonymous,
    unreachable until linked, and flushed: a kill then leaves unreachable
    bytes only. The link is made after, from a :func:`spare_metadata` block
    held since before the build, so that it moves the file's end neither up
    (metadata past the end) nor down (a truncation before the superblock).
    What remains (tests/test_kill_writes.py): a kill inside the link's
    flush, between HDF5's in-place writes of ``parent``'s heap and
    symbol-table node (a few microseconds, once per new group).
    """
    f = parent.file
    spare = spare_metadata(f)  # before the group, so that freeing it does not shorten the file
    grp = h5py.Group(h5py.h5g.create(f.id, None))
    build(grp)
    f.flush()
    spare.id.close()  # its space goes to the link
    parent[name] = grp
    f.flush()


def spare_metadata(f: h5py.File, nbytes: int = SPARE_BYTES) -> h5py.Group:
    """An anonymous group holding ``nbytes`` of file space for metadata (a compact attribute in its header).

    Never linked, it is deleted when closed: its space goes back to HDF5's
    free list for metadata, where the next metadata (a link's heap and
    symbol-table nodes) is allocated first, below the file's end on disk.
    """
    spare = h5py.Group(h5py.h5g.create(f.id, None))
    spare.attrs.create("spare", np.zeros(nbytes, np.uint8))
    return spare


def create_file(path: str, build: Callable[[h5py.File], object]) -> bool:
    """Create the HDF5 file ``path`` whole: ``build(f)`` it under a temporary name, then link it into place.

    A kill leaves either no file or the whole one (a new file killed before
    its first flush is unreadable; docs/design.md, decision 6). Returns
    False, and leaves ``path`` as it is, when another process created it
    meanwhile; the temporary file is removed either way.
    """
    tmp = f"{path}.{os.getpid()}{NEW_FILE_SUFFIX}"
    try:
        with opened(tmp, "x", unbuffered=True) as f:
            f.attrs.update(bookkeeping_attrs())
            build(f)
        try:
            os.link(tmp, path)  # atomic, and never replaces a file another process just made
        except FileExistsError:
            return False
        return True
    finally:
        with suppress(FileNotFoundError):
            os.remove(tmp)


@contextmanager
def opened(path: str, mode: str, *, unbuffered: bool = False):
    """``h5py.File`` with errors that say what is wrong with the target and what to do.

    ``unbuffered`` (mode ``r+`` or ``x`` only): see :func:`unbuffered_file`. After an
    error the file is closed quietly: what closing it fails on (a full
    disk) must not hide the error that stopped the work.
    """
    try:
        try:
            f = unbuffered_file(path, create=mode == "x") if unbuffered else h5py.File(path, mode)
        except OSError:
            if not wait_for_starting():  # a worker being spawned held a copy of a handle, and its lock
                raise
            f = unbuffered_file(path, create=mode == "x") if unbuffered else h5py.File(path, mode)
    except OSError as exc:
        text = str(exc)
        raise_if_locked(
            exc,
            f"{path} is open in another process (HDF5 file lock): another computation may be writing "
            "results into it, or a program holds it open. Wait for it to finish, or choose another store.",
        )
        if "already open for read-only" in text:
            raise StoreBusyError(
                f"{path} is open read-only in this process (an h5py.File you opened?); close it before "
                "lazyusid writes results into it."
            ) from exc
        if isinstance(exc, PermissionError) or "Permission denied" in text:
            raise ReadOnlyStoreError(f"cannot open {path} for writing: permission denied") from exc
        if not h5py.is_hdf5(path):
            raise StoreConflictError(
                f"{path} exists and is not an HDF5 file; lazyusid will not overwrite it. Choose another store."
            ) from exc
        raise
    try:
        yield f
    except BaseException:
        with suppress(OSError, RuntimeError):
            f.close()
        raise
    try:
        f.close()
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFullError(
            f"No space left on device while closing {path}; the positions flagged in it are saved; "
            "free space and run again to resume"
        ) from exc
