"""xr.open_dataset(path, engine="usid")."""

from __future__ import annotations

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr

from lazyusid import Dimension


@pytest.fixture
def shared_dims_file(write_usid):
    """Two main datasets on the same dimensions: Raw_Data (float32) and Fit (complex64)."""
    raw = write_usid(filename="shared.h5")
    fit = write_usid(
        filename="shared.h5",
        group="Measurement_000/Channel_000/Raw_Data-Fit_000",
        name="Fit",
        dtype="c8",
        seed=5,
    )
    return raw, fit


def test_one_variable_per_main_dataset(shared_dims_file):
    raw, fit = shared_dims_file
    ds = xr.open_dataset(raw.path, engine="usid")
    assert set(ds.data_vars) == {"Raw_Data", "Fit"}
    assert ds["Raw_Data"].dims == ds["Fit"].dims == ("Y", "X", "Frequency")
    assert ds.sizes == {"Y": 16, "X": 24, "Frequency": 9}
    np.testing.assert_array_equal(ds["Raw_Data"].values, raw.data)
    np.testing.assert_array_equal(ds["Fit"].values, fit.data)
    assert ds["Fit"].dtype == np.complex64
    assert ds["Raw_Data"].attrs["quantity"] == "Amplitude"
    assert ds["Fit"].attrs["usid_dataset"] == fit.dataset
    np.testing.assert_array_equal(ds["X"].values, raw.pos_dims[1].values.astype("f4"))
    assert ds["Frequency"].attrs["units"] == "Hz"


def test_default_open_reads_on_access(usid_file):
    ds = xr.open_dataset(usid_file.path, engine="usid")  # chunks=None: xarray's lazy arrays
    np.testing.assert_array_equal(ds["Raw_Data"].isel(Y=2).values, usid_file.data[2])


def test_chunks_dict_gives_dask_variables(usid_file):
    ds = xr.open_dataset(usid_file.path, engine="usid", chunks={})
    var = ds["Raw_Data"]
    assert isinstance(var.data, da.Array)
    assert var.chunks == ((16,), (24,), (9,))
    np.testing.assert_array_equal(var.values, usid_file.data)


def test_chunks_dict_keeps_chunk_bytes_chunks(usid_file):
    ds = xr.open_dataset(usid_file.path, engine="usid", chunks={}, chunk_bytes="1KiB")
    assert isinstance(ds["Raw_Data"].data, da.Array)
    assert ds["Raw_Data"].chunks == ((1,) * 16, (24,), (9,))
    np.testing.assert_array_equal(ds["Raw_Data"].values, usid_file.data)


def test_drop_variables(shared_dims_file):
    raw, _ = shared_dims_file
    ds = xr.open_dataset(raw.path, engine="usid", drop_variables=["Fit"])
    assert list(ds.data_vars) == ["Raw_Data"]


def test_repeated_names_use_paths(write_usid):
    first = write_usid(filename="rep.h5")
    second = write_usid(filename="rep.h5", group="Measurement_001/Channel_000", seed=9)
    ds = xr.open_dataset(first.path, engine="usid")
    assert set(ds.data_vars) == {first.dataset.lstrip("/"), second.dataset.lstrip("/")}
    np.testing.assert_array_equal(ds[second.dataset.lstrip("/")].values, second.data)


@pytest.mark.parametrize(
    "other_pos",
    [
        [Dimension("Y", "m", 8), Dimension("X", "m", 24)],  # same name, other size
        [Dimension("Y", "m", np.arange(16) + 100.0), Dimension("X", "m", 24)],  # same size, other values
    ],
    ids=["size", "values"],
)
def test_clashing_dimensions_raise(write_usid, other_pos):
    first = write_usid(filename="clash.h5")
    write_usid(other_pos, filename="clash.h5", group="Measurement_001/Channel_000", name="Other")
    with pytest.raises(
        ValueError, match=r"have clashing dimensions and cannot share one xarray.Dataset"
    ) as info:
        xr.open_dataset(first.path, engine="usid")
    assert "lazyusid.open_usid(path, dataset=...)" in str(info.value)


def test_engine_is_not_guessed(usid_file):
    # h5netcdf claims .h5 files too: the usid engine opens only when asked
    from lazyusid.io.backend import USIDBackendEntrypoint

    assert not USIDBackendEntrypoint().guess_can_open(usid_file.path)
    with h5py.File(usid_file.path) as f:
        assert f[usid_file.dataset].shape == (384, 9)


def test_results_that_clash_are_left_out_with_a_warning(tmp_path):
    import lazyusid

    path = tmp_path / "scan.h5"
    lazyusid.datasets.make_be_pfm(path, n_x=5, n_y=4, n_freq=7)
    data = lazyusid.open_usid(path)
    lazyusid.map_spectra(data.isel(X=slice(1, 3)), lambda s: np.abs(s).max(), store=path, cores=1)
    with pytest.warns(UserWarning, match=r"left out results \['lambda'\].*clash"):
        ds = xr.open_dataset(path, engine="usid", chunks={})
    assert list(ds.data_vars) == ["Raw_Data"]


def test_a_file_of_invalid_candidates_is_an_error_not_an_empty_dataset(write_usid):
    import lazyusid

    usid = write_usid(filename="broken.h5")
    with h5py.File(usid.path, "r+") as f:
        del f[usid.dataset].attrs["units"]
    with pytest.raises(
        lazyusid.DatasetSelectionError,
        match=r"holds no USID main dataset: .*Raw_Data looks like one but attribute 'units' is missing",
    ):
        xr.open_dataset(usid.path, engine="usid")


def test_invalid_candidates_beside_valid_ones_are_named_in_a_warning(write_usid):
    usid = write_usid(filename="mixed.h5")
    with h5py.File(usid.path, "r+") as f:
        bad = f.create_dataset("Bad", data=np.zeros((3, 3)))
        bad.attrs["Spectroscopic_Indices"] = f[usid.dataset].attrs["Spectroscopic_Indices"]
    with pytest.warns(UserWarning, match=r"left out /Bad, which looks like a USID main dataset.*'quantity'"):
        ds = xr.open_dataset(usid.path, engine="usid")
    assert list(ds.data_vars) == [usid.dataset.rsplit("/", 1)[-1]]
