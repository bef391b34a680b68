"""The ``.usid`` accessor, end to end on small generated BE-PFM files.

Every result is compared with a plain NumPy loop over the spectra. The
accessor only delegates to the engine (:func:`lazyusid.map_spectra`,
:func:`lazyusid.apply_at`, :func:`lazyusid.plan_spectra`), so these tests
check what a user sees through it: lazy results, stored results that a
rerun returns without computing, and xarray objects that keep working.
"""

from __future__ import annotations

import os
import shutil

import h5py
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

import lazyusid
from lazyusid.accessor import TextBlock
from lazyusid.datasets import MAIN_DATASET, make_be_pfm

matplotlib.use("Agg")

N_Y, N_X, N_FREQ = 5, 7, 23  # 35 positions: blocks of 4 or 8 do not divide them


class CallCounter:
    """Counts calls of :func:`peak` in this process (it runs in-process with ``cores=1``).

    An object rather than a dict: lazyusid identifies a function with the
    globals it uses, data by value and other objects by class, so the count
    changing does not make :func:`peak` another function.
    """

    n = 0


CALLS = CallCounter()


def peak(spectrum: np.ndarray, scale: float = 1.0) -> float:
    """The largest magnitude of one spectrum, scaled; counts its calls."""
    CALLS.n += 1
    return np.abs(spectrum).max() * scale


def features(spectrum: np.ndarray) -> dict:
    """Three outputs, one of them a vector: the peak, the magnitude spectrum, the phase at the peak."""
    magnitude = np.abs(spectrum)
    i = int(np.argmax(magnitude))
    return {"peak": magnitude[i], "magnitude": magnitude, "phase": np.angle(spectrum[i])}


def peak_reference(values: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """:func:`peak` over ``values`` ``(Y, X, Frequency)`` with a plain loop."""
    out = np.empty(values.shape[:-1], dtype=np.float32)
    for index in np.ndindex(out.shape):
        out[index] = np.abs(values[index]).max() * scale
    return out


def features_reference(values: np.ndarray) -> dict[str, np.ndarray]:
    rows = [features(s) for s in values.reshape(-1, values.shape[-1])]
    shape = values.shape[:-1]
    return {
        k: np.stack([np.asarray(r[k]) for r in rows]).reshape(shape + np.shape(rows[0][k])) for k in rows[0]
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A BE-PFM file (Y=5 × X=7, Frequency=23, complex64) and its values, written once."""
    path = tmp_path_factory.mktemp("source") / "scan.h5"
    make_be_pfm(path, n_x=N_X, n_y=N_Y, n_freq=N_FREQ, seed=3)
    values = lazyusid.open_usid(path).values
    return os.fspath(path), values


@pytest.fixture
def scan(source, tmp_path):
    """A fresh copy of the source file (tests that store results write into it)."""
    path, values = source
    copy = os.fspath(tmp_path / "scan.h5")
    shutil.copyfile(path, copy)
    return copy, values


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.n = 0


def stores(path: str, tmp_path) -> dict[str, str]:
    return {
        "in-file": path,
        "other-hdf5": os.fspath(tmp_path / "results.h5"),
        "zarr": os.fspath(tmp_path / "results.zarr"),
    }


# ---------------------------------------------------------------------------
# map


def test_map_is_lazy_and_equals_a_numpy_loop(scan, raise_if_dask_computes):
    path, values = scan
    data = lazyusid.open_usid(path)
    with raise_if_dask_computes(max_computes=0):
        result = data.usid.map(peak, params={"scale": 2.0}, cores=1, positions_per_block=4)
    assert CALLS.n == 1  # only the call on the first spectrum that infers the output
    assert isinstance(result, xr.DataArray) and result.chunks is not None
    assert result.name == "peak" and result.dims == ("Y", "X") and result.dtype == np.float32
    xr.testing.assert_identical(result.coords.to_dataset(), data.coords.to_dataset().drop_vars("Frequency"))
    np.testing.assert_array_equal(result.values, peak_reference(values, 2.0))
    assert CALLS.n == 1 + N_Y * N_X


def test_map_is_map_spectra(scan):
    path, _ = scan
    data = lazyusid.open_usid(path)
    via_accessor = data.usid.map(features, cores=1).compute()
    direct = lazyusid.map_spectra(data, features, cores=1).compute()
    xr.testing.assert_identical(via_accessor, direct)


@pytest.mark.parametrize("kind", ["in-file", "other-hdf5", "zarr"])
def test_map_into_a_store_then_rerun_returns_it(scan, tmp_path, kind):
    path, values = scan
    store = stores(path, tmp_path)[kind]
    data = lazyusid.open_usid(path)
    expected = peak_reference(values, 2.0)

    stored = data.usid.map(peak, store=store, params={"scale": 2.0}, cores=1, positions_per_block=8)
    assert stored.attrs["usid_rows_computed"] == N_Y * N_X
    assert stored.dims == ("Y", "X") and stored.dtype == np.float32
    np.testing.assert_array_equal(stored.values, expected)
    xr.testing.assert_equal(stored.coords.to_dataset(), data.coords.to_dataset().drop_vars("Frequency"))

    CALLS.n = 0
    again = data.usid.map(peak, store=store, params={"scale": 2.0}, cores=1, positions_per_block=8)
    assert again.attrs["usid_rows_computed"] == 0
    assert CALLS.n == 1  # the output inference only: no block was evaluated
    assert again.attrs["usid_store"] == stored.attrs["usid_store"]
    np.testing.assert_array_equal(again.values, expected)

    # other parameters are another computation: a new HDF5 results group; a zarr store holds one
    if kind == "zarr":
        with pytest.raises(lazyusid.StoreConflictError, match=r"holds results of a different computation"):
            data.usid.map(peak, store=store, cores=1)
        store = os.fspath(tmp_path / "other.zarr")
    other = data.usid.map(peak, store=store, cores=1)
    assert other.attrs["usid_rows_computed"] == N_Y * N_X
    assert kind == "zarr" or other.attrs["usid_store"].endswith("-peak_001")
    np.testing.assert_array_equal(other.values, peak_reference(values))


def test_map_into_the_source_file_writes_a_usid_results_group(scan, pyusid):
    path, values = scan
    data = lazyusid.open_usid(path)
    stored = data.usid.map(peak, store=path, cores=1)
    np.testing.assert_array_equal(stored.values, peak_reference(values))
    group = stored.attrs["usid_store"].split(":", 1)[1]
    assert group == MAIN_DATASET + "-peak_000"
    with h5py.File(path, "r") as f:
        assert pyusid.hdf_utils.check_if_main(f[group + "/peak"])
        assert f[group + "/completed_positions"][()].all()
    assert lazyusid.list_main(path) == [MAIN_DATASET, group + "/peak"]
    assert data.usid.main_datasets() == [MAIN_DATASET, group + "/peak"]
    # the file still opens to the measurement by default
    xr.testing.assert_identical(lazyusid.open_usid(path), data)


def test_several_outputs_into_zarr(scan, tmp_path):
    path, values = scan
    data = lazyusid.open_usid(path)
    expected = features_reference(values)
    stored = data.usid.map(features, store=tmp_path / "features.zarr", cores=1, positions_per_block=3)
    assert isinstance(stored, xr.Dataset) and set(stored.data_vars) == {"peak", "magnitude", "phase"}
    for name, want in expected.items():
        np.testing.assert_array_equal(stored[name].values, want)
    reopened = xr.open_zarr(tmp_path / "features.zarr", consolidated=False)
    np.testing.assert_array_equal(reopened["magnitude"].values, expected["magnitude"])


# ---------------------------------------------------------------------------
# results keep working as xarray objects


@pytest.mark.parametrize("kind", ["lazy", "in-file", "zarr"])
def test_results_plot_select_compute_and_go_to_netcdf(scan, tmp_path, kind):
    path, values = scan
    data = lazyusid.open_usid(path)
    store = None if kind == "lazy" else stores(path, tmp_path)[kind]
    result = data.usid.map(peak, store=store, cores=1)
    expected = peak_reference(values)

    computed = result.compute()
    assert isinstance(computed.data, np.ndarray)
    np.testing.assert_array_equal(computed.values, expected)

    x = float(data.X[3])
    line = result.sel(X=x)
    assert line.dims == ("Y",)
    np.testing.assert_array_equal(line.values, expected[:, 3])
    near = result.sel(Y=float(data.Y[2]) * 1.01, method="nearest")
    np.testing.assert_array_equal(near.values, expected[2])

    artist = result.plot()
    assert artist.get_array().shape == (N_Y, N_X)
    line.plot()
    plt.close("all")

    target = tmp_path / f"peak-{kind}.nc"
    result.to_netcdf(target, engine="h5netcdf")
    with xr.open_dataarray(target, engine="h5netcdf") as back:
        xr.testing.assert_identical(back.load(), computed)


def test_dataset_result_goes_to_netcdf(scan, tmp_path):
    path, values = scan
    result = lazyusid.open_usid(path).usid.map(features, cores=1)
    result.to_netcdf(tmp_path / "features.nc", engine="h5netcdf")
    with xr.open_dataset(tmp_path / "features.nc", engine="h5netcdf") as back:
        xr.testing.assert_identical(back.load(), result.compute())
        np.testing.assert_array_equal(back["magnitude"].values, features_reference(values)["magnitude"])


# ---------------------------------------------------------------------------
# test and plan


@pytest.mark.parametrize("position", [0, 17, N_Y * N_X - 1, {"Y": 2, "X": 3}, {"X": 6, "Y": 4}])
def test_test_equals_the_map_at_that_position(scan, position):
    path, _ = scan
    data = lazyusid.open_usid(path)
    full = data.usid.map(peak, params={"scale": 3.0}, cores=1).compute()
    index = (
        position
        if isinstance(position, dict)
        else dict(zip(("Y", "X"), np.unravel_index(position, (N_Y, N_X))))
    )
    value = data.usid.test(peak, position, params={"scale": 3.0})
    assert value == full.isel(index).item()
    assert np.asarray(value).dtype == full.dtype

    several = data.usid.test(features, position)
    whole = data.usid.map(features, cores=1).compute().isel(index)
    assert set(several) == {"peak", "magnitude", "phase"}
    for name, got in several.items():
        np.testing.assert_array_equal(got, whole[name].values)


def test_test_reads_one_spectrum(scan, rows_read):
    path, _ = scan
    data = lazyusid.open_usid(path)
    data.usid.test(peak, {"Y": 4, "X": 5})
    assert rows_read == [(4 * N_X + 5, 4 * N_X + 6)]
    assert CALLS.n == 2  # inference and the evaluation itself, on that spectrum


def test_plan_is_the_block_plan(scan):
    path, _ = scan
    data = lazyusid.open_usid(path)
    plan = data.usid.plan(peak, budget="1MiB", positions_per_block=4, cores=1)
    assert isinstance(plan, lazyusid.BlockPlan)
    assert plan == lazyusid.plan_spectra(data, peak, budget="1MiB", positions_per_block=4, cores=1)
    assert (plan.n_positions, plan.positions_per_block, plan.n_blocks) == (35, 4, 9)
    assert plan.input_bytes_per_position == N_FREQ * 8  # complex64
    assert plan.budget_bytes == 2**20 and plan.projected_bytes <= plan.budget_bytes
    assert plan.blocks()[-1] == (32, 35)
    assert "9 blocks of 4 positions" in repr(plan)

    # the plan is what map uses
    result = data.usid.map(peak, budget="1MiB", positions_per_block=4, cores=1)
    blocks = [k for k in result.__dask_graph__() if isinstance(k, str) and k.startswith("lazyusid-block-")]
    assert len(blocks) == plan.n_blocks

    with pytest.raises(lazyusid.BudgetError, match=r"cannot hold one position"):
        data.usid.plan(peak, budget=64, cores=1)


# ---------------------------------------------------------------------------
# Dataset accessor, file summary


def test_dataset_accessor(scan, tmp_path):
    path, values = scan
    ds = xr.open_dataset(path, engine="usid", chunks={})
    assert list(ds.data_vars) == ["Raw_Data"]
    assert ds.usid.file == os.path.abspath(path)
    expected = peak_reference(values)
    np.testing.assert_array_equal(ds.usid.map(peak, cores=1).values, expected)
    assert ds.usid.test(peak, {"Y": 1, "X": 2}) == expected[1, 2]
    plan = lazyusid.plan_spectra(ds["Raw_Data"], peak, budget="64MiB", cores=1)
    assert ds.usid.plan(peak, budget="64MiB", cores=1) == plan

    stored = ds.usid.map(peak, store=path, cores=1)
    np.testing.assert_array_equal(stored.values, expected)
    assert "Raw_Data-peak_000" in ds.usid.tree()
    assert ds.usid.map(peak, store=path, cores=1).attrs["usid_rows_computed"] == 0

    # the file now holds the results too: a Dataset of both must say which variable to map
    both = xr.open_dataset(path, engine="usid", chunks={})
    assert set(both.data_vars) == {"Raw_Data", "peak"}
    with pytest.raises(TypeError, match=r"one variable at a time.*pass ds\[name\]"):
        both.usid.map(peak, cores=1)
    np.testing.assert_array_equal(both["Raw_Data"].usid.map(peak, cores=1).values, expected)
    np.testing.assert_array_equal(both["peak"].values[..., 0], expected)


def test_dataset_accessor_finds_results_after_reopening(scan):
    path, _ = scan
    xr.open_dataset(path, engine="usid", chunks={}).usid.map(peak, store=path, cores=1)
    reopened = xr.open_dataset(path, engine="usid", chunks={})
    assert reopened["Raw_Data"].usid.map(peak, store=path, cores=1).attrs["usid_rows_computed"] == 0


def test_open_usid_finds_results_after_reopening(scan):
    path, _ = scan
    lazyusid.open_usid(path).usid.map(peak, store=path, cores=1)
    assert lazyusid.open_usid(path).usid.map(peak, store=path, cores=1).attrs["usid_rows_computed"] == 0


def test_tree_is_readable_text(scan, tmp_path):
    path, _ = scan
    data = lazyusid.open_usid(path)
    text = data.usid.tree()
    assert isinstance(text, TextBlock) and repr(text) == str(text) == lazyusid.tree(path)
    lines = text.splitlines()
    assert lines[0] == "scan.h5"
    assert any(
        f"Raw_Data  complex64 ({N_Y * N_X}, {N_FREQ})  USID main: Y={N_Y} × X={N_X} | Frequency={N_FREQ}"
        in line
        for line in lines
    )
    assert "[results" not in text

    data.usid.map(peak, store=path, cores=1)
    text = data.usid.tree()
    assert "Raw_Data-peak_000/  [results: tool=peak]" in text
    assert f"peak  float32 ({N_Y * N_X}, 1)  USID main: Y={N_Y} × X={N_X} | Value=1" in text


# ---------------------------------------------------------------------------
# errors


def test_objects_not_from_a_file_say_so(tmp_path):
    plain = xr.DataArray(np.ones((3, 4, 5)), dims=("Y", "X", "Frequency"))
    with pytest.raises(ValueError, match=r"not opened from a USID file \(no 'usid_file' attribute\)"):
        _ = plain.usid.file
    with pytest.raises(ValueError, match=r"usid_file"):
        plain.usid.tree()
    with pytest.raises(ValueError, match=r"usid_file"):
        xr.Dataset({"a": plain}).usid.main_datasets()
    # mapping works without a file, lazily and into a zarr store
    np.testing.assert_array_equal(plain.usid.map(peak, cores=1).values, np.ones((3, 4)))
    stored = plain.usid.map(peak, store=tmp_path / "plain.zarr", cores=1)
    np.testing.assert_array_equal(stored.values, np.ones((3, 4)))


def test_errors_name_what_and_where(scan, tmp_path):
    path, _ = scan
    data = lazyusid.open_usid(path)

    bad = complex(data.values[3, 4, 0])

    def broken(spectrum):
        if spectrum[0] == bad:
            raise ZeroDivisionError("no resonance here")
        return 1.0

    with pytest.raises(lazyusid.SpectralFunctionError, match=r"position 25 \(Y=3, X=4\).*ZeroDivisionError"):
        data.usid.map(broken, cores=1).compute()
    with pytest.raises(lazyusid.SpectralFunctionError, match=r"position 25 \(Y=3, X=4\)"):
        data.usid.map(broken, store=tmp_path / "broken.h5", cores=1, positions_per_block=5)
    with h5py.File(tmp_path / "broken.h5", "r") as f:  # the blocks finished before it are kept
        np.testing.assert_array_equal(f["Raw_Data-broken_000/completed_positions"][()], np.arange(35) < 25)
    with pytest.raises(IndexError, match=r"Y=9 is outside 0\.\.4"):
        data.usid.test(peak, {"Y": 9, "X": 0})
    with pytest.raises(ValueError, match=r"missing \['X'\]"):
        data.usid.test(peak, {"Y": 1})
    with pytest.raises(TypeError, match=r"apply only with store="):
        data.usid.map(peak, override=True)
    with pytest.raises(ValueError, match=r"core_dims \['Energy'\] are not dimensions of the data"):
        data.usid.map(peak, core_dims="Energy")


def test_accessor_methods_show_every_engine_option():
    """help() and tab completion see the options (defined once, on the engine's functions)."""
    import inspect

    data = xr.DataArray(np.ones((3, 4)), dims=("x", "f"))
    for method, engine in ((data.usid.map, lazyusid.map_spectra), (data.usid.plan, lazyusid.plan_spectra)):
        params = inspect.signature(method).parameters
        for name in ("core_dims", "params", "outputs", "vectorized", "budget", "cores", "client", "progress"):
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert list(params) == list(inspect.signature(engine).parameters)[1:]
    assert "store" in inspect.signature(data.usid.map).parameters
    assert "Calls :func:`lazyusid.map_spectra`" in data.usid.map.__doc__
    with pytest.raises(TypeError, match="bugdet"):
        data.usid.map(lambda s: s.sum(), core_dims="f", bugdet="1GiB")
