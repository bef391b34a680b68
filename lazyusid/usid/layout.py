"""Validate a USID main dataset and read the shape of its dimensions.

This is the metadata layer: it reads only the small ancillary datasets and
attributes, never the main data, and it never writes. Everything about how
the flat ``(positions, spectroscopic)`` matrix maps onto named N-D
dimensions lives in :class:`Layout`.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import h5py
import numpy as np

from ..errors import InvalidUSIDError
from .grid import grid_sizes, n_distinct, slowest_first
from .write import ANCILLARY_NAMES

#: name of the flat dimension of a dataset whose dimensions do not tile
FLAT_POSITION = "Position"

#: dimension groups already analysed: (file, ancillary addresses, ...) -> (file fingerprint, DimGroup)
_memo: OrderedDict[tuple, tuple] = OrderedDict()
_MEMO_SIZE = 8
#: layouts of main datasets already validated: (file, dataset address, shape) -> (file fingerprint, Layout)
_layouts: OrderedDict[tuple, tuple] = OrderedDict()
_memo_lock = threading.Lock()
#: keys read within the current :func:`remembering_layouts` block
_pinned: ContextVar[set | None] = ContextVar("lazyusid_pinned_layouts", default=None)


@contextmanager
def remembering_layouts() -> Iterator[None]:
    """Within this block, :func:`read_layout` analyses each pair of ancillary datasets once.

    Outside it, an analysis is reused only while the file's size, inode and
    modification time are unchanged (opening ``open_usid(path)`` and then
    mapping it reads the millions of position indices once). Inside, it is
    reused also after the file changed: for one computation that holds its
    files, whose own writes (a new results group sharing the source's
    position ancillaries) touch the file but never those datasets.
    """
    if _pinned.get() is not None:  # nested: the outer block remembers
        yield
        return
    token = _pinned.set(set())
    try:
        yield
    finally:
        _pinned.reset(token)


@dataclass(frozen=True, eq=False)
class DimGroup:
    """The position or the spectroscopic dimensions of a main dataset.

    Attributes
    ----------
    labels, units : tuple of str
        As stored in the ancillary datasets (file order, normally slowest first).
    sizes : tuple of int
        Size of each dimension, in the order of ``labels``.
    order : tuple of int
        Indices into ``labels`` from slowest to fastest varying.
    complete : bool
        Whether the indices tile a full grid. If not, the group is exposed as
        one flat dimension with each label's values as a coordinate.
    values : tuple of numpy.ndarray
        Complete: the values along each dimension. Incomplete: the value of
        each dimension at every flat point.
    """

    labels: tuple[str, ...]
    units: tuple[str, ...]
    sizes: tuple[int, ...]
    order: tuple[int, ...]
    complete: bool
    values: tuple[np.ndarray, ...]
    count: int

    @property
    def dims(self) -> tuple[str, ...]:
        """Dimension names of this group in the N-D array."""
        return self.labels if self.complete else (FLAT_POSITION,)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of this group in the N-D array (file order)."""
        return self.sizes if self.complete else (self.count,)

    @property
    def sorted_shape(self) -> tuple[int, ...]:
        """Shape with the dimensions slowest first: how the flat axis reshapes."""
        return tuple(self.sizes[i] for i in self.order) if self.complete else (self.count,)

    @property
    def sort_order(self) -> tuple[int, ...]:
        return self.order if self.complete else (0,)


@dataclass(frozen=True, eq=False)
class Layout:
    """Everything needed to view a main dataset as a named N-D array."""

    path: str  # HDF5 path of the main dataset
    shape: tuple[int, int]
    dtype: np.dtype
    quantity: str
    units: str
    pos: DimGroup
    spec: DimGroup

    @property
    def dims(self) -> tuple[str, ...]:
        return self.pos.dims + self.spec.dims

    @property
    def nd_shape(self) -> tuple[int, ...]:
        return self.pos.shape + self.spec.shape


def is_main(dset) -> bool:
    """Whether ``dset`` is a valid USID main dataset (never raises for h5py objects)."""
    if not isinstance(dset, h5py.Dataset):
        return False
    try:
        validate_main(dset)
    except InvalidUSIDError:
        return False
    return True


def validate_main(dset: h5py.Dataset) -> None:
    """Raise :class:`InvalidUSIDError` naming what makes ``dset`` not a main dataset."""
    read_layout(dset)


def read_layout(dset: h5py.Dataset) -> Layout:
    """Validate a main dataset and describe its dimensions.

    A layout read from a file opened read-only (or inside
    :func:`remembering_layouts`) is reused while the file is unchanged, as
    the analysis of its ancillary datasets is: opening, planning and storing
    one computation validate the source several times.

    Raises
    ------
    InvalidUSIDError
        Naming the dataset and the first missing or inconsistent piece.
    """
    if not isinstance(dset, h5py.Dataset):
        where = f"{dset.name!r} in {dset.file.filename!r}"
        raise InvalidUSIDError(f"{where} is a {type(dset).__name__}, not a dataset")
    f = dset.file
    if dset.ndim != 2 or "Position_Indices" not in dset.attrs:  # not a main dataset: says why, quickly
        return _read_layout(dset, f)
    key, state = _layout_key(dset, f)
    pinned = _pinned.get()
    trusted = key is not None and (pinned is not None or f.mode == "r")
    if trusted:
        with _memo_lock:
            seen = _layouts.get(key)
        if seen is not None and (seen[0] == state or (pinned is not None and key in pinned)):
            if pinned is not None:  # trusted from now on, also once the results written change the file
                pinned.add(key)
            return seen[1]
    layout = _read_layout(dset, f)
    if trusted:
        _remember(_layouts, key, state, layout)
        if pinned is not None:
            pinned.add(key)
    return layout


def _layout_key(dset: h5py.Dataset, f: h5py.File) -> tuple[tuple | None, tuple | None]:
    """(memo key, file state) of a main dataset in a file on disk; (None, None) otherwise."""
    try:
        path = f.filename
        st = os.stat(path)
    except (OSError, TypeError, ValueError):  # in memory or file-like: no memo
        return None, None
    addr = h5py.h5o.get_info(dset.id).addr
    return (os.path.realpath(path), addr, dset.name, dset.shape), (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )


def _remember(memo: OrderedDict, key: tuple, state: tuple, value) -> None:
    with _memo_lock:
        memo[key] = (state, value)
        memo.move_to_end(key)
        while len(memo) > _MEMO_SIZE:
            memo.popitem(last=False)


def _read_layout(dset: h5py.Dataset, f: h5py.File) -> Layout:
    def fail(msg: str) -> InvalidUSIDError:
        return InvalidUSIDError(f"{dset.name!r} in {f.filename!r} is not a USID main dataset: {msg}")

    if dset.ndim != 2:
        raise fail(f"it must be 2-D (positions, spectroscopic points) but has shape {dset.shape}")
    for key in ("quantity", "units"):
        if key not in dset.attrs:
            raise fail(f"attribute {key!r} is missing")
        if not isinstance(_text(dset.attrs[key]), str):
            raise fail(f"attribute {key!r} must be a string, found {dset.attrs[key]!r}")
    anc = {}
    for key in ANCILLARY_NAMES:
        if key not in dset.attrs:
            raise fail(f"attribute {key!r} (an object reference to the ancillary dataset) is missing")
        ref = dset.attrs[key]
        if not isinstance(ref, h5py.Reference):
            raise fail(f"attribute {key!r} must be an HDF5 object reference, found {ref!r}")
        if not ref:
            raise fail(f"attribute {key!r} is a null reference")
        try:
            target = f[ref]
        except (KeyError, ValueError) as exc:
            raise fail(f"attribute {key!r} refers to nothing that exists ({exc})") from None
        if not isinstance(target, h5py.Dataset):
            raise fail(
                f"attribute {key!r} refers to {target.name!r}, a {type(target).__name__}, not a dataset"
            )
        anc[key] = target
    pos = _read_group_once(anc["Position_Indices"], anc["Position_Values"], dset.shape[0], False, fail)
    spec = _read_group_once(
        anc["Spectroscopic_Indices"], anc["Spectroscopic_Values"], dset.shape[1], True, fail
    )
    if not spec.complete:
        raise fail(
            f"spectroscopic indices {anc['Spectroscopic_Indices'].name!r} do not tile a grid of "
            f"{dict(zip(spec.labels, spec.sizes))}; only position dimensions may be incomplete"
        )
    clash = set(pos.dims) & set(spec.dims)
    if clash:
        raise fail(f"dimension names {sorted(clash)} are used by both position and spectroscopic dimensions")
    return Layout(
        path=dset.name,
        shape=dset.shape,
        dtype=dset.dtype,
        quantity=_text(dset.attrs["quantity"]),
        units=_text(dset.attrs["units"]),
        pos=pos,
        spec=spec,
    )


def _read_group_once(h5_inds, h5_vals, expected: int, spectroscopic: bool, fail) -> DimGroup:
    """:func:`_read_group`, or its result for the same datasets of the same, unchanged file."""
    path = h5_inds.file.filename
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):  # not a file on disk (in-memory or file-like): no memo
        return _read_group(h5_inds, h5_vals, expected, spectroscopic, fail)
    fingerprint = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    key = (
        os.path.realpath(path),
        h5py.h5o.get_info(h5_inds.id).addr,
        h5py.h5o.get_info(h5_vals.id).addr,
        h5_inds.shape,
        expected,
        spectroscopic,
    )
    pinned = _pinned.get()
    with _memo_lock:
        seen = _memo.get(key)
    if seen is not None and (seen[0] == fingerprint or (pinned is not None and key in pinned)):
        group = seen[1]
    else:
        group = _read_group(h5_inds, h5_vals, expected, spectroscopic, fail)
    with _memo_lock:
        _memo[key] = (fingerprint, group)
        _memo.move_to_end(key)
        while len(_memo) > _MEMO_SIZE:
            _memo.popitem(last=False)
    if pinned is not None:
        pinned.add(key)
    return group


def _read_group(h5_inds, h5_vals, expected: int, spectroscopic: bool, fail) -> DimGroup:
    kind = "spectroscopic" if spectroscopic else "position"
    names = f"{h5_inds.name!r} and {h5_vals.name!r}"
    for ds in (h5_inds, h5_vals):
        if ds.ndim != 2:
            raise fail(f"{kind} ancillary dataset {ds.name!r} must be 2-D, has shape {ds.shape}")
    if h5_inds.shape != h5_vals.shape:
        raise fail(
            f"{kind} indices and values have different shapes: {names} are {h5_inds.shape} and {h5_vals.shape}"
        )
    # positions: (N_pos, n_dims); spectroscopic: (n_dims, N_spec)
    axis_n, axis_dims = (1, 0) if spectroscopic else (0, 1)
    if h5_inds.shape[axis_n] != expected:
        side = "columns" if spectroscopic else "rows"
        raise fail(
            f"{kind} indices {h5_inds.name!r} have {h5_inds.shape[axis_n]} {side} "
            f"(shape {h5_inds.shape}) but the main dataset has {expected} {kind} points"
        )
    meta = {}
    for key in ("labels", "units"):
        found = []
        for ds in (h5_inds, h5_vals):
            if key not in ds.attrs:
                raise fail(f"attribute {key!r} is missing on {kind} ancillary dataset {ds.name!r}")
            found.append(_text_list(ds.attrs[key]))
        if found[0] != found[1]:
            raise fail(f"{key!r} differ between {names}: {found[0]} vs {found[1]}")
        if len(found[0]) != h5_inds.shape[axis_dims]:
            raise fail(
                f"{key!r} of {h5_inds.name!r} lists {len(found[0])} entries {found[0]} "
                f"but the dataset describes {h5_inds.shape[axis_dims]} dimensions (shape {h5_inds.shape})"
            )
        meta[key] = tuple(found[0])
    labels = meta["labels"]
    if len(set(labels)) != len(labels):
        raise fail(f"{kind} labels {list(labels)} are not unique")
    if not np.issubdtype(h5_inds.dtype, np.integer):
        raise fail(f"{kind} indices {h5_inds.name!r} must hold integers, found dtype {h5_inds.dtype}")

    inds = h5_inds[()]
    vals = h5_vals[()]
    if not spectroscopic:  # rows = dimensions from here on (indices contiguous: scanned several times)
        inds, vals = np.ascontiguousarray(inds.T), vals.T
    count = inds.shape[1]
    order = slowest_first(inds)
    marked = any(
        "incomplete_dimensions" in ds.attrs or np.any(np.asarray(ds.attrs.get("type", 0)) == 1)
        for ds in (h5_inds, h5_vals)
    )
    sizes = None if marked else grid_sizes(inds, order)
    complete = sizes is not None
    if complete:  # value of dimension i at its k-th step: at flat point k × (its stride in the grid)
        sorted_sizes = [sizes[i] for i in order]
        strides = {i: math.prod(sorted_sizes[j + 1 :]) for j, i in enumerate(order)}
        values = [vals[i, np.arange(sizes[i]) * strides[i]] for i in range(len(labels))]
    else:
        sizes = tuple(n_distinct(row) for row in inds)
        values = [np.array(row) for row in vals]
    for v in values:  # shared by every later read of an unchanged file (_read_group_once)
        v.flags.writeable = False
    return DimGroup(
        labels=labels,
        units=meta["units"],
        sizes=sizes,
        order=order,
        complete=complete,
        values=tuple(values),
        count=count,
    )


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _text(value[()])
    if isinstance(value, np.str_):
        return str(value)
    return value


def _text_list(value) -> list[str]:
    arr = np.atleast_1d(np.asarray(value))
    return [str(_text(v)) for v in arr]
