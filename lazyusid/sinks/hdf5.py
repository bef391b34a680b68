"""Results in HDF5: a USID results group ``<Main>-<Tool>_NNN`` with checkpoint flags.

One writer (the process that runs the computation) holds the file open
``r+`` for the whole run, so HDF5's file lock keeps other writers out. Each
finished block's data is written at once; a checkpoint (at most every
:data:`CHECKPOINT_SECONDS`, and at the end) flushes, sets the flags and
``last_pixel`` of the blocks written since the last one, and flushes again
(DESIGN.md, decision 6: data, flush, flags, flush). A new file is built under a temporary name and
linked into place only once its skeleton is flushed, so a kill never leaves
an unreadable target; a new results group likewise is built as
``_lazyusid_building`` and moved to its name once whole, so a kill never
leaves a group that lazyusid or pyUSID would take for a partial result.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import time
from contextlib import contextmanager, suppress

import dask
import h5py
import numpy as np
import xarray as xr

from ..dimension import Dimension
from ..errors import DiskFullError, LazyUSIDError, ReadOnlyStoreError, StoreBusyError, StoreConflictError
from ..files import raise_if_locked, unplain_storage
from ..function import Output
from ..identity import to_json
from ..open import H5Source, lazy_reads
from ..write import bookkeeping_attrs, write_main
from .base import MARKERS, Found, ResultShape, Sink, todo_ranges

#: attributes lazyusid writes on a results group (parameters never overwrite them)
RESERVED_ATTRS = {
    "tool",
    "num_source_dsets",
    "source_000",
    "source_file_path",
    "source_dataset_path",
    "last_pixel",
    "lazyusid_token",
    "lazyusid_identity",
    "lazyusid_format_version",
    *bookkeeping_attrs(),
}
#: seconds between checkpoints: blocks written meanwhile are flagged together (each costs two
#: flushes); dask config ``lazyusid.checkpoint-interval`` (env ``DASK_LAZYUSID__CHECKPOINT_INTERVAL``),
#: 0 for a checkpoint after every block
CHECKPOINT_SECONDS = 1.0
#: largest chunk of a result dataset
_CHUNK_BYTES = 4 * 2**20
_NEW_FILE_SUFFIX = ".lazyusid-partial"
#: a results group while it is built; moved to its ``<Main>-<Tool>_NNN`` name only once whole
_BUILDING = "_lazyusid_building"


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
        self._group: h5py.Group | None = None
        self._done: np.ndarray | None = None
        self._prefix = 0
        self._pending: list[tuple[int, int]] = []

    def __repr__(self) -> str:
        return f"HDF5Sink({self.path!r}, group={self.group!r})"

    @property
    def where(self) -> str:
        return f"{self.path}:{self.group.rstrip('/')}/"

    # -- finding ---------------------------------------------------------------------------------

    def find(self, token: str, name: str | None = None) -> list[Found]:
        """Results groups of this tool holding ``token`` (``name`` only, if given), newest last."""
        if not os.path.exists(self.path):
            if name is not None:
                raise FileNotFoundError(f"{self.path} does not exist, so it holds no results group {name!r}")
            return []
        with _opened(self.path, "r") as f:
            return self._find(f, token, name)

    def _find(self, f: h5py.File, token: str, name: str | None) -> list[Found]:
        _refuse_non_group(f, self.group)
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
            self._refuse_unplain(parent, name)
            return [self._found(grp)]
        if not isinstance(parent, h5py.Group):
            return []
        prefix = results_prefix(self.base, self.tool)
        found = []
        numbered = (k for k in parent if re.fullmatch(re.escape(prefix) + r"\d+", k))
        for key in sorted(numbered, key=lambda k: int(k[len(prefix) :])):  # _1000 after _999
            grp = parent.get(key)
            if isinstance(grp, h5py.Group) and _text(grp.attrs.get("lazyusid_token")) == token:
                self._refuse_unplain(parent, key)
                found.append(self._found(grp))
        return found

    def _refuse_unplain(self, parent: h5py.Group, name: str) -> None:
        """Raise :class:`StoreConflictError` unless every dataset lazyusid would write in group ``name`` is plain.

        The file may have been written by anyone, and a token holds no secret:
        a planted group whose outputs or flags store their bytes elsewhere
        (external storage, a virtual dataset, a link) would make a resume
        write into another file or dataset (DESIGN.md, decision 8).
        """
        where = f"{parent.name.rstrip('/')}/{name}"
        why = None
        link = parent.get(name, getlink=True)
        grp = parent.get(name)
        if not isinstance(link, h5py.HardLink):
            why = (
                f"results group {where!r} in {self.path} is a {type(link).__name__}, not a group of the file"
            )
        elif os.path.realpath(grp.file.filename) != os.path.realpath(self.path):
            why = f"results group {where!r} lies in another file, {grp.file.filename!r}"
        else:
            for key in (*(o.name for o in self.shape.outputs), MARKERS):
                problem = unplain_storage(grp, key)
                if problem is not None:
                    why = f"dataset '{where}/{key}' in {self.path} {problem}: it is not stored plainly in the file"
                    break
        if why is not None:
            raise StoreConflictError(
                f"{why}. lazyusid writes results only into contiguous or chunked datasets inside the target "
                "file, so it will neither resume nor return this results group (lazyusid never writes such "
                f"a group: the file was changed by something else). Delete the group {where!r} from the file, "
                "or choose another store."
            )

    def _found(self, grp: h5py.Group) -> Found:
        done = int(grp.attrs.get("last_pixel", 0))
        return Found(grp.name.rsplit("/", 1)[-1], done, done >= self.shape.n_rows)

    # -- writing ---------------------------------------------------------------------------------

    @contextmanager
    def writing(self):
        """Hold the file open for writing (and so locked) while the block runs."""
        _check_writable(self.path, self.in_file)
        _remove_stale_new_files(self.path)
        if not os.path.exists(self.path):
            self._create_file()
        with _opened(self.path, "r+", unbuffered=True) as f:
            self._file = f
            try:
                yield self
            finally:  # no h5py object of the file outlives it
                self._file = self._group = self._markers = None
                self._dsets = []

    def _create_file(self) -> None:
        tmp = f"{self.path}.{os.getpid()}{_NEW_FILE_SUFFIX}"
        with h5py.File(tmp, "w") as f:
            f.require_group(self.group)
            f.attrs.update(bookkeeping_attrs())
        try:
            os.link(tmp, self.path)  # atomic, and never replaces a file another process just made
        except FileExistsError:
            pass
        finally:
            os.remove(tmp)

    def prepare(self, token: str, identity: dict, params: dict, *, resume: Found | None) -> np.ndarray:
        """Open the group to resume, or create a new one; return the per-row flags."""
        try:
            return self._prepare(token, identity, params, resume=resume)
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, LazyUSIDError) or not _is_disk_full(exc):
                raise
            raise DiskFullError(
                f"No space left on device while writing {self.where}: preparing its results group, before "
                "computing anything; free space and run again"
            ) from exc

    def _prepare(self, token: str, identity: dict, params: dict, *, resume: Found | None) -> np.ndarray:
        f = self._file
        if resume is not None:
            grp = f[self.group][resume.name]
            problems = self._problems(grp)
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
        return self._attach(self._create_group(token, identity, params))

    def _create_group(self, token, identity, params) -> h5py.Group:
        f = self._file
        parent = f.require_group(self.group)
        if _BUILDING in parent:  # left by a run killed (or failed) while building; we hold the lock now
            del parent[_BUILDING]
        prefix = results_prefix(self.base, self.tool)
        taken = [int(m.group(1)) for k in parent if (m := re.fullmatch(re.escape(prefix) + r"(\d+)", k))]
        name = f"{prefix}{max(taken, default=-1) + 1:03d}"
        grp = parent.create_group(_BUILDING)
        shape = self.shape

        source = None
        if self.source_file is not None:
            source = f if self.in_file else h5py.File(self.source_file, "r")
        try:
            pos_dims = (
                source[self.source_dataset]
                if source is not None and self.reuse_positions
                else _pos_dims(shape)
            )
            for out in shape.outputs:
                cols = shape.columns(out)
                rows = max(
                    1,
                    min(
                        shape.rows_per_block, shape.n_rows, _CHUNK_BYTES // max(1, cols * out.dtype.itemsize)
                    ),
                )
                main = write_main(
                    grp,
                    None,
                    name=out.name,
                    quantity=out.name,
                    units=out.units,
                    pos_dims=pos_dims,
                    spec_dims=_spec_dims(shape, out),
                    dtype=out.dtype,
                    ancillary_suffix="" if len(shape.outputs) == 1 else f"_{out.name}",
                    chunks=(rows, cols),
                    fillvalue=_fill_value(out.dtype),
                )
                pos_dims = main  # later outputs share the position ancillaries
            grp.attrs["tool"] = self.tool
            grp.attrs["num_source_dsets"] = 0 if self.source_file is None else 1
            if self.in_file:
                grp.attrs["source_000"] = f[self.source_dataset].ref
            elif self.source_file is not None:
                grp.attrs["source_file_path"] = self.source_file
                grp.attrs["source_dataset_path"] = self.source_dataset
        finally:
            if source is not None and not self.in_file:
                source.close()
        grp.attrs.update(bookkeeping_attrs())
        for key, value in params.items():
            plain = _plain(value)
            if plain is not None and key not in RESERVED_ATTRS:
                grp.attrs[key] = plain
        grp.attrs["lazyusid_identity"] = to_json(identity)
        grp.attrs["lazyusid_format_version"] = identity["format_version"]
        grp.create_dataset(MARKERS, shape=(shape.n_rows,), dtype=np.uint8, fillvalue=0)
        grp.attrs["last_pixel"] = 0
        grp.attrs["lazyusid_token"] = token
        f.flush()
        parent.move(_BUILDING, name)  # a kill before this leaves no group that pyUSID or lazyusid would find
        f.flush()
        return parent[name]

    def _problems(self, grp: h5py.Group) -> list[str]:
        problems = []
        markers = grp.get(MARKERS)
        if not isinstance(markers, h5py.Dataset) or markers.shape != (self.shape.n_rows,):
            problems.append(f"no {MARKERS} of {self.shape.n_rows} rows")
        for out in self.shape.outputs:
            dset = grp.get(out.name)
            want = (self.shape.n_rows, self.shape.columns(out))
            if not isinstance(dset, h5py.Dataset) or dset.shape != want or dset.dtype != out.dtype:
                problems.append(f"no dataset {out.name!r} of shape {want} and dtype {out.dtype}")
        return problems

    def _attach(self, grp: h5py.Group) -> np.ndarray:
        self._group = grp
        self._dsets = [grp[o.name] for o in self.shape.outputs]
        self._markers = grp[MARKERS]
        self._done = np.asarray(self._markers[()], dtype=np.uint8)
        self._prefix = _prefix(self._done, 0)
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
        except (OSError, RuntimeError) as exc:
            if not _is_disk_full(exc):
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
        merged = _merged(self._pending)
        done = self._done.copy()
        try:
            self._file.flush()
            for r0, r1 in merged:
                self._markers[r0:r1] = 1
                done[r0:r1] = 1
            prefix = _prefix(done, self._prefix)
            self._group.attrs["last_pixel"] = prefix
            self._file.flush()
        except (OSError, RuntimeError) as exc:
            if not _is_disk_full(exc):
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
        shape = self.shape
        path = f"{self.group.rstrip('/')}/{name}"
        out = {}
        for o in shape.outputs:
            cols = shape.columns(o)
            source = H5Source(self.path, f"{path}/{o.name}", (shape.n_rows,), (cols,), o.dtype)
            rows = max(1, min(shape.n_rows, _CHUNK_BYTES * 16 // max(1, cols * o.dtype.itemsize)))
            arr = lazy_reads(source, (rows, cols), "usid-result-" + dask.base.tokenize(source, rows))
            out[o.name] = shape.variable(o, arr)
            out[o.name].attrs["units"] = o.units
        return out


def _refuse_non_group(f: h5py.File, group: str) -> None:
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


def _fill_value(dtype: np.dtype):
    """What unwritten values read as: NaN for floats (also in each float field of a record), else 0.

    Examples
    --------
    >>> _fill_value(np.dtype([("Amplitude", "f4"), ("n", "i2")]))
    np.void((nan, 0), dtype=[('Amplitude', '<f4'), ('n', '<i2')])
    """
    if dtype.names is None:
        return np.nan if dtype.kind in "fc" else 0
    fill = np.zeros((), dtype)
    for name in dtype.names:
        fill[name] = _fill_value(dtype.fields[name][0])
    return fill[()]


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Row ranges with touching ones joined: one write for the many blocks of a checkpoint.

    Examples
    --------
    >>> _merged([(4, 6), (0, 2), (2, 4), (8, 9)])
    [(0, 6), (8, 9)]
    """
    out: list[tuple[int, int]] = []
    for r0, r1 in sorted(ranges):
        if out and r0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(r1, out[-1][1]))
        else:
            out.append((r0, r1))
    return out


def _prefix(done: np.ndarray, start: int) -> int:
    """Length of the run of flagged rows from the start (scanning on from ``start``, a known prefix)."""
    rest = done[start:]
    first = int(np.argmin(rest)) if rest.size else 0  # the first 0, without building an index array
    return int(done.size) if rest.size == 0 or rest[first] else start + first


def _pos_dims(shape: ResultShape) -> list[Dimension]:
    return [_dimension(shape, d, n) for d, n in zip(shape.pos_dims, shape.pos_shape)]


def _spec_dims(shape: ResultShape, out: Output) -> list[Dimension]:
    dims = [_dimension(shape, d, n) for d, n in zip(shape.extra_dims, shape.extra_shape)]
    dims += [Dimension(str(d), "", n) for d, n in zip(out.dims, out.shape)]
    return dims or [Dimension("Value", "", 1)]


def _dimension(shape: ResultShape, dim, size: int) -> Dimension:
    coord = shape.coords.get(dim)
    if coord is not None and coord.dims == (dim,) and coord.dtype.kind in "biuf":
        return Dimension(str(dim), str(coord.attrs.get("units", "")), np.asarray(coord.values))
    return Dimension(str(dim), "", size)


def _plain(value):
    """A parameter as pyUSID would store it as an attribute, or None when HDF5 cannot hold it."""
    if isinstance(value, (bool, np.bool_, int, float, complex, str, np.number)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind in "biufc" and arr.nbytes <= 32 * 1024:
            return arr
        if arr.dtype.kind == "U" and arr.ndim == 1:
            return np.array([s.encode() for s in arr], dtype="S")
    return None


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _remove_stale_new_files(path: str) -> None:
    """Remove the temporary files of new targets whose creating process is dead.

    A run killed before it linked its new file into place leaves the only
    copy; one killed between linking and removing leaves a second name of
    the target itself. Either way nothing else refers to it.
    """
    for stale in glob.glob(glob.escape(path) + ".*" + _NEW_FILE_SUFFIX):
        pid = stale[len(path) + 1 : -len(_NEW_FILE_SUFFIX)]
        if pid.isdigit() and not _alive(int(pid)):
            with suppress(FileNotFoundError):  # another process removed it first
                os.remove(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_writable(path: str, in_file: bool) -> None:
    target = path if os.path.exists(path) else os.path.dirname(path) or "."
    if not os.access(target, os.W_OK):
        hint = (
            "results go into the source file by default; pass store='results.h5' (another HDF5 file) "
            "or store='results.zarr'"
            if in_file
            else "choose a writable location for store="
        )
        raise ReadOnlyStoreError(f"cannot write results into {path}: it is read-only. {hint}")


def _is_disk_full(exc: BaseException) -> bool:
    """Whether an h5py error is the file system's ENOSPC (h5py raises OSError or RuntimeError for it)."""
    text = str(exc)
    return (
        getattr(exc, "errno", None) == errno.ENOSPC
        or "errno = 28," in text
        or "No space left on device" in text
    )


def _unbuffered(path: str) -> h5py.File:
    """``h5py.File(path, "r+")`` holding no raw data back: no chunk cache, no sieve buffer.

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
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl=fapl))


@contextmanager
def _opened(path: str, mode: str, *, unbuffered: bool = False):
    """``h5py.File`` with errors that say what is wrong with the target and what to do.

    ``unbuffered`` (mode ``r+`` only): see :func:`_unbuffered`. After an
    error the file is closed quietly: what closing it fails on (a full
    disk) must not hide the error that stopped the work.
    """
    try:
        f = _unbuffered(path) if unbuffered else h5py.File(path, mode)
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
        if not _is_disk_full(exc):
            raise
        raise DiskFullError(
            f"No space left on device while closing {path}; the positions flagged in it are saved; "
            "free space and run again to resume"
        ) from exc
