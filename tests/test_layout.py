"""Validation of main datasets (never writing), and layouts: incomplete and fast-first dimensions."""

from __future__ import annotations

import hashlib
import os
import re

import h5py
import numpy as np
import pytest
from conftest import random_data

import lazyusid
from lazyusid import Dimension, InvalidUSIDError, open_usid, validate_main

MAIN = "/Measurement_000/Channel_000/Raw_Data"
GROUP = "/Measurement_000/Channel_000"


def sha256(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _anc(f, key):
    return f[f[MAIN].attrs[key]]


def _replace_anc(f, key, data):
    """Replace an ancillary dataset by ``data``, keeping its attributes, and re-point the reference."""
    old = _anc(f, key)
    attrs = dict(old.attrs)
    name = old.name
    del f[name]
    new = f.create_dataset(name, data=data)
    for k, v in attrs.items():
        new.attrs[k] = v
    f[MAIN].attrs[key] = new.ref


def break_not_2d(f):
    attrs = dict(f[MAIN].attrs)
    data = f[MAIN][()]
    del f[MAIN]
    dset = f.create_dataset(MAIN, data=data.reshape(16, 24, 9))
    for k, v in attrs.items():
        dset.attrs[k] = v


def break_labels_count(f):
    for key in ("Position_Indices", "Position_Values"):
        _anc(f, key).attrs["labels"] = np.array([b"Z", b"Y", b"X"])


def break_spec_tiling(f):
    inds = _anc(f, "Spectroscopic_Indices")[()]
    inds[0, 3] = 2
    _anc(f, "Spectroscopic_Indices")[...] = inds


BREAKERS = {
    "not-2d": (break_not_2d, r"must be 2-D \(positions, spectroscopic points\) but has shape \(16, 24, 9\)"),
    "quantity-missing": (lambda f: f[MAIN].attrs.__delitem__("quantity"), r"attribute 'quantity' is missing"),
    "units-missing": (lambda f: f[MAIN].attrs.__delitem__("units"), r"attribute 'units' is missing"),
    "quantity-not-str": (
        lambda f: f[MAIN].attrs.__setitem__("quantity", 5),
        r"attribute 'quantity' must be a string, found .*5",
    ),
    "units-not-str": (
        lambda f: f[MAIN].attrs.__setitem__("units", np.array([1.0, 2.0])),
        r"attribute 'units' must be a string",
    ),
    **{
        f"{key}-missing": (
            (lambda k: lambda f: f[MAIN].attrs.__delitem__(k))(key),
            rf"attribute '{key}' \(an object reference to the ancillary dataset\) is missing",
        )
        for key in ("Position_Indices", "Position_Values", "Spectroscopic_Indices", "Spectroscopic_Values")
    },
    "reference-to-group": (
        lambda f: f[MAIN].attrs.__setitem__("Spectroscopic_Values", f[GROUP].ref),
        rf"attribute 'Spectroscopic_Values' refers to '{GROUP}', a Group, not a dataset",
    ),
    "reference-not-a-reference": (
        lambda f: f[MAIN].attrs.__setitem__("Position_Values", "Position_Values"),
        r"attribute 'Position_Values' must be an HDF5 object reference",
    ),
    "inds-vals-shape-mismatch": (
        lambda f: _replace_anc(f, "Position_Values", np.zeros((16 * 24, 3), "f4")),
        r"position indices and values have different shapes: .* are \(384, 2\) and \(384, 3\)",
    ),
    "inds-rows-vs-main": (
        lambda f: [
            _replace_anc(f, key, _anc(f, key)[:380]) for key in ("Position_Indices", "Position_Values")
        ],
        r"position indices '.*/Position_Indices' have 380 rows .* main dataset has 384 position points",
    ),
    "spec-columns-vs-main": (
        lambda f: [
            _replace_anc(f, key, _anc(f, key)[:, :8])
            for key in ("Spectroscopic_Indices", "Spectroscopic_Values")
        ],
        r"spectroscopic indices '.*' have 8 columns .* main dataset has 9 spectroscopic points",
    ),
    "labels-missing-on-indices": (
        lambda f: _anc(f, "Position_Indices").attrs.__delitem__("labels"),
        rf"attribute 'labels' is missing on position ancillary dataset '{GROUP}/Position_Indices'",
    ),
    "labels-missing-on-values": (
        lambda f: _anc(f, "Spectroscopic_Values").attrs.__delitem__("labels"),
        rf"attribute 'labels' is missing on spectroscopic ancillary dataset '{GROUP}/Spectroscopic_Values'",
    ),
    "labels-differ": (
        lambda f: _anc(f, "Position_Values").attrs.__setitem__("labels", np.array([b"Y", b"Z"])),
        r"'labels' differ between .*Position_Indices.* and .*Position_Values.*: \['Y', 'X'\] vs \['Y', 'Z'\]",
    ),
    "units-differ": (
        lambda f: _anc(f, "Spectroscopic_Indices").attrs.__setitem__("units", np.array([b"kHz"])),
        r"'units' differ between .*: \['kHz'\] vs \['Hz'\]",
    ),
    "labels-count": (
        break_labels_count,
        r"'labels' of .*Position_Indices' lists 3 entries .* describes 2 dimensions",
    ),
    "spec-not-tiling": (break_spec_tiling, r"spectroscopic indices .* do not tile a grid"),
}


@pytest.fixture(params=list(BREAKERS))
def broken_file(request, usid_file):
    breaker, message = BREAKERS[request.param]
    with h5py.File(usid_file.path, "r+") as f:
        breaker(f)
    return usid_file.path, message


def _unchanged(path):
    return sha256(path), os.stat(path).st_mtime_ns


def test_validation_names_dataset_and_piece_and_never_writes(broken_file):
    path, message = broken_file
    before = _unchanged(path)
    with h5py.File(path, "r") as f:
        with pytest.raises(InvalidUSIDError, match=message) as info:
            validate_main(f[MAIN])
        assert not lazyusid.is_main(f[MAIN])
    assert isinstance(info.value, ValueError)
    assert f"'{MAIN}' in '{path}' is not a USID main dataset" in str(info.value)
    with pytest.raises(InvalidUSIDError, match=message):
        open_usid(path, dataset=MAIN)
    with pytest.raises(lazyusid.DatasetSelectionError, match="holds no USID main dataset"):
        open_usid(path)  # the broken dataset is not offered as a main dataset
    assert _unchanged(path) == before


def test_valid_file_unchanged_by_validation(usid_file):
    before = _unchanged(usid_file.path)
    with h5py.File(usid_file.path, "r") as f:
        validate_main(f[MAIN])
        assert lazyusid.is_main(f[MAIN])
        layout = lazyusid.read_layout(f[MAIN])
    open_usid(usid_file.path).values  # noqa: B018 - read every byte
    assert _unchanged(usid_file.path) == before
    assert layout.dims == ("Y", "X", "Frequency")
    assert layout.nd_shape == (16, 24, 9)


def test_validate_group_is_invalid(usid_file):
    with h5py.File(usid_file.path, "r") as f:
        with pytest.raises(InvalidUSIDError, match=re.escape(f"'{GROUP}' in '{usid_file.path}' is a Group")):
            validate_main(f[GROUP])
        assert not lazyusid.is_main(f[GROUP])


# --- incomplete position dimensions ------------------------------------------------------------------


def _grid_ancillaries(ny, nx):
    inds = np.indices((ny, nx)).reshape(2, -1).T  # (N_pos, 2), Y slowest
    vals = np.column_stack([inds[:, 0] * 0.5, inds[:, 1] * 0.25])
    return inds, vals


SPEC = {
    "spec_inds": np.arange(9)[None],
    "spec_vals": np.linspace(1, 2, 9)[None],
    "spec_labels": ["Frequency"],
    "spec_units": ["Hz"],
}


def assert_flat_positions(arr, data_2d, pos_vals):
    assert arr.dims == ("Position", "Frequency")
    assert arr.sizes["Position"] == data_2d.shape[0]
    assert "Position" not in arr.coords or arr.coords["Position"].dims == ("Position",)
    for i, label in enumerate(("Y", "X")):
        coord = arr.coords[label]
        assert coord.dims == ("Position",)
        np.testing.assert_array_equal(coord.values, pos_vals[:, i].astype("f4"))
        assert coord.attrs["units"] == "m"
    np.testing.assert_array_equal(arr.values, data_2d)
    np.testing.assert_array_equal(arr.coords["Frequency"].values, SPEC["spec_vals"][0].astype("f4"))


def test_incomplete_dimensions_attribute_gives_flat_position(write_raw_usid):
    inds, vals = _grid_ancillaries(4, 6)
    data = random_data((24, 9), "f4")
    path, _ = write_raw_usid(
        data,
        inds,
        vals,
        ["Y", "X"],
        ["m", "m"],
        **SPEC,
        pos_attrs={"incomplete_dimensions": np.array([b"Y", b"X"])},
    )
    assert_flat_positions(open_usid(path), data, vals)


def test_aborted_grid_gives_flat_position(write_raw_usid):
    inds, vals = _grid_ancillaries(4, 6)
    inds, vals = inds[:-5], vals[:-5]  # the scan stopped 5 positions early
    data = random_data((19, 9), "c8")
    path, _ = write_raw_usid(data, inds, vals, ["Y", "X"], ["m", "m"], **SPEC)
    assert_flat_positions(open_usid(path), data, vals)
    chunked = open_usid(path, chunk_bytes=4 * 9 * 8)  # 4 spectra of complex64 per chunk
    assert chunked.chunks == ((4, 4, 4, 4, 3), (9,))
    assert_flat_positions(chunked, data, vals)


def test_random_positions_give_flat_position(write_raw_usid):
    rng = np.random.default_rng(7)
    n = 30
    vals = rng.uniform(-1, 1, size=(n, 2))
    inds = np.column_stack([np.arange(n), np.arange(n)])  # as pyUSID writes INCOMPLETE dimensions
    data = random_data((n, 9), "f4", seed=1)
    path, _ = write_raw_usid(data, inds, vals, ["Y", "X"], ["m", "m"], **SPEC)
    assert_flat_positions(open_usid(path), data, vals)


def test_pyusid_incomplete_dimensions_open_flat(pyusid, tmp_path):
    n = 20
    r = np.linspace(0, 1, n)
    x, y = r * np.cos(8 * r), r * np.sin(8 * r)  # a spiral scan
    data = random_data((n, 9), "f4", seed=2)
    incomplete = pyusid.DimType.INCOMPLETE
    path = tmp_path / "spiral.h5"
    with h5py.File(path, "w") as f:
        # write_main_dataset itself refuses INCOMPLETE dimensions (it multiplies their sizes),
        # so write the position ancillaries first, as pyUSID translators do
        pos_inds, pos_vals = pyusid.hdf_utils.write_ind_val_dsets(
            f,
            [pyusid.Dimension("Y", "m", y, mode=incomplete), pyusid.Dimension("X", "m", x, mode=incomplete)],
            is_spectral=False,
            slow_to_fast=True,
        )
        pyusid.hdf_utils.write_main_dataset(
            f,
            data,
            "Raw_Data",
            "Amplitude",
            "V",
            None,
            pyusid.Dimension("Frequency", "Hz", SPEC["spec_vals"][0]),
            h5_pos_inds=pos_inds,
            h5_pos_vals=pos_vals,
        )
        stored_vals = pos_vals[()]
        labels = [s.decode() if isinstance(s, bytes) else s for s in pos_vals.attrs["labels"]]
    arr = open_usid(path)
    assert arr.dims == ("Position", "Frequency")
    assert sorted(labels) == ["X", "Y"]
    for i, label in enumerate(labels):
        np.testing.assert_array_equal(arr.coords[label].values, stored_vals[:, i])
    np.testing.assert_array_equal(arr.coords["X"].values, x.astype("f4"))
    np.testing.assert_array_equal(arr.values, data)


# --- dimensions stored fastest first ------------------------------------------------------------------


def test_fast_first_labels_keep_file_order(pyusid, write_raw_usid):
    ny, nx, nb, nf = 4, 6, 3, 5
    nd_slow_first = random_data((ny, nx, nb, nf), "c8", seed=5)
    grid = np.indices((ny, nx)).reshape(2, -1)  # rows: Y, X; X fastest
    pos_inds = grid[::-1].T  # columns X, Y: the fast dimension is listed first
    pos_vals = np.column_stack([grid[1] * 0.1, grid[0] * 2.0])
    spec_grid = np.indices((nb, nf)).reshape(2, -1)  # Bias slow, Frequency fast
    spec_inds = spec_grid[::-1]  # rows Frequency, Bias
    spec_vals = np.vstack([spec_grid[1] * 10.0, spec_grid[0] - 1.0])
    path, dataset = write_raw_usid(
        nd_slow_first.reshape(ny * nx, nb * nf),
        pos_inds,
        pos_vals,
        ["X", "Y"],
        ["um", "nm"],
        spec_inds,
        spec_vals,
        ["Frequency", "Bias"],
        ["Hz", "V"],
    )
    arr = open_usid(path, chunk_bytes=nx * nb * nf * 8)  # one Y row per chunk
    assert arr.dims == ("X", "Y", "Frequency", "Bias")
    assert arr.shape == (nx, ny, nf, nb)
    np.testing.assert_array_equal(arr.values, nd_slow_first.transpose(1, 0, 3, 2))
    np.testing.assert_array_equal(arr["X"].values, np.arange(nx, dtype="f4") * np.float32(0.1))
    np.testing.assert_array_equal(arr["Y"].values, np.arange(ny) * 2.0)
    np.testing.assert_array_equal(arr["Bias"].values, np.arange(nb) - 1.0)
    assert arr["X"].attrs["units"] == "um"
    # chunks split only the slowest dimension (Y), never the spectroscopic ones
    assert arr.chunks == ((nx,), (1,) * ny, (nf,), (nb,))
    with h5py.File(path) as f:
        usid = pyusid.USIDataset(f[dataset])
        assert usid.pos_dim_labels + usid.spec_dim_labels == list(arr.dims)
        np.testing.assert_array_equal(usid.get_n_dim_form(), arr.values)
        for name in ("X", "Y"):
            np.testing.assert_array_equal(usid.get_pos_values(name), arr[name].values)
        for name in ("Frequency", "Bias"):
            np.testing.assert_array_equal(usid.get_spec_values(name), arr[name].values)


def test_layout_reports_sorted_shape(write_usid):
    written = write_usid(
        [Dimension("Z", "m", 3), Dimension("Y", "m", 4), Dimension("X", "m", 5)],
        [Dimension("Bias", "V", 2), Dimension("Frequency", "Hz", 7)],
    )
    with h5py.File(written.path) as f:
        layout = lazyusid.read_layout(f[written.dataset])
    assert layout.pos.complete and layout.spec.complete
    assert layout.pos.sorted_shape == (3, 4, 5)
    assert layout.pos.order == (0, 1, 2)
    assert layout.nd_shape == (3, 4, 5, 2, 7)
    assert layout.dims == ("Z", "Y", "X", "Bias", "Frequency")


def _pos_values(path, dataset):
    with h5py.File(path) as f:
        return lazyusid.read_layout(f[dataset]).pos.values


def test_layout_analysis_reused_only_while_the_file_is_unchanged(usid_file):
    first = _pos_values(usid_file.path, usid_file.dataset)
    assert _pos_values(usid_file.path, usid_file.dataset) is first  # unchanged file: not analysed again
    with h5py.File(usid_file.path, "r+") as f:  # same datasets, same shape, new values
        vals = _anc(f, "Position_Values")
        vals[...] = vals[()] * 2 + 1
    changed = _pos_values(usid_file.path, usid_file.dataset)
    assert changed is not first
    for old, new in zip(first, changed):
        np.testing.assert_array_equal(new, old * 2 + 1)


def test_layouts_remembered_through_own_writes_within_a_computation(usid_file):
    from lazyusid.usid.layout import remembering_layouts

    with remembering_layouts():
        first = _pos_values(usid_file.path, usid_file.dataset)
        with h5py.File(usid_file.path, "r+") as f:  # the computation's own writes: a new group
            f.create_group("results")
        assert _pos_values(usid_file.path, usid_file.dataset) is first
    with h5py.File(usid_file.path, "r+") as f:
        f.create_group("more")
    assert _pos_values(usid_file.path, usid_file.dataset) is not first  # outside: the file changed


def test_layout_memo_keeps_files_apart(write_usid, tmp_path):
    a = write_usid(filename="a.h5")
    b = write_usid([Dimension("Y", "m", np.arange(16) * 3.0), Dimension("X", "m", 24)], filename="b.h5")
    va, vb = _pos_values(a.path, a.dataset), _pos_values(b.path, b.dataset)
    assert not np.array_equal(va[0], vb[0])
    assert _pos_values(a.path, a.dataset) is va
