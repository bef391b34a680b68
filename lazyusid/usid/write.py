"""Writing USID main datasets exactly as pyUSID writes them."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import h5py
import numpy as np

from .dimension import Dimension, build_ancillary, parse_dimensions

ANCILLARY_NAMES = (
    "Position_Indices",
    "Position_Values",
    "Spectroscopic_Indices",
    "Spectroscopic_Values",
)

# rows written at once when copying dask or numpy data into the file
_WRITE_BLOCK_BYTES = 64 * 2**20


def write_main(
    group: h5py.Group,
    data,
    *,
    name: str,
    quantity: str,
    units: str,
    pos_dims: Dimension | Sequence[Dimension] | h5py.Dataset,
    spec_dims: Dimension | Sequence[Dimension] | h5py.Dataset,
    dtype=None,
    attrs: Mapping | None = None,
    ancillary_suffix: str = "",
    **dataset_kwargs,
) -> h5py.Dataset:
    """Write a USID main dataset and its four ancillary datasets.

    Parameters
    ----------
    group : h5py.Group or h5py.File
        Group, opened writable, that will hold the main dataset.
    data : numpy.ndarray, dask.array.Array or None
        Either 2-D ``(positions, spectroscopic points)`` or N-D with the
        position dimensions then the spectroscopic dimensions, each slowest
        first (``shape == (*pos sizes, *spec sizes)``). Dask data is written
        block by block and never loaded whole. ``None`` creates an empty
        (fill-value) dataset of ``dtype``, to be filled later.
    name : str
        Name of the main dataset; must not contain ``"-"`` or ``"/"``
        (pyUSID reserves ``"-"`` for results groups).
    quantity, units : str
        Physical quantity and units of the data, e.g. ``"Piezoresponse"``, ``"V"``.
    pos_dims, spec_dims : Dimension, sequence of Dimension, or h5py.Dataset
        The position and spectroscopic dimensions, **slowest varying first**
        (the order of the N-D array). Passing an existing main dataset reuses
        its ancillary datasets instead of writing new ones (copies them when
        it lives in another file).
    dtype : numpy dtype, optional
        dtype of the stored data (default: that of ``data``).
    attrs : mapping, optional
        Extra attributes for the main dataset.
    ancillary_suffix : str
        Appended to the names of new ancillary datasets, so that several main
        datasets of different dimensions can share a group
        (``Spectroscopic_Indices_amplitude``).
    **dataset_kwargs
        Passed to :meth:`h5py.Group.create_dataset` (``chunks``, ``compression``...).

    Returns
    -------
    h5py.Dataset
        The new main dataset.

    Examples
    --------
    >>> with h5py.File("scan.h5", "w") as f:                        # doctest: +SKIP
    ...     write_main(f, np.zeros((16, 24, 119), "c8"), name="Raw_Data",
    ...                quantity="Piezoresponse", units="V",
    ...                pos_dims=[Dimension("Y", "m", 16), Dimension("X", "m", 24)],
    ...                spec_dims=Dimension("Frequency", "Hz", 119))
    """
    if not isinstance(name, str) or not name or "-" in name or "/" in name:
        raise ValueError(
            f"main dataset name must be a non-empty str without '-' or '/', got {name!r} "
            "(pyUSID reserves '-' for results groups such as 'Raw_Data-SHO_Fit_000')"
        )
    for label, text in (("quantity", quantity), ("units", units)):
        if not isinstance(text, str):
            raise TypeError(f"{label} must be a str, got {text!r}")
    if name in group:
        raise ValueError(f"{group.name!r} already holds an object named {name!r}; choose another name")

    pos_anc, pos_shape = _ancillaries(group, pos_dims, spectroscopic=False)
    spec_anc, spec_shape = _ancillaries(group, spec_dims, spectroscopic=True)
    n_pos, n_spec = int(np.prod(pos_shape)), int(np.prod(spec_shape))

    if data is not None:
        data = _as_2d(data, pos_shape, spec_shape)
        dtype = data.dtype if dtype is None else np.dtype(dtype)
    elif dtype is None:
        raise TypeError("dtype is required when data is None")

    # validate everything above before touching the file
    pos_inds, pos_vals = _materialise(
        group, pos_anc, "Position", spectroscopic=False, suffix=ancillary_suffix
    )
    spec_inds, spec_vals = _materialise(
        group, spec_anc, "Spectroscopic", spectroscopic=True, suffix=ancillary_suffix
    )
    dset = group.create_dataset(name, shape=(n_pos, n_spec), dtype=dtype, **dataset_kwargs)
    if data is not None:
        _copy_rows(data, dset)

    dset.attrs["quantity"] = quantity
    dset.attrs["units"] = units
    for key, anc in zip(ANCILLARY_NAMES, (pos_inds, pos_vals, spec_inds, spec_vals)):
        dset.attrs[key] = anc.ref
    for key, value in bookkeeping_attrs().items():
        dset.attrs[key] = value
    for key, value in (attrs or {}).items():
        dset.attrs[key] = value
    return dset


def bookkeeping_attrs() -> dict[str, str]:
    """Timestamp, machine and versions, as pyUSID records them."""
    from .. import __version__

    return {
        "timestamp": datetime.now().strftime("%Y_%m_%d-%H_%M_%S"),
        "machine_id": platform.node(),
        "platform": platform.platform(),
        "lazyusid_version": __version__,
        "h5py_version": h5py.__version__,
    }


@dataclass(frozen=True)
class Points:
    """Positions that are a list of points, not a grid: each point's value of every label.

    What a point selection of a scan (``data.isel(Y=[...], X=[...])`` with
    index arrays along one new dimension) keeps of its positions; written as
    position ancillaries whose rows are the points (they do not tile a grid,
    so :func:`~lazyusid.open_usid` gives a ``Position`` dimension with one
    coordinate per label).
    """

    labels: tuple[str, ...]
    units: tuple[str, ...]
    values: np.ndarray  # (points, labels)


def _ancillaries(group, dims, *, spectroscopic: bool):
    """Return (dimensions-or-existing-datasets, N-D shape) without writing anything."""
    if isinstance(dims, Points) and not spectroscopic:
        return dims, (int(dims.values.shape[0]),)
    if isinstance(dims, h5py.Dataset):
        from .layout import read_layout

        layout = read_layout(dims)
        part = layout.spec if spectroscopic else layout.pos
        prefix = "Spectroscopic" if spectroscopic else "Position"
        existing = (
            dims.file[dims.attrs[f"{prefix}_Indices"]],
            dims.file[dims.attrs[f"{prefix}_Values"]],
        )
        if existing[0].file != group.file:  # another file: copy them (references cannot cross files)
            return ("copy", *existing), part.shape
        return existing, part.shape
    what = "spec_dims" if spectroscopic else "pos_dims"
    dims = parse_dimensions(dims, what)
    return dims, tuple(d.size for d in dims)


def _materialise(group, anc, prefix: str, *, spectroscopic: bool, suffix: str = ""):
    if not isinstance(anc, Points) and isinstance(anc[0], h5py.Dataset):
        return anc
    names = [f"{prefix}_Indices{suffix}", f"{prefix}_Values{suffix}"]
    clash = [n for n in names if n in group]
    if clash:
        raise ValueError(
            f"{group.name!r} already holds {clash}; write this main dataset into its own group, "
            "or pass an existing main dataset as pos_dims/spec_dims to share its ancillaries"
        )
    if isinstance(anc, Points):  # each label's index: the rank of its value among the points' values
        values = np.asarray(anc.values, dtype=np.float64)
        indices = np.stack([np.unique(col, return_inverse=True)[1] for col in values.T], axis=1)
        names_units = list(zip(anc.labels, anc.units))
    elif anc[0] == "copy":
        for n, source in zip(names, anc[1:]):
            group.copy(source, n)
        return tuple(group[n] for n in names)
    else:
        indices, values = build_ancillary(anc)
        if not spectroscopic:
            indices, values = indices.T, values.T
        names_units = [(d.name, d.units) for d in anc]
    # byte strings as pyUSID stores them, UTF-8 encoded (np.array(..., "S") accepts only ASCII: "µm")
    labels = np.array([n.encode() for n, _ in names_units], dtype="S")
    units = np.array([u.encode() for _, u in names_units], dtype="S")
    out = []
    for n, arr in zip(names, (indices, values)):
        ds = group.create_dataset(n, data=np.ascontiguousarray(arr))
        ds.attrs["labels"] = labels
        ds.attrs["units"] = units
        ds.attrs["type"] = np.zeros(len(names_units), dtype=np.int64)
        out.append(ds)
    return tuple(out)


def _as_2d(data, pos_shape, spec_shape):
    """Check the shape of ``data`` against the dimensions and flatten to 2-D."""
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    n_pos, n_spec = int(np.prod(pos_shape)), int(np.prod(spec_shape))
    shape = tuple(data.shape)
    if shape == (n_pos, n_spec):
        return data
    if shape == tuple(pos_shape) + tuple(spec_shape):
        return data.reshape(n_pos, n_spec)
    raise ValueError(
        f"data of shape {shape} does not match the dimensions: expected "
        f"{tuple(pos_shape) + tuple(spec_shape)} (positions then spectroscopic, slowest first) "
        f"or 2-D {(n_pos, n_spec)}"
    )


def _copy_rows(data, dset: h5py.Dataset) -> None:
    """Copy 2-D numpy or dask data into ``dset`` a block of rows at a time."""
    n_pos, n_spec = dset.shape
    row_bytes = max(1, n_spec * dset.dtype.itemsize)
    step = max(1, _WRITE_BLOCK_BYTES // row_bytes)
    is_dask = hasattr(data, "dask")
    for start in range(0, n_pos, step):
        block = data[start : start + step]
        if is_dask:
            block = block.compute()
        dset[start : start + step] = np.asarray(block, dtype=dset.dtype)
