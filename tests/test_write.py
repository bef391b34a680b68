"""write_main: round trips through open_usid, dask input block by block, pyUSID reads our files."""

from __future__ import annotations

import dask
import h5py
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from conftest import random_data
from hypothesis import given, settings
from hypothesis import strategies as st

import lazyusid
import lazyusid.usid.write
from lazyusid import Dimension, open_usid, write_main

POS_CASES = {
    "X24": [Dimension("X", "m", np.linspace(0, 1e-6, 24))],
    "Y16xX24": [Dimension("Y", "m", np.linspace(0, 3e-6, 16)), Dimension("X", "m", np.arange(24) * 0.25)],
    "Z3xY4xX5": [
        Dimension("Z", "nm", np.array([10.0, 20.0, 40.0])),
        Dimension("Y", "um", np.arange(4) + 0.5),
        Dimension("X", "um", -np.arange(5.0)),
    ],
}
SPEC_CASES = {
    "F7": [Dimension("Frequency", "Hz", np.linspace(300e3, 310e3, 7))],
    "B3xF5": [Dimension("Bias", "V", np.array([-1.0, 0.0, 1.0])), Dimension("Frequency", "Hz", 5)],
}


def assert_matches_dims(arr, pos_dims, spec_dims):
    dims = list(pos_dims) + list(spec_dims)
    assert arr.dims == tuple(d.name for d in dims)
    assert arr.shape == tuple(d.size for d in dims)
    for d in dims:
        coord = arr.coords[d.name]
        assert coord.dtype == np.float32
        np.testing.assert_array_equal(coord.values, d.values.astype(np.float32))
        assert coord.attrs["units"] == d.units


@pytest.mark.parametrize("pos_key", list(POS_CASES))
@pytest.mark.parametrize("spec_key", list(SPEC_CASES))
@pytest.mark.parametrize("dtype", ["f4", "c8", "i2"])
def test_round_trip_nd(write_usid, pos_key, spec_key, dtype):
    pos_dims, spec_dims = POS_CASES[pos_key], SPEC_CASES[spec_key]
    written = write_usid(pos_dims, spec_dims, dtype=dtype, quantity="Deflection", units="nm")
    arr = open_usid(written.path)
    assert arr.dtype == np.dtype(dtype)
    assert_matches_dims(arr, pos_dims, spec_dims)
    assert arr.attrs["quantity"] == "Deflection"
    assert arr.attrs["units"] == "nm"
    assert arr.attrs["usid_dataset"] == written.dataset
    np.testing.assert_array_equal(arr.values, written.data)


@pytest.mark.parametrize("pos_key", ["Y16xX24", "Z3xY4xX5"])
def test_2d_and_nd_input_write_the_same_bytes(write_usid, pos_key):
    pos_dims, spec_dims = POS_CASES[pos_key], SPEC_CASES["B3xF5"]
    data = random_data(tuple(d.size for d in pos_dims + spec_dims), "c8")
    nd = write_usid(pos_dims, spec_dims, data=data, filename="nd.h5")
    flat = write_usid(pos_dims, spec_dims, data=data.reshape(-1, 15), filename="flat.h5")
    with h5py.File(nd.path) as f_nd, h5py.File(flat.path) as f_flat:
        assert f_nd[nd.dataset].shape == (data[..., 0, 0].size, 15)
        np.testing.assert_array_equal(f_nd[nd.dataset][()], f_flat[flat.dataset][()])
        np.testing.assert_array_equal(f_nd[nd.dataset][()], data.reshape(-1, 15))
    np.testing.assert_array_equal(open_usid(flat.path).values, data)


def test_ancillaries_as_pyusid_writes_them(usid_file):
    with h5py.File(usid_file.path) as f:
        main = f[usid_file.dataset]
        pos_inds = f[main.attrs["Position_Indices"]]
        pos_vals = f[main.attrs["Position_Values"]]
        spec_inds = f[main.attrs["Spectroscopic_Indices"]]
        spec_vals = f[main.attrs["Spectroscopic_Values"]]
        assert pos_inds.shape == pos_vals.shape == (16 * 24, 2)
        assert spec_inds.shape == spec_vals.shape == (1, 9)
        assert pos_inds.dtype == spec_inds.dtype == np.uint32
        assert pos_vals.dtype == spec_vals.dtype == np.float32
        assert list(pos_inds.attrs["labels"]) == [b"Y", b"X"]
        assert pos_inds.attrs["labels"].dtype.kind == "S"
        # slowest first: the last label varies fastest
        np.testing.assert_array_equal(pos_inds[:3], [[0, 0], [0, 1], [0, 2]])
        np.testing.assert_array_equal(pos_inds[24], [1, 0])


def test_write_main_rejects_bad_input_before_touching_the_file(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        with pytest.raises(ValueError, match=r"data of shape \(5, 7\) does not match the dimensions"):
            write_main(
                f,
                np.zeros((5, 7)),
                name="Raw_Data",
                quantity="Q",
                units="V",
                pos_dims=Dimension("X", "m", 4),
                spec_dims=Dimension("F", "Hz", 7),
            )
        with pytest.raises(ValueError, match="without '-'"):
            write_main(
                f,
                np.zeros((4, 7)),
                name="Raw-Data",
                quantity="Q",
                units="V",
                pos_dims=Dimension("X", "m", 4),
                spec_dims=Dimension("F", "Hz", 7),
            )
        assert list(f) == []


# --- dask input ---------------------------------------------------------------------------


def test_dask_input_written_block_by_block(tmp_path, monkeypatch):
    da = pytest.importorskip("dask.array")
    n_pos, n_spec, chunk_rows, rows_per_block = 60, 7, 5, 8
    data = random_data((n_pos, n_spec), "f4", seed=3)
    computed_chunks = []

    def record(block, block_info=None):
        computed_chunks.append(block_info[None]["chunk-location"][0])
        return block

    source = da.from_array(data, chunks=(chunk_rows, n_spec)).map_blocks(record, dtype=data.dtype)
    assert source.numblocks[0] == 12
    chunks_per_compute = []

    def counting_scheduler(dsk, keys, **kwargs):
        before = len(computed_chunks)
        out = dask.get(dsk, keys, **kwargs)
        chunks_per_compute.append(len(computed_chunks) - before)
        return out

    monkeypatch.setattr(lazyusid.usid.write, "_WRITE_BLOCK_BYTES", rows_per_block * n_spec * 4)
    with h5py.File(tmp_path / "dask.h5", "w") as f, dask.config.set(scheduler=counting_scheduler):
        write_main(
            f,
            source,
            name="Raw_Data",
            quantity="Q",
            units="V",
            pos_dims=[Dimension("Y", "m", 6), Dimension("X", "m", 10)],
            spec_dims=Dimension("F", "Hz", n_spec),
        )
        stored = f["Raw_Data"][()]
    np.testing.assert_array_equal(stored, data)
    # one compute per block of 8 rows, each touching only the 2 or 3 chunks it overlaps
    assert len(chunks_per_compute) == -(-n_pos // rows_per_block)
    assert max(chunks_per_compute) <= 3 < source.numblocks[0]
    assert sorted(set(computed_chunks)) == list(range(12))


def test_small_write_blocks_give_the_same_bytes(tmp_path, monkeypatch):
    da = pytest.importorskip("dask.array")
    data = random_data((3, 4, 5, 6), "c8", seed=4)
    dims = {
        "pos_dims": [Dimension("Z", "m", 3), Dimension("Y", "m", 4), Dimension("X", "m", 5)],
        "spec_dims": Dimension("F", "Hz", 6),
    }
    with h5py.File(tmp_path / "big.h5", "w") as f:
        write_main(f, da.from_array(data, chunks=(1, 2, 5, 6)), name="D", quantity="Q", units="V", **dims)
        big = f["D"][()]
    monkeypatch.setattr(lazyusid.usid.write, "_WRITE_BLOCK_BYTES", 1)  # one row at a time
    with h5py.File(tmp_path / "small.h5", "w") as f:
        write_main(f, da.from_array(data, chunks=(1, 2, 5, 6)), name="D", quantity="Q", units="V", **dims)
        small = f["D"][()]
    assert big.tobytes() == small.tobytes() == data.reshape(60, 6).tobytes()


# --- property: N-D round trip -----------------------------------------------------------------

POS_NAMES, SPEC_NAMES = ("Z", "Y", "X"), ("Bias", "Frequency")


@st.composite
def usid_arrays(draw):
    n_pos = draw(st.integers(1, 3))
    n_spec = draw(st.integers(1, 2))
    pos_sizes = draw(st.lists(st.integers(1, 5), min_size=n_pos, max_size=n_pos))
    spec_sizes = draw(st.lists(st.integers(1, 4), min_size=n_spec, max_size=n_spec))
    dtype = draw(st.sampled_from([np.float32, np.complex64, np.int16]))
    shape = tuple(pos_sizes + spec_sizes)
    elements = st.integers(-1000, 1000) if dtype is np.int16 else st.floats(-1e3, 1e3, width=32)
    data = draw(hnp.arrays(dtype, shape, elements=elements))
    two_d = draw(st.booleans())
    chunk_bytes = draw(st.sampled_from([None, 1, 64]))
    return pos_sizes, spec_sizes, data, two_d, chunk_bytes


@settings(max_examples=25, deadline=None)
@given(case=usid_arrays())
def test_nd_round_trip_property(tmp_path_factory, case):
    pos_sizes, spec_sizes, data, two_d, chunk_bytes = case
    pos_dims = [
        Dimension(n, "m", np.arange(s) * 0.5 + 1)
        for n, s in zip(POS_NAMES[-len(pos_sizes) :], pos_sizes, strict=True)
    ]
    spec_dims = [
        Dimension(n, "Hz", np.arange(s) * 2.0)
        for n, s in zip(SPEC_NAMES[-len(spec_sizes) :], spec_sizes, strict=True)
    ]
    path = tmp_path_factory.mktemp("prop") / "prop.h5"
    given_data = data.reshape(int(np.prod(pos_sizes)), -1) if two_d else data
    with h5py.File(path, "w") as f:
        write_main(f, given_data, name="D", quantity="Q", units="V", pos_dims=pos_dims, spec_dims=spec_dims)
    arr = open_usid(path, chunk_bytes=chunk_bytes)
    assert_matches_dims(arr, pos_dims, spec_dims)
    for dim in arr.dims[len(pos_dims) :]:
        assert arr.chunksizes[dim] == (arr.sizes[dim],)
    np.testing.assert_array_equal(arr.values, data)


# --- pyUSID reads what lazyusid writes -------------------------------------------------------------


@pytest.mark.parametrize("pos_key", list(POS_CASES))
@pytest.mark.parametrize("spec_key", list(SPEC_CASES))
def test_pyusid_reads_lazyusid_files(pyusid, write_usid, pos_key, spec_key):
    pos_dims, spec_dims = POS_CASES[pos_key], SPEC_CASES[spec_key]
    written = write_usid(pos_dims, spec_dims, dtype="c8")
    arr = open_usid(written.path)
    with h5py.File(written.path) as f:
        h5_main = f[written.dataset]
        assert pyusid.hdf_utils.check_if_main(h5_main)
        usid = pyusid.USIDataset(h5_main)
        assert usid.pos_dim_labels + usid.spec_dim_labels == list(arr.dims)
        np.testing.assert_array_equal(usid.get_n_dim_form(), arr.values)
        pos_units = pyusid.hdf_utils.get_unit_values(usid.h5_pos_inds, usid.h5_pos_vals)
        spec_units = pyusid.hdf_utils.get_unit_values(usid.h5_spec_inds, usid.h5_spec_vals)
        for d in pos_dims:
            np.testing.assert_array_equal(usid.get_pos_values(d.name), arr[d.name].values)
            np.testing.assert_array_equal(pos_units[d.name], arr[d.name].values)
        for d in spec_dims:
            np.testing.assert_array_equal(usid.get_spec_values(d.name), arr[d.name].values)
            np.testing.assert_array_equal(spec_units[d.name], arr[d.name].values)


# --- reusing ancillaries, empty datasets, dtype and attrs ---------------------------------------------


def test_results_dataset_reuses_position_ancillaries(pyusid, tmp_path):
    path = tmp_path / "results.h5"
    data = np.arange(4 * 6 * 5, dtype="f8").reshape(4, 6, 5)
    with h5py.File(path, "w") as f:
        group = f.create_group("Measurement_000/Channel_000")
        raw = write_main(
            group,
            data,
            name="Raw_Data",
            quantity="Q",
            units="V",
            pos_dims=[Dimension("Y", "m", 4), Dimension("X", "m", 6)],
            spec_dims=Dimension("Frequency", "Hz", 5),
            dtype="f4",
            attrs={"note": "first scan", "gain": 3},
        )
        results = group.create_group("Raw_Data-Fit_000")
        fit = write_main(
            results,
            None,
            name="Fit",
            quantity="Amplitude",
            units="V",
            pos_dims=raw,
            spec_dims=Dimension("Parameter", "", 3),
            dtype="c8",
        )
        assert fit.shape == (24, 3)
        fit[...] = np.arange(72).reshape(24, 3) * (1 + 1j)
        assert f[fit.attrs["Position_Indices"]].name == f[raw.attrs["Position_Indices"]].name
        assert list(results) == ["Fit", "Spectroscopic_Indices", "Spectroscopic_Values"]
        assert pyusid.hdf_utils.check_if_main(fit)
        with pytest.raises(ValueError, match="already holds an object named 'Raw_Data'"):
            write_main(group, data, name="Raw_Data", quantity="Q", units="V", pos_dims=raw, spec_dims=raw)
        with pytest.raises(
            ValueError, match=r"already holds \['Spectroscopic_Indices', 'Spectroscopic_Values'\]"
        ):
            write_main(
                group,
                data,
                name="Other",
                quantity="Q",
                units="V",
                pos_dims=raw,
                spec_dims=Dimension("F", "", 5),
            )
    raw_arr = open_usid(path, "Raw_Data")
    assert raw_arr.dtype == np.float32
    np.testing.assert_array_equal(raw_arr.values, data.astype("f4"))
    assert raw_arr.attrs["note"] == "first scan" and raw_arr.attrs["gain"] == 3
    fit_arr = open_usid(path, "Fit")
    assert fit_arr.dims == ("Y", "X", "Parameter")
    np.testing.assert_array_equal(fit_arr.values, (np.arange(72) * (1 + 1j)).reshape(4, 6, 3))
    np.testing.assert_array_equal(fit_arr["X"].values, raw_arr["X"].values)


def test_ancillaries_of_a_main_dataset_in_another_file_are_copied(usid_file, tmp_path, pyusid):
    with h5py.File(usid_file.path) as src, h5py.File(tmp_path / "other.h5", "w") as dst:
        source = src[usid_file.dataset]
        dset = write_main(
            dst,
            np.zeros((source.shape[0], 2)),
            name="D",
            quantity="Q",
            units="V",
            pos_dims=source,
            spec_dims=Dimension("F", "Hz", 2),
            ancillary_suffix="_D",
        )
        assert sorted(dst) == [
            "D",
            "Position_Indices_D",
            "Position_Values_D",
            "Spectroscopic_Indices_D",
            "Spectroscopic_Values_D",
        ]
        np.testing.assert_array_equal(dst["Position_Values_D"][()], src[source.attrs["Position_Values"]][()])
        assert pyusid.hdf_utils.check_if_main(dset)
    assert open_usid(tmp_path / "other.h5").sizes == {
        **{k: v for k, v in open_usid(usid_file.path).sizes.items() if k in ("Y", "X")},
        "F": 2,
    }
