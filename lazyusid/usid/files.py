"""Finding main datasets in a file, and printing a file's tree."""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager

import h5py
import numpy as np

from ..errors import DatasetSelectionError, InvalidUSIDError, StoreBusyError
from .layout import is_main, read_layout
from .write import ANCILLARY_NAMES

PathLike = str | os.PathLike


#: C0 controls, DEL and C1 controls: a terminal acts on them (escape sequences, bell, carriage return)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": r"\n", "\r": r"\r", "\t": r"\t"}


def printable(text) -> str:
    r"""``str(text)`` with control characters escaped (``\x1b``, ``\n``): safe to print to a terminal.

    Names and attribute strings come from files anyone may have written
    (docs/design.md, decision 8); an escape sequence in them could retitle the
    window, clear the screen or hide text. Every other character, unicode
    included, is kept.

    Examples
    --------
    >>> printable("Amplitude [µm]\x1b[2J")
    'Amplitude [µm]\\x1b[2J'
    """
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), str(text))


#: errno values of a file system that cannot lock files at all (NFS without a lock daemon, ...)
_NO_LOCKING = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP}


def raise_if_locked(exc: OSError, busy: str) -> None:
    """Raise :class:`StoreBusyError` (``busy``) when ``exc`` is HDF5's file lock refusing the open.

    A file system that cannot lock at all (``errno`` ENOLCK, ENOSYS,
    EOPNOTSUPP in HDF5's message) raises an ``OSError`` that says how to turn
    HDF5's locking off instead. Any other error returns.
    """
    text = str(exc)
    found = re.search(r"errno = (\d+)", text)
    code = int(found.group(1)) if found else getattr(exc, "errno", None)
    if "unable to lock file" in text and code in _NO_LOCKING:
        raise OSError(
            f"this file system cannot lock files ({os.strerror(code)}), which HDF5 does by default: set the "
            "environment variable HDF5_USE_FILE_LOCKING=FALSE before starting Python, and make sure that only "
            "one process writes to a file at a time"
        ) from exc
    if isinstance(exc, BlockingIOError) or "unable to lock file" in text or code == errno.EAGAIN:
        raise StoreBusyError(busy) from exc


@contextmanager
def open_file(source: PathLike | h5py.File | h5py.Group, mode: str = "r"):
    """Yield an open h5py file for a path (closed afterwards) or pass an open one through."""
    if isinstance(source, (h5py.File, h5py.Group)):
        yield source.file
        return
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        f = h5py.File(path, mode)
    except OSError as exc:
        raise_if_locked(
            exc,
            f"{path!r} is open for writing in another process (HDF5 file lock), e.g. a lazyusid "
            "computation storing results into it; wait for it to finish, or read a copy",
        )
        if not h5py.is_hdf5(path):
            raise OSError(f"{path!r} is not an HDF5 file") from exc
        raise
    try:
        yield f
    finally:
        f.close()


#: a results group left unfinished by a lazyusid run (versions before 2026-12 built them under this name;
#: a run killed meanwhile left it, and the next run removes it): what it holds is never taken for data
UNFINISHED_GROUP = "_lazyusid_building"


def _unfinished(name: str) -> bool:
    return UNFINISHED_GROUP in name.split("/")


def list_main(source: PathLike | h5py.File) -> list[str]:
    """HDF5 paths of all USID main datasets in a file, in file order (none inside :data:`UNFINISHED_GROUP`).

    Examples
    --------
    >>> list_main("scan.h5")                                            # doctest: +SKIP
    ['/Measurement_000/Channel_000/Raw_Data']
    """
    with open_file(source) as f:
        return [path for path, d in _candidates(f) if is_main(d)]


def _candidates(f: h5py.File, measured: bool = False) -> list[tuple[str, h5py.Dataset]]:
    """``(path, dataset)`` of the 2-D datasets with ``Position_Indices`` (the others fail validation anyway).

    ``measured``: only those outside results groups (the others are not opened).
    """
    found = []
    for path in _datasets(f):
        if not (measured and in_results_group(path)):
            d = f[path]
            if d.ndim == 2 and "Position_Indices" in d.attrs:
                found.append((path, d))
    return found


def invalid_candidates(source: PathLike | h5py.File) -> list[tuple[str, str]]:
    """Datasets that look like USID main datasets but are not valid ones: ``(HDF5 path, why)``, in file order.

    A candidate is 2-D and carries at least one of the four ancillary
    attributes (``Position_Indices``, ...): what a writer meant as a main
    dataset. ``why`` is the first problem :func:`~lazyusid.validate_main` finds.
    """
    found: list[tuple[str, str]] = []
    with open_file(source) as f:
        for path in _datasets(f):
            d = f[path]
            if d.ndim == 2 and any(k in d.attrs for k in ANCILLARY_NAMES):
                try:
                    read_layout(d)
                except InvalidUSIDError as exc:
                    found.append((path, str(exc).split("is not a USID main dataset: ", 1)[-1]))
    return found


def _datasets(f: h5py.File) -> list[str]:
    """Paths of every dataset of the file (hard links, each object once, in file order), none in
    :data:`UNFINISHED_GROUP`.

    Only those whose path is UTF-8 text: lazyusid addresses datasets by
    ``str`` paths (:func:`_not_utf8` names the others). ``h5o.visit`` with
    the objects' info opens none (``visititems`` opens every object).
    """
    names: list[str] = []

    def visit(name: bytes, info) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:
            try:
                text = name.decode("utf-8")
            except UnicodeDecodeError:
                return
            if not _unfinished(text):
                names.append("/" + text)

    h5py.h5o.visit(f.id, visit, info=True)
    return names


def _not_utf8(f: h5py.File) -> list[bytes]:
    """The shortest paths (bytes) of the file whose last name is not UTF-8 text, in file order."""
    found: list[bytes] = []

    def visit(name: bytes) -> None:
        parts = name.split(b"/")
        bad = next((k for k, part in enumerate(parts) if not _utf8(part)), None)
        prefix = None if bad is None else b"/" + b"/".join(parts[: bad + 1])
        if prefix is not None and prefix not in found:
            found.append(prefix)

    h5py.h5o.visit(f.id, visit)
    return found


def _utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def no_main_message(source: PathLike | h5py.File, filename: str) -> str:
    """Why ``filename`` holds no main dataset: each invalid candidate and its problem, or that there is none."""
    with open_file(source) as f:
        unnamed = _not_utf8(f)
        bad = invalid_candidates(f)
    if unnamed:
        shown = ", ".join(printable(repr(n)[1:]) for n in unnamed)
        return (
            f"{filename!r} holds no USID main dataset lazyusid can address: {shown} (and what lies under "
            "them) have names that are not UTF-8 text, and lazyusid addresses datasets by text paths. Rename "
            f"them with h5py, e.g. h5py.File(path, 'a').move({unnamed[0]!r}, 'a text name')"
            + ("".join(f"\n  {name}: {why}" for name, why in bad) if bad else "")
        )
    if not bad:
        return f"{filename!r} holds no USID main dataset (no 2-D dataset with ancillary attributes)"
    listing = "\n  ".join(f"{name}: {why}" for name, why in bad)
    if len(bad) == 1:
        return f"{filename!r} holds no USID main dataset: {bad[0][0]} looks like one but {bad[0][1]}"
    return (
        f"{filename!r} holds no USID main dataset: {len(bad)} datasets look like main datasets "
        f"but are not valid:\n  {listing}"
    )


#: pyUSID's results group names: <Main>-<Tool>_NNN
_RESULTS_GROUP = re.compile(r".+-.+_\d+")


def in_results_group(path: str) -> bool:
    """Whether the HDF5 path lies inside a results group ``<Main>-<Tool>_NNN``."""
    return any(_RESULTS_GROUP.fullmatch(part) for part in path.split("/")[:-1])


def select_main(f: h5py.File, dataset: str | None) -> h5py.Dataset:
    """The main dataset named ``dataset`` (a path or a unique basename), or the only one.

    Without ``dataset``, main datasets inside results groups (``<Main>-<Tool>_NNN``)
    do not count when exactly one main dataset lies outside them: a file
    holding a measurement and its results opens to the measurement.
    """
    if dataset is not None and dataset in f:
        obj = f[dataset]
        read_layout(obj)  # raises InvalidUSIDError explaining what is wrong
        return obj
    if dataset is None:  # the measured main datasets first: a file of many results groups opens one
        measured = {m for m, d in _candidates(f, measured=True) if is_main(d)}
        if len(measured) == 1:
            return f[measured.pop()]
    candidates = _candidates(f)
    if dataset is None:
        mains = [m for m, d in candidates if m in measured or (in_results_group(m) and is_main(d))]
        if len(mains) == 1:
            return f[mains[0]]
        if not mains:
            raise DatasetSelectionError(no_main_message(f, f.filename))
        listing = "\n  ".join(mains)
        raise DatasetSelectionError(
            f"{f.filename!r} holds {len(mains)} main datasets; choose one with dataset=...:\n  {listing}"
        )
    matches = [m for m, d in candidates if m.rsplit("/", 1)[-1] == dataset.strip("/") and is_main(d)]
    if len(matches) == 1:
        return f[matches[0]]
    mains = [m for m, d in candidates if is_main(d)]
    listing = "\n  ".join(mains) or "(none)"
    why = "is ambiguous" if matches else "is not in the file"
    raise DatasetSelectionError(f"dataset {dataset!r} {why} {f.filename!r}; main datasets:\n  {listing}")


def tree(source: PathLike | h5py.File) -> str:
    """A readable tree of an HDF5 file, marking USID main datasets and their dimensions.

    Examples
    --------
    >>> print(tree("scan.h5"))                                          # doctest: +SKIP
    scan.h5
    └── Measurement_000/
        └── Channel_000/
            ├── Raw_Data  complex64 (16384, 119)  USID main: Y=128 × X=128 | Frequency=119  Piezoresponse [V]
            ...
    """
    with open_file(source) as f:
        lines = [printable(os.path.basename(f.filename))]
        _tree_lines(f, "", lines)
    return "\n".join(lines)


def _tree_lines(group: h5py.Group, prefix: str, lines: list[str]) -> None:
    keys = list(group.keys())
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        branch, cont = ("└── ", "    ") if last else ("├── ", "│   ")
        obj = group.get(key)
        key = printable(key)
        if isinstance(obj, h5py.Group):
            extra = ""
            if "completed_positions" in obj.attrs or "tool" in obj.attrs:
                extra = f"  [results: tool={printable(_attr(obj, 'tool'))}]"
            lines.append(f"{prefix}{branch}{key}/{extra}")
            _tree_lines(obj, prefix + cont, lines)
        elif isinstance(obj, h5py.Dataset):
            desc = f"{key}  {obj.dtype} {obj.shape}"
            if is_main(obj):
                lay = read_layout(obj)
                pos = " × ".join(f"{d}={n}" for d, n in zip(lay.pos.dims, lay.pos.shape))
                spec = " × ".join(f"{d}={n}" for d, n in zip(lay.spec.dims, lay.spec.shape))
                desc += printable(f"  USID main: {pos} | {spec}  {lay.quantity} [{lay.units}]")
            lines.append(f"{prefix}{branch}{desc}")
        else:
            lines.append(f"{prefix}{branch}{key} (broken link)")


def _attr(obj, key):
    value = obj.attrs.get(key)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value


#: dataset layouts whose bytes lie in the file itself, in the dataset's own storage
_PLAIN_LAYOUTS = {h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked"}


def unplain_storage(group: h5py.Group, name: str) -> str | None:
    """Why dataset ``name`` of ``group`` is not stored plainly inside the group's file, or None.

    Plain: reached by a hard link, the only name of its object, not virtual,
    no external storage, a contiguous or chunked layout. Writing into
    anything else writes elsewhere: into another file (external storage,
    virtual datasets, external links) or into another dataset (soft links,
    second hard links). A missing name, or one that is not a dataset, is
    not this function's concern (None).

    Examples
    --------
    >>> with h5py.File("results.h5", "r") as f:                        # doctest: +SKIP
    ...     unplain_storage(f["Raw_Data-peak_000"], "peak")
    "has external storage (its bytes are in '/home/me/.bashrc')"
    """
    link = group.get(name, getlink=True)
    if link is None:
        return None
    if isinstance(link, h5py.ExternalLink):
        return f"is an external link to {link.path!r} in {link.filename!r}"
    if isinstance(link, h5py.SoftLink):
        return f"is a soft link to {link.path!r}"
    dset = group.get(name)
    if not isinstance(dset, h5py.Dataset):
        return None
    if dset.is_virtual:
        return "is a virtual dataset (its values live in other datasets, possibly of other files)"
    plist = dset.id.get_create_plist()
    if plist.get_external_count():
        return (
            f"has external storage (its bytes are in {plist.get_external(0)[0].decode(errors='replace')!r})"
        )
    layout = plist.get_layout()
    if layout not in _PLAIN_LAYOUTS:
        return f"has a {'compact' if layout == h5py.h5d.COMPACT else f'layout {layout}'} layout"
    links = h5py.h5o.get_info(dset.id).rc
    if links != 1:
        return f"has {links} names in the file (hard links): writing into it would change the others too"
    return None
