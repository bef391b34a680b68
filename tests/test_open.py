"""open_usid: pyUSID files, laziness, pickling, distributed compute and chunking."""

from __future__ import annotations

import io
import pickle

import dask.array
import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import random_data

import lazyusid.io.open
from lazyusid import Dimension, open_usid

# --- files written by pyUSID --------------------------------------------------------------------


def _write_with_pyusid(pyusid, path, data_nd, pos, spec, *, slow_to_fast):
    """Write ``data_nd`` with pyUSID; ``pos``/``spec`` list (name, units, values), slowest first."""
    n_pos = int(np.prod([len(v) for _, _, v in pos]))
    pos_dims = [pyusid.Dimension(n, u, v) for n, u, v in pos]
    spec_dims = [pyusid.Dimension(n, u, v) for n, u, v in spec]
    if not slow_to_fast:  # pyUSID's default: dimensions listed fastest first
        pos_dims, spec_dims = pos_dims[::-1], spec_dims[::-1]
    with h5py.File(path, "w") as f:
        group = f.create_group("Measurement_000").create_group("Channel_000")
        dset = pyusid.hdf_utils.write_main_dataset(
            group,
            data_nd.reshape(n_pos, -1),
            "Raw_Data",
            "Current",
            "nA",
            pos_dims,
            spec_dims,
            slow_to_fast=slow_to_fast,
        )
        return dset.name


PYUSID_CASES = {
    "Y16xX24|F7": (
        [("Y", "m", np.linspace(0, 1, 16)), ("X", "m", np.arange(24) * 0.5)],
        [("Frequency", "Hz", np.linspace(1e5, 2e5, 7))],
    ),
    "Z3xY4xX5|B3xF5": (
        [
            ("Z", "nm", np.array([1.0, 2.0, 4.0])),
            ("Y", "um", np.arange(4.0)),
            ("X", "um", np.arange(5) - 2.0),
        ],
        [("Bias", "V", np.array([-1.0, 0.0, 1.0])), ("Frequency", "Hz", np.arange(5) * 10.0)],
    ),
}


@pytest.mark.parametrize("slow_to_fast", [False, True], ids=["pyusid-default-fast-first", "slow_to_fast"])
@pytest.mark.parametrize("case", list(PYUSID_CASES))
def test_pyusid_files_open_like_get_n_dim_form(pyusid, tmp_path, case, slow_to_fast):
    pos, spec = PYUSID_CASES[case]
    data = random_data(tuple(len(v) for _, _, v in pos + spec), "c8", seed=11)
    path = tmp_path / "pyusid.h5"
    dataset = _write_with_pyusid(pyusid, path, data, pos, spec, slow_to_fast=slow_to_fast)
    arr = open_usid(path)
    assert arr.attrs["usid_dataset"] == dataset
    assert arr.attrs["quantity"] == "Current"
    assert arr.attrs["units"] == "nA"
    with h5py.File(path) as f:
        usid = pyusid.USIDataset(f[dataset])
        labels = usid.pos_dim_labels + usid.spec_dim_labels
        reference = usid.get_n_dim_form()
        pos_values = {n: usid.get_pos_values(n) for n in usid.pos_dim_labels}
        spec_values = {n: usid.get_spec_values(n) for n in usid.spec_dim_labels}
    assert list(arr.dims) == labels == [n for n, _, _ in pos + spec]
    np.testing.assert_array_equal(arr.values, reference)
    np.testing.assert_array_equal(arr.values, data)
    for name, values in {**pos_values, **spec_values}.items():
        np.testing.assert_array_equal(arr[name].values, values)
    for name, units, _ in pos + spec:
        assert arr[name].attrs["units"] == units


# --- laziness -------------------------------------------------------------------------------


def test_open_usid_computes_and_reads_nothing(usid_file, raise_if_dask_computes, rows_read):
    with raise_if_dask_computes():
        arr = open_usid(usid_file.path)
        arr2 = open_usid(usid_file.path, chunk_bytes="1KiB")
        sub = arr.isel(X=slice(2, 5)).sel(Frequency=arr.Frequency[:3])
        repr(arr2)
    assert rows_read == []
    assert isinstance(arr.data, dask.array.Array)
    np.testing.assert_array_equal(sub.values, usid_file.data[:, 2:5, :3])
    assert rows_read  # computing reads


def test_open_dataset_engine_computes_and_reads_nothing(usid_file, raise_if_dask_computes, rows_read):
    with raise_if_dask_computes():
        ds = xr.open_dataset(usid_file.path, engine="usid")
        ds_chunked = xr.open_dataset(usid_file.path, engine="usid", chunks={})
        repr(ds)
        repr(ds_chunked)
    assert rows_read == []
    np.testing.assert_array_equal(ds["Raw_Data"].values, usid_file.data)


def test_only_needed_rows_are_read(usid_file, rows_read):
    arr = open_usid(usid_file.path, chunk_bytes="1KiB")  # one Y row (24 positions) per chunk
    np.testing.assert_array_equal(arr.isel(Y=3).values, usid_file.data[3])
    assert rows_read == [(3 * 24, 4 * 24)]


# --- pickling and the distributed scheduler -----------------------------------------------------------


class _H5pyDetector(pickle.Pickler):
    """A pickler that records every h5py object it meets while pickling."""

    def __init__(self):
        super().__init__(io.BytesIO())
        self.found = []

    def reducer_override(self, obj):
        if type(obj).__module__.split(".")[0] == "h5py":
            self.found.append(obj)
        return NotImplemented


def test_graph_pickles_and_holds_no_h5py_objects(usid_file):
    arr = open_usid(usid_file.path, chunk_bytes="2KiB")
    assert arr.data.npartitions > 1
    restored = pickle.loads(pickle.dumps(arr.data))
    np.testing.assert_array_equal(restored.compute(scheduler="sync"), usid_file.data)
    graph = dict(arr.data.__dask_graph__())
    assert graph
    for key, value in graph.items():
        detector = _H5pyDetector()
        detector.dump(value)
        assert not detector.found, f"task {key!r} holds h5py objects {detector.found}"
    # the whole DataArray (coords and attrs too) pickles
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(arr)).values, usid_file.data)


def test_h5source_pickles(usid_file):
    src = lazyusid.io.open.H5Source(usid_file.path, usid_file.dataset, (16, 24), (9,), np.float32)
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[2:4], usid_file.data[2:4])
    np.testing.assert_array_equal(clone[5, 3:7, ::2], usid_file.data[5, 3:7, ::2])


@pytest.mark.parametrize(
    ("key", "expected_rows"),
    [
        ((5,), [(5 * 24, 6 * 24)]),
        ((-1, slice(2, 4)), [(15 * 24, 16 * 24)]),
        ((slice(2, 11, 4),), [(2 * 24, 11 * 24)]),
        ((slice(3, 3),), [(3 * 24, 3 * 24)]),
        (([1, 4],), [(0, 16 * 24)]),
    ],
    ids=["int", "negative-int", "strided", "empty", "list"],
)
def test_h5source_reads_only_the_rows_a_key_needs(usid_file, rows_read, key, expected_rows):
    src = lazyusid.io.open.H5Source(usid_file.path, usid_file.dataset, (16, 24), (9,), np.float32)
    np.testing.assert_array_equal(src[key], usid_file.data[key])
    assert rows_read == expected_rows


def test_computes_on_a_process_cluster(usid_file, dask_client):
    arr = open_usid(usid_file.path, chunk_bytes="2KiB")
    assert arr.data.npartitions > 1
    with h5py.File(usid_file.path, "r") as f:
        reference = f[usid_file.dataset][()].reshape(16, 24, 9)
    np.testing.assert_array_equal(reference, usid_file.data)

    np.testing.assert_array_equal(arr.compute(scheduler=dask_client).values, reference)
    sub = arr.isel(Y=slice(3, 11), X=[0, 5, 23]).sel(Frequency=arr.Frequency.values[2:6])
    np.testing.assert_array_equal(
        sub.compute(scheduler=dask_client).values, reference[3:11][:, [0, 5, 23], 2:6]
    )
    mean = arr.mean("Frequency").compute(scheduler=dask_client)
    assert mean.dims == ("Y", "X")
    np.testing.assert_allclose(mean.values, reference.mean(axis=-1), rtol=1e-6)
    np.testing.assert_array_equal(mean["X"].values, arr["X"].values)


# --- chunking ------------------------------------------------------------------------------------


def test_default_chunks_keep_spectra_whole(usid_file):
    arr = open_usid(usid_file.path)
    assert arr.chunks == ((16,), (24,), (9,))


@pytest.mark.parametrize("chunk_bytes", ["1KiB", 2000, "4KiB", 24 * 9 * 4 * 5])
def test_chunk_bytes_splits_only_positions(write_usid, chunk_bytes):
    written = write_usid(
        [Dimension("Z", "m", 3), Dimension("Y", "m", 4), Dimension("X", "m", 5)],
        [Dimension("Bias", "V", 3), Dimension("Frequency", "Hz", 8)],
        dtype="c8",
    )
    arr = open_usid(written.path, chunk_bytes=chunk_bytes)
    for dim in ("Bias", "Frequency"):
        assert arr.chunksizes[dim] == (arr.sizes[dim],)
    np.testing.assert_array_equal(arr.values, written.data)


def test_small_chunk_bytes_give_many_chunks(usid_file):
    arr = open_usid(usid_file.path, chunk_bytes="1KiB")
    # one Y row (24 spectra × 9 × 4 bytes = 864 bytes) per chunk
    assert arr.chunks == ((1,) * 16, (24,), (9,))
    np.testing.assert_array_equal(arr.values, usid_file.data)
    arr = open_usid(usid_file.path, chunk_bytes=5 * 864 + 1)
    assert arr.chunks[0] == (5, 5, 5, 1)
    np.testing.assert_array_equal(arr.values, usid_file.data)


def test_chunk_bytes_with_a_leading_single_step_dimension(write_usid):
    written = write_usid(
        [Dimension("Z", "m", 1), Dimension("Y", "m", 16), Dimension("X", "m", 24)],
        [Dimension("Frequency", "Hz", 9)],
    )
    arr = open_usid(written.path, chunk_bytes="1KiB")
    assert arr.dims == ("Z", "Y", "X", "Frequency")
    assert arr.data.npartitions == 16  # split along Y, not one chunk of everything
    np.testing.assert_array_equal(arr.values, written.data)


def test_single_position(write_usid):
    written = write_usid(
        [Dimension("X", "m", 1)], [Dimension("Bias", "V", 3), Dimension("Frequency", "Hz", 4)]
    )
    arr = open_usid(written.path, chunk_bytes=1)
    assert arr.shape == (1, 3, 4)
    np.testing.assert_array_equal(arr.values, written.data)


# ---------------------------------------------------------------------------
# a file whose main-dataset candidates are all invalid says which and why


@pytest.fixture
def invalid_candidates(write_usid):
    """Two datasets that look like main datasets (2-D, ancillary attributes) and are not valid ones."""
    usid = write_usid(filename="broken.h5")
    with h5py.File(usid.path, "r+") as f:
        main = f[usid.dataset]
        del main.attrs["Spectroscopic_Values"]
        other = main.parent.create_dataset("Other", data=np.zeros((usid.data_2d.shape[0], 2)))
        other.attrs["Position_Indices"] = main.attrs["Position_Indices"]  # only one of the four
        f.create_dataset("plain", data=np.zeros((3, 3)))  # 2-D without ancillaries: not a candidate
        f["one_d"] = np.zeros(3)
        f["one_d"].attrs["Position_Indices"] = main.attrs["Position_Indices"]  # 1-D: not a candidate
    return usid


def test_open_usid_names_each_invalid_candidate_and_why(invalid_candidates):
    usid = invalid_candidates
    with pytest.raises(lazyusid.DatasetSelectionError) as info:
        lazyusid.open_usid(usid.path)
    message = str(info.value)
    first = message.split("\n")[0]
    assert "holds no USID main dataset: 2 datasets look like main datasets but are not valid" in first
    assert f"{usid.dataset}: attribute 'Spectroscopic_Values'" in message
    assert "/Measurement_000/Channel_000/Other: attribute 'quantity' is missing" in message
    assert "plain" not in message and "one_d" not in message
