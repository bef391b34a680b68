"""Computing into a store (``map_spectra(..., store=...)``): values, format, duplicates, resume, bad targets.

References: a plain NumPy loop over the spectra for values, the lazy (no
store) result for dimensions and coordinates, pyUSID for the format.
Functions run in-process (``cores=1``) so that module-level counters see
every evaluation; the engine evaluates a function once on the first
spectrum to infer its outputs, so a run that computes nothing counts 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import matplotlib
import numpy as np
import pytest
import xarray as xr
import zarr

import lazyusid
from lazyusid.core.identity import UnhashableParameterError
from lazyusid.errors import (
    ReadOnlyStoreError,
    SpectralFunctionError,
    StoreBusyError,
    StoreConflictError,
)

matplotlib.use("Agg")

RUN = {"cores": 1, "progress": False}
MAIN = "/Measurement_000/Channel_000/Raw_Data"
GROUP = "/Measurement_000/Channel_000"
N_Y, N_X = 5, 7  # 35 positions: blocks of 5 leave no remainder, blocks of 4 do


# ---------------------------------------------------------------------------
# functions mapped in the tests


class Calls:
    """Evaluations of the counted functions, and a switch that makes them fail.

    A class, not a dict: a function's identity covers the globals it uses by
    value, and a counter that changes would change it.
    """

    n = 0
    fail_after: int | None = None  # evaluations that succeed before `peak` raises


@pytest.fixture(autouse=True)
def reset_calls():
    Calls.n, Calls.fail_after = 0, None
    yield
    Calls.n, Calls.fail_after = 0, None


def peak(spectrum):
    """Largest amplitude; counted, and raises once ``Calls.fail_after`` evaluations have succeeded."""
    Calls.n += 1
    if Calls.fail_after is not None and Calls.n > Calls.fail_after:
        raise RuntimeError("instrument glitch")
    return np.abs(spectrum).max()


def band(spectrum):
    amplitude = np.abs(spectrum)
    return np.array([amplitude.min(), amplitude.max()])


def fit(spectrum):
    amplitude = np.abs(spectrum)
    return {
        "amp": amplitude.max(),
        "phase": np.angle(spectrum[np.argmax(amplitude)]),
        "top": np.sort(amplitude)[-3:],
    }


def scaled(spectrum, k, mode="max"):
    Calls.n += 1
    amplitude = np.abs(spectrum)
    return (amplitude.max() if mode == "max" else amplitude.min()) * k


def by_type(spectrum, k):
    """Behaves differently for ``True``, ``1`` and ``1.0``."""
    amplitude = np.abs(spectrum)
    if isinstance(k, bool):
        return amplitude.min()
    if isinstance(k, int):
        return amplitude[k]
    return amplitude.max() * k


def weighted(spectrum, w):
    return (np.abs(spectrum[: len(w)]) * w).sum()


def reference(data: xr.DataArray, func, core_dims=None, **params):
    """``func`` applied to every spectrum by a plain loop: loop dims in data order, then output dims."""
    core = core_dims or data.attrs["usid_spectroscopic_dims"]  # a str after a netCDF round trip
    core = [core] if isinstance(core, str) else list(core)
    loop = [d for d in data.dims if d not in core]
    values = data.transpose(*loop, *core).values
    loop_shape = values.shape[: len(loop)]
    results = [func(s, **params) for s in values.reshape(-1, *values.shape[len(loop) :])]
    if isinstance(results[0], dict):
        return {
            k: np.stack([r[k] for r in results]).reshape(loop_shape + np.shape(results[0][k]))
            for k in results[0]
        }
    return np.stack(results).reshape(loop_shape + np.shape(results[0]))


def assert_matches_reference(stored, expected):
    if isinstance(expected, dict):
        assert list(stored.data_vars) == list(expected)
        for key, values in expected.items():
            np.testing.assert_array_equal(stored[key].values, values)
    else:
        np.testing.assert_array_equal(stored.values, expected)


# ---------------------------------------------------------------------------
# files and targets


@pytest.fixture
def scan(tmp_path) -> str:
    """A BE-PFM file: Y=5 × X=7 positions, 12 frequencies, complex64."""
    path = tmp_path / "scan.h5"
    lazyusid.datasets.make_be_pfm(path, n_x=N_X, n_y=N_Y, n_freq=12, overwrite=True)
    return os.fspath(path)


@pytest.fixture
def beps(tmp_path) -> str:
    """A BEPS file: Y=3 × X=4 positions, DC_Offset=5 × Frequency=8."""
    path = tmp_path / "beps.h5"
    lazyusid.datasets.make_beps(path, n_x=4, n_y=3, n_dc=5, n_freq=8, overwrite=True)
    return os.fspath(path)


TARGETS = ["source", "other-file", "group", "h5py-group", "zarr"]


@contextlib.contextmanager
def target(kind: str, source: str, tmp_path):
    """``store=``/``group=`` keyword arguments for each kind of target (an open file for h5py-group)."""
    if kind == "source":
        yield {"store": source}
    elif kind == "other-file":
        yield {"store": os.fspath(tmp_path / "results.h5")}
    elif kind == "group":
        yield {"store": os.fspath(tmp_path / "results.h5"), "group": "/analysis/run_1"}
    elif kind == "h5py-group":
        with h5py.File(tmp_path / "results.h5", "a") as f:
            yield {"store": f.require_group("mine")}
    elif kind == "zarr":
        yield {"store": os.fspath(tmp_path / "results.zarr")}
    else:  # pragma: no cover
        raise ValueError(kind)


def stored_group(stored) -> tuple[str, str]:
    """(file, HDF5 path) of the results group a stored result came from."""
    path, name = stored.attrs["usid_store"].rsplit(":", 1)
    return path, name


def group_name(stored) -> str:
    return stored.attrs["usid_store"].rsplit("/", 1)[-1]


def fingerprint(path) -> tuple:
    """sha256 and modification times of a file, or of every file under a directory."""
    paths = [path] if os.path.isfile(path) else sorted(p for p in _walk(path))
    h = hashlib.sha256()
    times = []
    for p in paths:
        h.update(os.path.relpath(p, path).encode())
        with open(p, "rb") as f:
            h.update(f.read())
        times.append(os.stat(p).st_mtime_ns)
    return h.hexdigest(), tuple(times)


def _walk(root):
    for folder, _, files in os.walk(root):
        for name in files:
            yield os.path.join(folder, name)


@contextlib.contextmanager
def read_only(path):
    """Make a file read-only; as root (who ignores permission bits), also immutable with ``chattr +i``."""
    os.chmod(path, 0o444)
    immutable = False
    try:
        if os.access(path, os.W_OK):
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", path]).returncode:
                pytest.skip(
                    "running as root on a file system without chattr +i: cannot make a file read-only"
                )
            immutable = True
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", path], check=True)
        os.chmod(path, 0o644)


# ---------------------------------------------------------------------------
# values, dimensions and coordinates in every kind of target


@pytest.mark.parametrize("func", [peak, band, fit], ids=["scalar", "vector", "several"])
@pytest.mark.parametrize("kind", TARGETS)
def test_stored_values_equal_a_numpy_loop(kind, func, scan, tmp_path):
    data = lazyusid.open_usid(scan)
    with target(kind, scan, tmp_path) as where:
        stored = lazyusid.map_spectra(data, func, positions_per_block=4, **where, **RUN)
    lazy = lazyusid.map_spectra(data, func, **RUN)
    assert_matches_reference(stored, reference(data, func))
    xr.testing.assert_equal(stored, lazy)
    assert stored.attrs["usid_rows_computed"] == N_Y * N_X
    assert len(stored.attrs["usid_token"]) == 64
    if kind == "zarr":
        assert stored.attrs["usid_store"] == os.fspath(tmp_path / "results.zarr")
        on_disk = xr.open_zarr(tmp_path / "results.zarr", consolidated=False)
        assert on_disk.attrs["lazyusid_token"] == stored.attrs["usid_token"]
        assert on_disk["completed_positions"].dims == ("Y", "X")
        assert on_disk["completed_positions"].values.all()
    else:
        path, name = stored_group(stored)
        expected = {
            "source": GROUP + "/Raw_Data-" + func.__name__ + "_000",
            "other-file": "/Raw_Data-" + func.__name__ + "_000",
            "group": "/analysis/run_1/Raw_Data-" + func.__name__ + "_000",
            "h5py-group": "/mine/Raw_Data-" + func.__name__ + "_000",
        }[kind]
        assert path == (scan if kind == "source" else os.fspath(tmp_path / "results.h5"))
        assert name == expected


def test_dimension_juggling_rows_are_positions(beps, tmp_path, pyusid):
    """BEPS, a function of one frequency spectrum: loops over positions and DC bias; DC bias is in a row."""
    data = lazyusid.open_usid(beps)
    assert data.dims == ("Y", "X", "DC_Offset", "Frequency")
    lazy = lazyusid.map_spectra(data, band, core_dims="Frequency", **RUN)
    zarr_store = os.fspath(tmp_path / "juggled.zarr")
    for store in (zarr_store, beps):
        stored = lazyusid.map_spectra(data, band, core_dims="Frequency", store=store, **RUN)
        assert stored.dims == ("Y", "X", "DC_Offset", "band_dim_0")
        assert_matches_reference(stored, reference(data, band, "Frequency"))
        xr.testing.assert_equal(stored, lazy)
    assert xr.open_zarr(zarr_store, consolidated=False)["completed_positions"].dims == ("Y", "X")
    with h5py.File(beps, "r") as f:
        grp = f[GROUP + "/Raw_Data-band_000"]
        assert grp["completed_positions"].shape == (12,)  # one flag per position, DC bias inside
        main = grp["band"]
        assert main.shape == (12, 5 * 2)
        usid = pyusid.USIDataset(main)
        assert usid.pos_dim_labels == ["Y", "X"]
        assert usid.spec_dim_labels == ["DC_Offset", "band_dim_0"]
        np.testing.assert_array_equal(usid.get_n_dim_form(), stored.values)
        np.testing.assert_allclose(usid.get_spec_values("DC_Offset"), data.DC_Offset.values)


def test_a_sliced_input_writes_its_own_positions(scan, pyusid):
    data = lazyusid.open_usid(scan)
    whole = lazyusid.map_spectra(data, peak, store=scan, **RUN)
    part = data.isel(X=slice(2, 7))
    stored = lazyusid.map_spectra(part, peak, store=scan, **RUN)
    assert group_name(stored) == "Raw_Data-peak_001"  # not the whole scan's result
    assert stored.dims == ("Y", "X") and stored.shape == (N_Y, 5)
    assert_matches_reference(stored, reference(part, peak))
    xr.testing.assert_equal(stored, whole.isel(X=slice(2, 7)))
    with h5py.File(scan, "r") as f:
        whole_main = f[stored_group(whole)[1] + "/peak"]
        assert f[whole_main.attrs["Position_Indices"]].name == GROUP + "/Position_Indices"  # shared
        main = f[stored_group(stored)[1] + "/peak"]
        assert f[main.attrs["Position_Indices"]].name == stored_group(stored)[1] + "/Position_Indices"
        assert pyusid.hdf_utils.check_if_main(main)
        usid = pyusid.USIDataset(main)
        np.testing.assert_allclose(usid.get_pos_values("X"), part.X.values)
        np.testing.assert_allclose(usid.get_pos_values("Y"), part.Y.values)


def test_the_stored_result_works_like_any_xarray_object(scan, tmp_path):
    import matplotlib.pyplot as plt

    data = lazyusid.open_usid(scan)
    stored = lazyusid.map_spectra(data, fit, store=scan, **RUN)
    expected = reference(data, fit)
    x = float(data.X[3])
    np.testing.assert_array_equal(stored["amp"].sel(X=x).values, expected["amp"][:, 3])
    np.testing.assert_array_equal(stored.compute()["top"].values, expected["top"])
    stored["amp"].plot()
    stored["top"].isel(top_dim_0=-1).plot()
    plt.close("all")
    stored.to_netcdf(tmp_path / "fit.nc", engine="h5netcdf")
    with xr.open_dataset(tmp_path / "fit.nc", engine="h5netcdf") as back:
        xr.testing.assert_equal(back, stored)
    single = lazyusid.map_spectra(data, band, store=scan, **RUN)
    single.to_netcdf(tmp_path / "band.nc", engine="h5netcdf")
    with xr.open_dataarray(tmp_path / "band.nc", engine="h5netcdf") as back:
        xr.testing.assert_equal(back, single)


# ---------------------------------------------------------------------------
# pyUSID reads the results


@pytest.mark.parametrize("kind", ["source", "other-file", "group"])
@pytest.mark.parametrize("func", [peak, band, fit], ids=["scalar", "vector", "several"])
def test_pyusid_reads_every_result_dataset(kind, func, scan, tmp_path, pyusid):
    data = lazyusid.open_usid(scan)
    with target(kind, scan, tmp_path) as where:
        stored = lazyusid.map_spectra(data, func, **where, **RUN)
    path, name = stored_group(stored)
    variables = stored if isinstance(stored, xr.Dataset) else {stored.name: stored}
    with h5py.File(path, "r") as f:
        grp = f[name]
        assert grp.attrs["tool"] == func.__name__
        assert grp.attrs["last_pixel"] == N_Y * N_X
        assert grp["completed_positions"][()].tolist() == [1] * (N_Y * N_X)
        for key in variables:
            main = grp[key]
            assert pyusid.hdf_utils.check_if_main(main), f"{main.name} is not a USID main dataset"
            usid = pyusid.USIDataset(main)
            assert usid.pos_dim_labels == ["Y", "X"]
            values = variables[key].values
            n_dim = usid.get_n_dim_form()
            if values.ndim == 2:  # a scalar per position: one spectroscopic point named Value
                assert usid.spec_dim_labels == ["Value"]
                n_dim = n_dim[..., 0]
            np.testing.assert_array_equal(n_dim, values)
            np.testing.assert_allclose(usid.get_pos_values("X"), data.X.values)


@pytest.mark.parametrize("kind", ["source", "other-file"])
def test_pyusid_check_for_old_finds_our_group(kind, scan, tmp_path, pyusid):
    data = lazyusid.open_usid(scan)
    params = {"k": 2.5, "mode": "min"}
    with target(kind, scan, tmp_path) as where:
        stored = lazyusid.map_spectra(data, scaled, params=params, **where, **RUN)
    path, name = stored_group(stored)
    with h5py.File(scan, "r") as src, h5py.File(path, "r") as f:
        parent = {"h5_parent_goup": f["/"]} if kind == "other-file" else {}
        found = pyusid.hdf_utils.check_for_old(src[MAIN], "scaled", params, **parent)
        assert [g.name for g in found] == [name]
        assert pyusid.hdf_utils.check_for_old(src[MAIN], "scaled", {"k": 3.0, "mode": "min"}, **parent) == []
        assert {key: pyusid.hdf_utils.get_attr(f[name], key) for key in params} == params


def write_pyusid_results(pyusid, path, tool, params, values):
    """A complete-looking results group written by pyUSID itself, holding ``values``."""
    with h5py.File(path, "r+") as f:
        h5_main = f[MAIN]
        grp = pyusid.hdf_utils.create_results_group(h5_main, tool)
        pyusid.hdf_utils.write_simple_attrs(grp, {**params, "last_pixel": h5_main.shape[0]})
        pyusid.hdf_utils.write_main_dataset(
            grp,
            np.asarray(values, dtype=np.float32).reshape(-1, 1),
            tool,
            "Amplitude",
            "a. u.",
            None,
            pyusid.Dimension("Value", "", 1),
            h5_pos_inds=f[GROUP + "/Position_Indices"],
            h5_pos_vals=f[GROUP + "/Position_Values"],
        )
        grp.create_dataset("completed_positions", data=np.ones(h5_main.shape[0], dtype=np.uint8))
        return grp.name


def test_a_group_pyusid_wrote_is_never_taken_for_ours(scan, pyusid):
    """Same tool name, same parameters, complete: pyUSID would reuse it; lazyusid computes anew."""
    data = lazyusid.open_usid(scan)
    params = {"k": 2.5, "mode": "max"}
    theirs = write_pyusid_results(pyusid, scan, "scaled", params, np.zeros(N_Y * N_X))
    assert theirs == GROUP + "/Raw_Data-scaled_000"
    with h5py.File(scan, "r") as f:  # pyUSID's own matching would take it
        assert [g.name for g in pyusid.hdf_utils.check_for_old(f[MAIN], "scaled", params)] == [theirs]
    stored = lazyusid.map_spectra(data, scaled, params=params, store=scan, **RUN)
    assert stored_group(stored)[1] == GROUP + "/Raw_Data-scaled_001"
    assert stored.attrs["usid_rows_computed"] == N_Y * N_X
    assert_matches_reference(stored, reference(data, scaled, **params))
    again = lazyusid.map_spectra(data, scaled, params=params, store=scan, **RUN)
    assert stored_group(again) == stored_group(stored)


# ---------------------------------------------------------------------------
# duplicates: the same computation is returned, anything else is computed anew


@pytest.mark.parametrize("kind", TARGETS)
def test_the_same_computation_is_returned_without_evaluating(kind, scan, tmp_path):
    data = lazyusid.open_usid(scan)
    with target(kind, scan, tmp_path) as where:
        first = lazyusid.map_spectra(data, peak, **where, **RUN)
    assert Calls.n == 1 + N_Y * N_X
    Calls.n = 0
    with target(kind, scan, tmp_path) as where:
        again = lazyusid.map_spectra(data, peak, **where, **RUN)
    assert Calls.n == 1  # output inference only: no block was evaluated
    assert again.attrs["usid_rows_computed"] == 0
    assert again.attrs["usid_store"] == first.attrs["usid_store"]
    assert again.attrs["usid_token"] == first.attrs["usid_token"]
    xr.testing.assert_identical(again.drop_attrs(), first.drop_attrs())


def test_the_right_result_among_fifty_groups(tmp_path):
    path = os.fspath(tmp_path / "small.h5")
    lazyusid.datasets.make_be_pfm(path, n_x=2, n_y=2, n_freq=4, overwrite=True)
    data = lazyusid.open_usid(path)
    for k in range(50):
        lazyusid.map_spectra(data, scaled, params={"k": k}, store=path, **RUN)
    Calls.n = 0
    stored = lazyusid.map_spectra(data, scaled, params={"k": 17}, store=path, **RUN)
    assert Calls.n == 1
    assert group_name(stored) == "Raw_Data-scaled_017"
    assert_matches_reference(stored, reference(data, scaled, k=17))
    with h5py.File(path, "r") as f:
        assert sum(k.startswith("Raw_Data-scaled_") for k in f[GROUP]) == 50


def user_function(source: str):
    """A function ``peak`` defined by a user's script from ``source``."""
    namespace = {"__name__": "user_script", "np": np}
    exec(textwrap.dedent(source), namespace)
    return namespace["peak"]


def test_a_changed_function_body_is_not_a_duplicate(scan):
    data = lazyusid.open_usid(scan)
    before = user_function("def peak(s):\n    return np.abs(s).max()\n")
    after = user_function("def peak(s):\n    return np.abs(s).min()\n")
    first = lazyusid.map_spectra(data, before, store=scan, **RUN)
    second = lazyusid.map_spectra(data, after, store=scan, **RUN)
    assert [group_name(first), group_name(second)] == ["Raw_Data-peak_000", "Raw_Data-peak_001"]
    assert_matches_reference(first, reference(data, before))
    assert_matches_reference(second, reference(data, after))
    again = user_function("def peak(s):\n    return np.abs(s).max()\n")
    assert group_name(lazyusid.map_spectra(data, again, store=scan, **RUN)) == "Raw_Data-peak_000"


def test_a_helper_changed_under_the_function_is_not_a_duplicate(scan):
    data = lazyusid.open_usid(scan)
    script = "def helper(s):\n    return np.abs(s).{}()\n\ndef peak(s):\n    return helper(s)\n"
    first = lazyusid.map_spectra(data, user_function(script.format("max")), store=scan, **RUN)
    second = lazyusid.map_spectra(data, user_function(script.format("min")), store=scan, **RUN)
    assert group_name(second) != group_name(first)
    assert_matches_reference(second, np.abs(data).min("Frequency").values)


def test_one_one_point_zero_and_true_are_different_parameters(scan):
    data = lazyusid.open_usid(scan)
    names = {}
    for k in (1, 1.0, True):
        stored = lazyusid.map_spectra(data, by_type, params={"k": k}, store=scan, **RUN)
        assert_matches_reference(stored, reference(data, by_type, k=k))
        names[repr(k)] = group_name(stored)
    assert sorted(names.values()) == ["Raw_Data-by_type_000", "Raw_Data-by_type_001", "Raw_Data-by_type_002"]
    for k in (True, 1.0, 1):
        assert (
            group_name(lazyusid.map_spectra(data, by_type, params={"k": k}, store=scan, **RUN))
            == names[repr(k)]
        )


def test_an_array_parameter_differing_in_one_element_is_not_a_duplicate(scan):
    data = lazyusid.open_usid(scan)
    w = np.ones(4)
    w2 = w.copy()
    w2[2] = 2.0
    first = lazyusid.map_spectra(data, weighted, params={"w": w}, store=scan, **RUN)
    second = lazyusid.map_spectra(data, weighted, params={"w": w2}, store=scan, **RUN)
    assert group_name(second) == "Raw_Data-weighted_001"
    assert_matches_reference(first, reference(data, weighted, w=w))
    assert_matches_reference(second, reference(data, weighted, w=w2))
    again = lazyusid.map_spectra(data, weighted, params={"w": w.copy()}, store=scan, **RUN)
    assert group_name(again) == "Raw_Data-weighted_000"


def test_another_file_of_the_same_layout_is_not_a_duplicate(scan, tmp_path):
    other = os.fspath(tmp_path / "other_scan.h5")
    lazyusid.datasets.make_be_pfm(other, n_x=N_X, n_y=N_Y, n_freq=12, seed=1, overwrite=True)
    results = os.fspath(tmp_path / "results.h5")
    first, second = lazyusid.open_usid(scan), lazyusid.open_usid(other)
    a = lazyusid.map_spectra(first, peak, store=results, **RUN)
    b = lazyusid.map_spectra(second, peak, store=results, **RUN)
    assert [group_name(a), group_name(b)] == ["Raw_Data-peak_000", "Raw_Data-peak_001"]
    assert_matches_reference(b, reference(second, peak))
    with h5py.File(results, "r") as f:
        assert f["/Raw_Data-peak_001"].attrs["source_file_path"] == other
        assert f["/Raw_Data-peak_001"].attrs["source_dataset_path"] == MAIN
    assert group_name(lazyusid.map_spectra(first, peak, store=results, **RUN)) == "Raw_Data-peak_000"


@pytest.mark.parametrize(
    "derive",
    [lambda d: -d, lambda d: d * 2, lambda d: d.conj(), lambda d: d.compute() * 1j],
    ids=["neg", "times-2", "conj", "in-memory"],
)
def test_an_input_computed_from_the_source_is_not_the_source(derive, scan):
    """xarray keeps the source's attributes through arithmetic: the input's identity must not rely on them."""
    data = lazyusid.open_usid(scan)
    lazyusid.map_spectra(data, fit, store=scan, **RUN)
    derived = derive(data)
    assert derived.attrs["usid_dataset"] == MAIN
    stored = lazyusid.map_spectra(derived, fit, store=scan, **RUN)
    assert group_name(stored) == "Raw_Data-fit_001"
    assert_matches_reference(stored, reference(derived, fit))


@pytest.mark.parametrize("chunks", [{}, None], ids=["dask", "in-memory"])
def test_a_saved_copy_of_a_computed_input_is_not_the_source(chunks, scan, tmp_path):
    """netCDF keeps the ``usid_*`` attributes of ``data * 2``; reading it back is still not the source."""
    data = lazyusid.open_usid(scan)
    lazyusid.map_spectra(data, fit, store=scan, **RUN)
    (data * 2).to_netcdf(tmp_path / "doubled.nc", engine="h5netcdf")
    with xr.open_dataarray(tmp_path / "doubled.nc", engine="h5netcdf", chunks=chunks) as doubled:
        assert doubled.attrs["usid_dataset"] == MAIN
        stored = lazyusid.map_spectra(doubled, fit, store=scan, **RUN)
        assert group_name(stored) == "Raw_Data-fit_001"
        assert_matches_reference(stored, reference(doubled, fit))


def test_override_computes_into_a_new_group(scan):
    data = lazyusid.open_usid(scan)
    first = lazyusid.map_spectra(data, peak, store=scan, **RUN)
    Calls.n = 0
    second = lazyusid.map_spectra(data, peak, store=scan, override=True, **RUN)
    assert [group_name(first), group_name(second)] == ["Raw_Data-peak_000", "Raw_Data-peak_001"]
    assert Calls.n == 1 + N_Y * N_X
    assert_matches_reference(second, reference(data, peak))
    with pytest.raises(ValueError, match=r"either resume= .* or override=True"):
        lazyusid.map_spectra(data, peak, store=scan, override=True, resume="Raw_Data-peak_000", **RUN)


# ---------------------------------------------------------------------------
# partial results: kept, valid, resumed


def fail_part_way(data, store, *, succeed: int, **kwargs) -> SpectralFunctionError:
    """Map ``peak`` in blocks of 5 positions, failing after ``succeed`` spectra (plus inference)."""
    Calls.n, Calls.fail_after = 0, 1 + succeed
    with pytest.raises(SpectralFunctionError, match=r"peak failed at position .* instrument glitch") as info:
        lazyusid.map_spectra(data, peak, store=store, positions_per_block=5, **kwargs, **RUN)
    Calls.n, Calls.fail_after = 0, None
    return info.value


@pytest.mark.parametrize("kind", ["source", "other-file", "zarr"])
def test_a_failing_function_keeps_finished_blocks_and_the_next_call_resumes(kind, scan, tmp_path, pyusid):
    data = lazyusid.open_usid(scan)
    expected = reference(data, peak)
    with target(kind, scan, tmp_path) as where:
        error = fail_part_way(data, where["store"], succeed=12)
    assert error.position == 12
    assert error.coords == {"Y": 1, "X": 5}
    if kind == "zarr":
        on_disk = xr.open_zarr(where["store"], consolidated=False)
        done = on_disk["completed_positions"].values.reshape(-1)
        values = on_disk["peak"].values.reshape(-1)
        # zarr blocks are the store's chunks, (1, 5) over (Y, X): rows 0:5, 5:7, 7:12 finished; 12:14 failed
        assert on_disk.attrs["last_pixel"] == 12
        assert done.tolist() == [1] * 12 + [0] * 23
        done[10:12] = 0  # the rest of the test compares what both kinds of target hold
    else:
        with h5py.File(where["store"], "r") as f:  # still a valid file
            name = (GROUP if kind == "source" else "") + "/Raw_Data-peak_000"
            grp = f[name]
            assert grp.attrs["last_pixel"] == 10
            done = grp["completed_positions"][()]
            values = grp["peak"][:, 0]
            assert pyusid.hdf_utils.check_if_main(grp["peak"])
    assert done.tolist() == [1] * 10 + [0] * 25  # blocks 0:5 and 5:10 finished; 10:15 failed
    np.testing.assert_array_equal(values[:10], expected.reshape(-1)[:10])

    with target(kind, scan, tmp_path) as where:
        stored = lazyusid.map_spectra(data, peak, positions_per_block=5, **where, **RUN)
    rest = 23 if kind == "zarr" else 25
    assert Calls.n == 1 + rest  # inference, then only the rows without a flag
    assert stored.attrs["usid_rows_computed"] == rest
    if kind != "zarr":
        assert group_name(stored) == "Raw_Data-peak_000"
    assert_matches_reference(stored, expected)


def test_resume_names_the_group_to_continue(scan):
    data = lazyusid.open_usid(scan)
    fail_part_way(data, scan, succeed=5)  # Raw_Data-peak_000: 5 rows done
    fail_part_way(data, scan, succeed=10, override=True)  # Raw_Data-peak_001: 10 rows done
    stored = lazyusid.map_spectra(data, peak, store=scan, resume="Raw_Data-peak_000", **RUN)
    assert group_name(stored) == "Raw_Data-peak_000"
    assert Calls.n == 1 + 30
    assert_matches_reference(stored, reference(data, peak))
    with h5py.File(scan, "r") as f:
        assert f[GROUP + "/Raw_Data-peak_001"].attrs["last_pixel"] == 10  # left alone


def test_resume_refuses_a_group_of_another_computation(scan):
    data = lazyusid.open_usid(scan)
    fail_part_way(data, scan, succeed=5)
    before = fingerprint(scan)
    with pytest.raises(StoreConflictError, match=r"Raw_Data-peak_000.* holds a different computation"):
        lazyusid.map_spectra(data, band, store=scan, resume="Raw_Data-peak_000", **RUN)
    with pytest.raises(StoreConflictError, match="holds a different computation"):
        lazyusid.map_spectra(data, peak, store=scan, resume="Raw_Data-peak_000", tool="other", **RUN)
    with pytest.raises(KeyError, match="no results group 'Raw_Data-peak_007'"):
        lazyusid.map_spectra(data, peak, store=scan, resume="Raw_Data-peak_007", **RUN)
    assert fingerprint(scan) == before


# ---------------------------------------------------------------------------
# bad situations: refused before anything is computed or changed


def test_a_read_only_source_is_refused_before_computing(scan):
    data = lazyusid.open_usid(scan)
    with read_only(scan):
        before = fingerprint(scan)
        with pytest.raises(ReadOnlyStoreError, match=r"read-only.*store='results\.h5'") as info:
            lazyusid.map_spectra(data, peak, **{"store": scan}, **RUN)
        assert isinstance(info.value, PermissionError)
        assert Calls.n == 1  # output inference only
        assert fingerprint(scan) == before


def test_a_read_only_file_returns_its_complete_result(scan):
    data = lazyusid.open_usid(scan)
    lazyusid.map_spectra(data, band, store=scan, **RUN)
    with read_only(scan):
        before = fingerprint(scan)
        stored = lazyusid.map_spectra(data, band, store=scan, **RUN)
        assert_matches_reference(stored, reference(data, band))
        assert fingerprint(scan) == before


def test_an_unhashable_parameter_is_refused_before_writing(scan):
    data = lazyusid.open_usid(scan)
    before = fingerprint(scan)
    with pytest.raises(UnhashableParameterError, match=r"params\['k'\] is a builtins\.range"):
        lazyusid.map_spectra(data, scaled, params={"k": range(1, 2)}, store=scan, **RUN)
    assert fingerprint(scan) == before


def test_a_target_that_is_not_hdf5_is_never_overwritten(scan, tmp_path):
    data = lazyusid.open_usid(scan)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    before = fingerprint(notes)
    with pytest.raises(StoreConflictError, match=r"notes\.txt exists and is not an HDF5 file"):
        lazyusid.map_spectra(data, peak, store=notes, **RUN)
    assert fingerprint(notes) == before


def test_a_directory_that_is_not_a_lazyusid_store_is_never_touched(scan, tmp_path):
    data = lazyusid.open_usid(scan)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "data.txt").write_text("keep me\n")
    plain = tmp_path / "plain.zarr"
    zarr.open_group(plain, mode="w", zarr_format=3).attrs["owner"] = "someone else"
    for path, message in (
        (folder, "is not a zarr v3 group"),
        (plain, "something that is not a lazyusid result"),
    ):
        before = fingerprint(path)
        with pytest.raises(StoreConflictError, match=message):
            lazyusid.map_spectra(data, peak, store=path, **RUN)
        assert fingerprint(path) == before


def test_a_zarr_store_of_another_computation_is_never_touched(scan, tmp_path):
    data = lazyusid.open_usid(scan)
    store = os.fspath(tmp_path / "results.zarr")
    lazyusid.map_spectra(data, peak, store=store, **RUN)
    before = fingerprint(store)
    for kwargs in ({}, {"override": True}):
        with pytest.raises(
            StoreConflictError, match=r"holds results of a different computation \(tool 'peak'"
        ):
            lazyusid.map_spectra(data, band, store=store, **kwargs, **RUN)
    assert fingerprint(store) == before


def test_a_file_open_elsewhere_is_busy(scan, tmp_path):
    data = lazyusid.open_usid(scan)
    results = os.fspath(tmp_path / "results.h5")
    lazyusid.map_spectra(data, peak, store=results, **RUN)
    with h5py.File(results, "r"):  # this process
        with pytest.raises(StoreBusyError, match="open read-only in this process"):
            lazyusid.map_spectra(data, band, store=results, **RUN)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import h5py, sys; f = h5py.File(sys.argv[1], 'r'); print('open', flush=True); sys.stdin.read()",
            results,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreBusyError, match="open in another process"):
            lazyusid.map_spectra(data, band, store=results, **RUN)
    finally:
        holder.communicate("")
    stored = lazyusid.map_spectra(data, band, store=results, **RUN)
    assert_matches_reference(stored, reference(data, band))


@pytest.mark.parametrize("kind", ["hdf5", "zarr"])
def test_declared_units_are_stored_with_the_values(scan, tmp_path, kind, pyusid):
    data = lazyusid.open_usid(scan)
    store = tmp_path / ("units.zarr" if kind == "zarr" else "units.h5")
    stored = lazyusid.map_spectra(data, peak, outputs={"peak": {"units": "V"}}, store=store, **RUN)
    assert stored.attrs["units"] == "V"
    if kind == "zarr":
        assert xr.open_zarr(store, consolidated=False)["peak"].attrs["units"] == "V"
    else:
        with h5py.File(store, "r") as f:
            main = f["Raw_Data-peak_000/peak"]
            assert main.attrs["units"] == "V" and pyusid.hdf_utils.check_if_main(main)
    # units are part of what is stored: the default ("a. u.") is another computation
    if kind == "zarr":  # one computation per zarr store
        with pytest.raises(lazyusid.StoreConflictError):
            lazyusid.map_spectra(data, peak, store=store, **RUN)
    else:
        default = lazyusid.map_spectra(data, peak, store=store, **RUN)
        assert default.attrs["units"] == "a. u." and default.attrs["usid_token"] != stored.attrs["usid_token"]
    again = lazyusid.map_spectra(data, peak, outputs={"peak": {"units": "V"}}, store=store, **RUN)
    assert again.attrs["usid_rows_computed"] == 0 and again.attrs["units"] == "V"


def test_unknown_output_keys_are_refused(scan):
    with pytest.raises(TypeError, match=r"unknown keys \['unit'\]"):
        lazyusid.map_spectra(lazyusid.open_usid(scan), peak, outputs={"peak": {"unit": "V"}}, **RUN)


# ---------------------------------------------------------------------------
# a source rewritten in place: its content fingerprint is part of the identity


@pytest.mark.parametrize("kind", TARGETS)
def test_a_source_rewritten_in_place_is_computed_anew(kind, scan, tmp_path):
    with target(kind, scan, tmp_path) as where:
        first = lazyusid.map_spectra(lazyusid.open_usid(scan), peak, **where, **RUN)
        first_values = first.values.copy()
    Calls.n = 0
    with target(kind, scan, tmp_path) as where:  # unchanged (even with results written into it): returned
        again = lazyusid.map_spectra(lazyusid.open_usid(scan), peak, **where, **RUN)
    assert Calls.n == 1 and again.attrs["usid_rows_computed"] == 0
    assert again.attrs["usid_token"] == first.attrs["usid_token"]

    with h5py.File(scan, "r+") as f:  # a correction applied in place: same path, shape and dtype
        f[MAIN][...] = f[MAIN][...] * np.complex64(2 - 1j)
    data = lazyusid.open_usid(scan)
    Calls.n = 0
    with target(kind, scan, tmp_path) as where:
        if kind == "zarr":  # a zarr store holds one computation: refused, never returned stale
            with pytest.raises(StoreConflictError, match="holds results of a different computation"):
                lazyusid.map_spectra(data, peak, **where, **RUN)
            shutil.rmtree(where["store"])  # as the message says: delete it yourself
        fresh = lazyusid.map_spectra(data, peak, **where, **RUN)
    assert fresh.attrs["usid_rows_computed"] == N_Y * N_X
    assert fresh.attrs["usid_token"] != first.attrs["usid_token"]
    assert_matches_reference(fresh, reference(data, peak))
    assert not np.array_equal(fresh.values, first_values)


def test_a_zarr_store_made_again_at_the_same_path_is_written_as_the_new_one(scan, tmp_path):
    # block writers keep their opened arrays per process and store: a store deleted and made again with
    # other positions at the same path must be opened anew, not written through the old arrays' metadata
    data = lazyusid.open_usid(scan)
    store = tmp_path / "results.zarr"
    first = lazyusid.map_spectra(data, peak, store=store, positions_per_block=5, progress=False)
    assert_matches_reference(first, reference(data, peak))
    shutil.rmtree(store)
    part = data.isel(X=slice(0, 3))
    again = lazyusid.map_spectra(part, peak, store=store, positions_per_block=3, progress=False)
    assert again.attrs["usid_rows_computed"] == N_Y * 3
    stored = zarr.open_group(store, mode="r", zarr_format=3)["peak"][...]
    np.testing.assert_array_equal(np.asarray(stored).reshape(N_Y, 3), reference(part, peak))
