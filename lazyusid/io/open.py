"""Lazy, picklable opening of USID main datasets as xarray objects.

Three layers, as in xarray's backends: :class:`H5Source` reads bytes (a file
path and a dataset path, no h5py object, so a dask graph holding it pickles
to worker processes); :mod:`lazyusid.usid.layout` decodes the metadata;
:func:`open_usid` builds the user-facing :class:`xarray.DataArray`.
"""

from __future__ import annotations

import os

import dask
import dask.array as da
import h5py
import numpy as np
import xarray as xr
from dask.utils import parse_bytes

from ..usid.files import PathLike, open_file, raise_if_locked, select_main
from ..usid.layout import FLAT_POSITION, Layout, read_layout


class H5Source:
    """Read-only access to a main dataset, viewed with its dimensions slowest first.

    Holds only the file path, dataset path, shape and dtype. Every read
    opens the file read-only and closes it again: a handle kept open would
    hold HDF5's file lock and stop any process (including this one) from
    opening the file for writing, e.g. to store results next to the source.
    Opening costs well under a millisecond, small next to reading a block.

    Parameters
    ----------
    path : str
        File path.
    dataset : str
        HDF5 path of the 2-D main dataset.
    pos_shape, spec_shape : tuple of int
        Sizes of the position and spectroscopic dimensions, slowest first.
    dtype : numpy.dtype
    """

    def __init__(self, path: str, dataset: str, pos_shape, spec_shape, dtype):
        self.path = os.path.abspath(os.fspath(path))
        self.dataset = dataset
        self.pos_shape = tuple(int(n) for n in pos_shape)
        self.spec_shape = tuple(int(n) for n in spec_shape)
        self.shape = self.pos_shape + self.spec_shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __repr__(self) -> str:
        return f"H5Source({self.path!r}, {self.dataset!r}, shape={self.shape}, dtype={self.dtype})"

    def __dask_tokenize__(self):
        # no modification time: results written into the file must not rename a selection of its source
        # (the identity of stored results covers content through a fingerprint, lazyusid.core.identity)
        return (type(self).__name__, self.path, self.dataset, self.shape, str(self.dtype))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the 2-D ``(positions, spectroscopic)`` dataset.

        Raises :class:`~lazyusid.StoreBusyError`, naming the file, while
        another process holds it open for writing (HDF5's file lock).
        """
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise_if_locked(
                exc,
                f"{self.path} is open for writing in another process (HDF5 file lock), e.g. a lazyusid "
                f"computation storing results into it, so {self.dataset} cannot be read; wait for it to "
                "finish, or read a copy",
            )
            raise
        with f:
            dset = f[self.dataset]
            out = np.empty((max(0, stop - start), dset.shape[1]), dtype=self.dtype)
            if out.size:
                dset.read_direct(out, np.s_[start:stop])
        return out

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        n_pos = len(self.pos_shape)
        pos_key = key[:n_pos]
        if all(isinstance(k, (int, np.integer)) for k in pos_key):  # one spectrum: read one row
            index = tuple(int(k) % n for k, n in zip(pos_key, self.pos_shape))
            row = int(np.ravel_multi_index(index, self.pos_shape))
            return self.read_rows(row, row + 1)[0].reshape(self.spec_shape)[key[n_pos:]]
        # read whole rows of the slowest position dimension, then index the rest in memory
        outer = key[0]
        if isinstance(outer, (int, np.integer)):  # dask fuses e.g. .isel(Y=3) into the getter
            start = int(outer) + self.pos_shape[0] if outer < 0 else int(outer)
            stop = start + 1
            rest = (0, *key[1:])
        elif isinstance(outer, slice) and (outer.step or 1) > 0:
            start, stop, step = outer.indices(self.pos_shape[0])
            stop = max(start, stop)
            rest = (slice(None, None, step), *key[1:])
        else:
            start, stop = 0, self.pos_shape[0]
            rest = key
        inner = int(np.prod(self.pos_shape[1:], dtype=np.int64))
        rows = self.read_rows(start * inner, stop * inner)
        block = rows.reshape((stop - start,) + self.pos_shape[1:] + self.spec_shape)
        if n_pos == 0:  # pragma: no cover - main datasets always have positions
            return block[key]
        return block[rest]


def lazy_reads(source, chunks, name: str) -> da.Array:
    """A dask array whose tasks read ``source[...]`` (an :class:`H5Source` or :class:`FlatRows`) per chunk."""
    return da.from_array(
        source,
        chunks=chunks,
        lock=False,
        asarray=True,
        inline_array=True,
        meta=np.empty((0,) * source.ndim, dtype=source.dtype),
        name=name,
    )


def positions_per_chunk(layout: Layout, chunk_bytes: int) -> int:
    """How many steps of the slowest position dimension (longer than 1) fit in ``chunk_bytes``."""
    pos_sorted = _chunked_pos_shape(layout)
    inner = int(np.prod(pos_sorted[1:], dtype=np.int64))
    row_bytes = layout.shape[1] * layout.dtype.itemsize * inner
    return int(max(1, min(pos_sorted[0], chunk_bytes // max(1, row_bytes))))


def source_array(
    path: PathLike, layout: Layout, *, chunk_bytes: int | str | None = None, steps: int | None = None
):
    """Dask array of a main dataset in its N-D form (file order of dimensions).

    Chunks split only the slowest position dimension, ``steps`` at a time
    (default: as many as fit in ``chunk_bytes``, itself defaulting to dask's
    ``array.chunk-size``); spectroscopic dimensions are never split.
    """
    pos, spec = layout.pos, layout.spec
    pos_sorted = _chunked_pos_shape(layout)
    source = H5Source(path, layout.path, pos_sorted, spec.sorted_shape, layout.dtype)
    if steps is None:
        chunk_bytes = parse_bytes(chunk_bytes or dask.config.get("array.chunk-size"))
        steps = positions_per_chunk(layout, chunk_bytes)
    chunks = (int(steps),) + source.shape[1:]
    read_name = "usid-" + dask.base.tokenize(source, chunks)
    arr = lazy_reads(source, chunks, read_name)
    if len(pos_sorted) < len(pos.sorted_shape):  # restore the leading dimensions of size 1
        arr = arr[(None,) * (len(pos.sorted_shape) - len(pos_sorted))]
    # from slowest-first back to the order of the labels in the file (as pyUSID)
    n_pos = len(pos.sorted_shape)
    file_order = _inverse(pos.sort_order) + tuple(n_pos + i for i in _inverse(spec.sort_order))
    if file_order != tuple(range(arr.ndim)):
        arr = arr.transpose(file_order)
    return arr


def _chunked_pos_shape(layout: Layout) -> tuple[int, ...]:
    """Position shape, slowest first, without leading dimensions of size 1 (those cannot be split)."""
    shape = layout.pos.sorted_shape
    lead = 0
    while lead < len(shape) - 1 and shape[lead] == 1:
        lead += 1
    return shape[lead:]


def _inverse(order) -> tuple[int, ...]:
    inv = np.empty(len(order), dtype=int)
    inv[list(order)] = np.arange(len(order))
    return tuple(int(i) for i in inv)


def open_usid(
    path: PathLike,
    dataset: str | None = None,
    *,
    chunk_bytes: int | str | None = None,
) -> xr.DataArray | xr.Dataset:
    """Open a USID main dataset as a lazy, dask-backed :class:`xarray.DataArray`.

    Nothing of the main data is read until you compute. Dimensions are named
    from the ancillary labels in pyUSID's N-D order (position dimensions,
    then spectroscopic dimensions, as stored in the file); coordinates are
    their values, with ``units`` in their attrs.

    Parameters
    ----------
    path : str or os.PathLike
        An HDF5 file.
    dataset : str, optional
        HDF5 path of the main dataset, or its name if unique in the file.
        Required when the file holds several main datasets.
    chunk_bytes : int or str, optional
        Target size of one chunk, e.g. ``"64MiB"`` (default: dask's
        ``array.chunk-size``). Chunks split only the position dimensions.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        With ``attrs`` ``quantity``, ``units``, ``long_name``, and
        ``usid_file`` / ``usid_dataset`` naming the source. A dataset of
        records (a compound dtype, such as pycroscopy's ``sho32`` fits)
        opens as a Dataset with one variable per field: see
        :func:`record_fields`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    lazyusid.DatasetSelectionError
        If ``dataset`` is not found, or several main datasets exist and none was named.
    lazyusid.InvalidUSIDError
        If the named dataset is not a valid main dataset.

    Examples
    --------
    >>> da = open_usid("scan.h5")                                       # doctest: +SKIP
    >>> da.dims                                                         # doctest: +SKIP
    ('Y', 'X', 'Frequency')

    Position dimensions that do not tile a grid (a spiral scan, an aborted
    measurement, or the ``incomplete_dimensions`` attribute) give a single
    ``Position`` dimension with each label's values as a coordinate.
    """
    path = os.path.abspath(os.fspath(path))
    with open_file(path) as f:
        layout = read_layout(select_main(f, dataset))
        attrs = _main_attrs(f[layout.path])
        parent = f[layout.path].parent
        token = parent.attrs.get("lazyusid_token")
        if token is not None:  # an output of a lazyusid results group: named by the group's token
            attrs.update(
                usid_token=token.decode() if isinstance(token, bytes) else str(token),
                usid_store=f"{path}:{parent.name}",
                usid_output=layout.path.rsplit("/", 1)[-1],
            )
    data = source_array(path, layout, chunk_bytes=chunk_bytes)
    coords = _coords(layout)
    attrs.update(
        quantity=layout.quantity,
        units=layout.units,
        long_name=layout.quantity,
        usid_file=path,
        usid_dataset=layout.path,
        usid_spectroscopic_dims=list(layout.spec.dims),
        usid_position_dims=[layout.pos.dims[i] for i in layout.pos.sort_order],  # slowest first
    )
    arr = xr.DataArray(
        data, dims=layout.dims, coords=coords, name=layout.path.rsplit("/", 1)[-1], attrs=attrs
    )
    # provenance: the engine reads an untouched source's blocks itself (any selection or computation
    # renames the dask array; lazyusid.compute.untouched_source), and results record where they came from
    arr.encoding["usid_source"] = f"{path}:{layout.path}"
    arr.encoding["usid_read"] = data.name
    # lets xr.open_dataset(..., engine="usid", chunks={}) keep these chunks
    arr.encoding["preferred_chunks"] = {dim: c[0] for dim, c in zip(arr.dims, data.chunks) if len(c) >= 1}
    return arr if layout.dtype.names is None else record_fields(arr)


def record_fields(arr: xr.DataArray) -> xr.Dataset:
    """The fields of a compound (record) main dataset as the variables of a Dataset, lazily.

    pycroscopy stores fit results as one main dataset of records (``sho32``:
    ``Amplitude``, ``Frequency``, ``Quality Factor``, ``Phase``, ``R2``);
    :func:`open_usid` returns them as one float variable per field, ready to
    plot (``ds["Amplitude"].plot()``), each with ``units`` (the ``field_units``
    attribute of the dataset, one string per field, when present; else the
    dataset's ``units``). The Dataset's attrs name the dataset
    (``usid_file``, ``usid_dataset``); a field's own attrs name it by
    ``usid_record`` (``"<file>:<dataset>"``) and ``usid_field``, and not by
    ``usid_dataset``: a computation on one field is not a computation on the
    stored records.
    """
    names = arr.dtype.names
    units = [str(u) for u in _text_list(arr.attrs.get("field_units"))]
    if len(units) != len(names):
        units = [arr.attrs["units"]] * len(names)
    shared = {k: v for k, v in arr.attrs.items() if k not in ("usid_file", "usid_dataset", "field_units")}
    record = f"{arr.attrs['usid_file']}:{arr.attrs['usid_dataset']}"
    fields = {}
    for name, unit in zip(names, units):
        attrs = {**shared, "quantity": name, "long_name": name, "units": unit}
        attrs.update(usid_record=record, usid_field=name)
        fields[name] = xr.DataArray(arr.data[name], dims=arr.dims, coords=arr.coords, attrs=attrs)
    return xr.Dataset(fields, attrs=dict(arr.attrs))


def _text_list(value) -> list:
    if value is None:
        return []
    return [
        v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in np.atleast_1d(value).tolist()
    ]


def _coords(layout: Layout) -> dict:
    coords = {}
    for group in (layout.pos, layout.spec):
        if group.complete:
            for label, unit, values in zip(group.labels, group.units, group.values):
                coords[label] = xr.Variable(label, values, attrs={"units": unit})
        else:
            for label, unit, values in zip(group.labels, group.units, group.values):
                coords[label] = xr.Variable(FLAT_POSITION, values, attrs={"units": unit})
    return coords


_SKIP_ATTRS = {"Position_Indices", "Position_Values", "Spectroscopic_Indices", "Spectroscopic_Values"}


def _main_attrs(dset) -> dict:
    """Plain (non-reference) attributes of the main dataset, decoded."""
    out = {}
    for key, value in dset.attrs.items():
        if key in _SKIP_ATTRS or isinstance(value, h5py.Reference):
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[key] = value
    return out
