"""Pipelines (issue 13): per-position inputs, chained identity and provenance, regions of interest, on_error.

References: a plain NumPy loop over (spectrum, per-position value) pairs; pyUSID for ``source_001``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import xarray as xr

import lazyusid
from lazyusid.compute import prepare_map
from lazyusid.graph import FlatReader

N_Y, N_X, N_F = 5, 7, 11
#: per spectrum of slow(): 35 positions ~1.75 s (worth worker processes), 2 positions ~0.1 s (not)
SLOW_SECONDS = 0.05


@pytest.fixture
def scan(write_usid):
    return write_usid(
        pos_dims=[lazyusid.Dimension("Y", "m", N_Y), lazyusid.Dimension("X", "m", N_X)],
        spec_dims=[lazyusid.Dimension("Frequency", "Hz", N_F)],
    )


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def weighted(spectrum, guess):
    return float(np.abs(spectrum).sum() * guess)


def shifted(spectrum, guess):
    return np.abs(spectrum)[:3] - guess


def weighted_block(block, guess):
    return np.abs(block).sum(-1) * guess


def with_position(spectrum, position):
    return float(spectrum[0]) + 100 * position[0] + position[1]


def test_per_position_scalar_equals_numpy_loop(scan):
    data = lazyusid.open_usid(scan.path)
    guess = xr.DataArray(np.random.default_rng(1).random((N_Y, N_X)), dims=("Y", "X"))
    expected = np.array(
        [[np.abs(scan.data[y, x]).sum() * guess.values[y, x] for x in range(N_X)] for y in range(N_Y)]
    )
    lazy = lazyusid.map_spectra(data, weighted, params={"guess": guess}, cores=1)
    np.testing.assert_allclose(lazy.values, expected, rtol=1e-6)
    vec = lazyusid.map_spectra(data, weighted_block, params={"guess": guess}, vectorized=True, cores=1)
    np.testing.assert_allclose(vec.values, expected, rtol=1e-6)


def test_per_position_vector_input_and_juggled_dims(scan):
    data = lazyusid.open_usid(scan.path).transpose("X", "Frequency", "Y")
    rng = np.random.default_rng(2)
    guess = xr.DataArray(rng.random((3, N_X, N_Y)), dims=("k", "X", "Y"))  # its own dim first, other order
    expected = np.array(
        [[np.abs(scan.data[y, x])[:3] - guess.values[:, x, y] for y in range(N_Y)] for x in range(N_X)]
    )
    out = lazyusid.map_spectra(data, shifted, params={"guess": guess}, core_dims="Frequency", cores=1)
    assert out.dims == ("X", "Y", "shifted_dim_0")
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)


def test_per_position_on_worker_processes_and_stored(scan, dask_client, tmp_path):
    data = lazyusid.open_usid(scan.path)
    guess = xr.DataArray(np.random.default_rng(3).random((N_Y, N_X)), dims=("Y", "X"))
    expected = np.array(
        [[np.abs(scan.data[y, x]).sum() * guess.values[y, x] for x in range(N_X)] for y in range(N_Y)]
    )
    out = lazyusid.map_spectra(data, weighted, params={"guess": guess}, client=dask_client)
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    stored = lazyusid.map_spectra(data, weighted, params={"guess": guess}, store=scan.path, cores=2)
    np.testing.assert_allclose(stored.values, expected, rtol=1e-6)
    z = lazyusid.map_spectra(
        data, weighted, params={"guess": guess}, store=str(tmp_path / "w.zarr"), client=dask_client
    )
    np.testing.assert_allclose(z.values, expected, rtol=1e-6)


def test_position_keyword(scan):
    data = lazyusid.open_usid(scan.path)
    out = lazyusid.map_spectra(data, with_position, cores=1)
    expected = scan.data[..., 0] + 100 * np.arange(N_Y)[:, None] + np.arange(N_X)[None, :]
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    assert lazyusid.apply_at(data, with_position, {"Y": 2, "X": 3}) == pytest.approx(
        scan.data[2, 3, 0] + 203, rel=1e-6
    )


@pytest.mark.parametrize(
    "guess, message",
    [
        (xr.DataArray(np.ones((N_Y - 1, N_X)), dims=("Y", "X")), "has Y=4 but the data has Y=5"),
        (
            xr.DataArray(np.ones((N_Y, N_X)), dims=("Y", "X"), coords={"X": np.arange(N_X) + 0.5}),
            "different X coordinates",
        ),
    ],
)
def test_mismatched_per_position_input_refused_before_writing(scan, guess, message):
    data = lazyusid.open_usid(scan.path)
    before = _sha(scan.path)
    with pytest.raises(ValueError, match=message):
        lazyusid.map_spectra(data, weighted, params={"guess": guess}, store=scan.path)
    assert _sha(scan.path) == before


# -- chained identity ------------------------------------------------------------------------------

PIPELINE = """
import sys, numpy as np, lazyusid

def guess(spectrum, k=1.0):
    guess.calls += 1
    return float(np.abs(spectrum).max() * k)
guess.calls = 0

def fit(spectrum, start, scale=1.0):
    fit.calls += 1
    return float(np.abs(spectrum).mean() * start * scale)
fit.calls = 0

if __name__ == "__main__":
    path, k, scale = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    data = lazyusid.open_usid(path)
    g = lazyusid.map_spectra(data, guess, params={"k": k}, store=path, cores=1, progress=False)
    f = lazyusid.map_spectra(data, fit, params={"start": g, "scale": scale}, store=path, cores=1, progress=False)
    # calls minus the one lazyusid makes to infer the outputs: positions evaluated
    print(guess.calls - 1, fit.calls - 1, g.attrs["usid_store"], f.attrs["usid_store"])
"""


def _pipeline(tmp_path, path, k, scale):
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(PIPELINE))
    out = subprocess.run(
        [sys.executable, str(script), path, str(k), str(scale)], capture_output=True, text=True, check=True
    )
    calls_g, calls_f, g, f = out.stdout.split()
    return int(calls_g), int(calls_f), g, f


def test_pipeline_rerun_in_a_new_session_computes_nothing(scan, tmp_path):
    n = N_Y * N_X
    first = _pipeline(tmp_path, scan.path, 1.0, 1.0)
    assert first[:2] == (n, n)
    again = _pipeline(tmp_path, scan.path, 1.0, 1.0)
    assert again == (0, 0, first[2], first[3])  # both returned, nothing computed
    fit_only = _pipeline(tmp_path, scan.path, 1.0, 2.0)  # downstream change: only the fit
    assert fit_only[:3] == (0, n, first[2]) and fit_only[3] != first[3]
    both = _pipeline(tmp_path, scan.path, 3.0, 1.0)  # upstream change: the guess and the fit
    assert both[:2] == (n, n) and both[2] != first[2] and both[3] not in (first[3], fit_only[3])
    # the fit's results group names its inputs: source_000 the spectra, source_001 the guess
    with h5py.File(scan.path, "r") as f:
        grp = f[both[3].rsplit(":", 1)[1]]
        assert grp.attrs["num_source_dsets"] == 2
        assert f[grp.attrs["source_000"]].name == scan.dataset
        assert f[grp.attrs["source_001"]].name == both[2].rsplit(":", 1)[1] + "/guess"
    steps = lazyusid.lineage(both[3])
    assert [s["tool"] for s in steps] == ["fit", "guess"]
    assert steps[0]["inputs"][1]["name"] == "start" and steps[0]["inputs"][1]["token"] == steps[1]["token"]


def test_source_001_is_the_guess_in_pyusid(scan, tmp_path, pyusid):
    f = _pipeline(tmp_path, scan.path, 1.0, 1.0)[3]
    with h5py.File(scan.path, "r") as h5:
        grp = h5[f.rsplit(":", 1)[1]]
        guess = pyusid.USIDataset(h5[grp.attrs["source_001"]])
        np.testing.assert_allclose(guess[()].ravel(), np.abs(scan.data).max(-1).ravel(), rtol=1e-6)


# -- regions of interest ---------------------------------------------------------------------------


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, spectrum):
        self.calls += 1
        return float(np.abs(spectrum).sum())


def test_roi_evaluates_only_its_positions_and_grows(scan):
    data = lazyusid.open_usid(scan.path)
    expected = np.abs(scan.data).sum(-1)
    roi = np.zeros((N_Y, N_X), bool)
    roi[1:3, 2:5] = True
    count = Counter()
    lazy = lazyusid.map_spectra(data, count, roi=roi, cores=1).values
    assert count.calls == roi.sum() + 1  # + the inference call
    np.testing.assert_allclose(lazy[roi], expected[roi], rtol=1e-6)
    assert np.isnan(lazy[~roi]).all()
    count.calls = 0
    stored = lazyusid.map_spectra(data, count, roi=roi, store=scan.path, cores=1)
    assert count.calls == roi.sum() + 1
    np.testing.assert_allclose(stored.values[roi], expected[roi], rtol=1e-6)
    assert np.isnan(stored.values[~roi]).all()
    larger = roi.copy()
    larger[3, :] = True
    count.calls = 0
    grown = lazyusid.map_spectra(data, count, roi=larger, store=scan.path, cores=1)
    assert (
        count.calls == (larger & ~roi).sum() + 1 and grown.attrs["usid_store"] == stored.attrs["usid_store"]
    )
    count.calls = 0
    full = lazyusid.map_spectra(data, count, store=scan.path, cores=1)
    assert count.calls == (~larger).sum() + 1 and full.attrs["usid_store"] == stored.attrs["usid_store"]
    np.testing.assert_allclose(full.values, expected, rtol=1e-6)


def test_roi_on_zarr_keeps_positions_computed_before(scan, tmp_path):
    data = lazyusid.open_usid(scan.path)
    expected = np.abs(scan.data).sum(-1)
    target = str(tmp_path / "r.zarr")
    first = np.zeros((N_Y, N_X), bool)
    first[:, :3] = True
    lazyusid.map_spectra(data, Counter(), roi=first, store=target, positions_per_block=N_X, cores=1)
    second = np.zeros((N_Y, N_X), bool)
    second[:, 5:] = True
    out = lazyusid.map_spectra(data, Counter(), roi=second, store=target, positions_per_block=N_X, cores=1)
    both = first | second
    np.testing.assert_allclose(out.values[both], expected[both], rtol=1e-6)
    assert np.isnan(out.values[~both]).all()


# -- failure policy --------------------------------------------------------------------------------


def fragile(spectrum):
    if spectrum[0] > 0.5:
        raise RuntimeError(f"no convergence at {spectrum[0]:.3f}")
    return float(np.abs(spectrum).sum())


@pytest.mark.parametrize("target", ["hdf5", "zarr"])
def test_skip_stores_status_and_errors(scan, tmp_path, target):
    data = lazyusid.open_usid(scan.path)
    bad = scan.data[..., 0] > 0.5
    assert bad.any() and not bad.all()
    store = scan.path if target == "hdf5" else str(tmp_path / "s.zarr")
    out = lazyusid.map_spectra(data, fragile, on_error="skip", store=store, cores=1)
    np.testing.assert_array_equal(out.usid.failed.values, bad)
    assert np.isnan(out.values[bad]).all()
    np.testing.assert_allclose(out.values[~bad], np.abs(scan.data).sum(-1)[~bad], rtol=1e-6)
    errors = out.usid.errors
    flat_bad = np.flatnonzero(bad.ravel())
    assert [e["position"] for e in errors] == flat_bad[: len(errors)].tolist()
    assert errors[0]["type"] == "RuntimeError" and "no convergence" in errors[0]["message"]
    # the failed mask is a valid roi for a second pass
    second = lazyusid.map_spectra(data, Counter(), roi=out.usid.failed, cores=1).values
    np.testing.assert_allclose(second[bad], np.abs(scan.data).sum(-1)[bad], rtol=1e-6)
    with pytest.raises(lazyusid.SpectralFunctionError):
        lazyusid.map_spectra(data, fragile, cores=1).values  # noqa: B018 - raise is the default


def test_skip_lazy_and_vectorised(scan):
    data = lazyusid.open_usid(scan.path)
    bad = scan.data[..., 0] > 0.5

    def block_fragile(block):
        if (block[:, 0] > 0.5).any():
            raise RuntimeError("a bad spectrum in the block")
        return np.abs(block).sum(-1)

    out = lazyusid.map_spectra(data, block_fragile, vectorized=True, on_error="skip", cores=1).compute()
    np.testing.assert_array_equal(out.usid.failed.values, bad)
    np.testing.assert_allclose(out.values[~bad], np.abs(scan.data).sum(-1)[~bad], rtol=1e-6)


def test_in_file_pipeline_reads_stored_inputs_on_worker_processes(scan):
    """A stored guess in the file the fit is written into is read by the block tasks, lock-free."""
    data = lazyusid.open_usid(scan.path)
    guess = lazyusid.map_spectra(data, Counter(), store=scan.path, cores=1)
    smap = prepare_map(data, weighted, params={"guess": guess}, cores=2, writes_to=scan.path)
    assert isinstance(smap.readers["guess"], FlatReader) and smap.readers["guess"].rows.how != "h5py"
    assert "HDF5" not in smap.plan.scheduler  # not forced onto the client's threads
    smap_store = lazyusid.map_spectra(data, weighted, params={"guess": guess}, store=scan.path, cores=2)
    expected = np.abs(scan.data).sum(-1) ** 2
    np.testing.assert_allclose(smap_store.values, expected, rtol=1e-5)


def test_dataset_and_record_inputs(scan):
    data = lazyusid.open_usid(scan.path)

    def two(spectrum):
        return {"lo": float(spectrum.min()), "hi": float(spectrum.max())}

    def span(spectrum, bounds):
        return bounds["hi"] - bounds["lo"]

    bounds = lazyusid.map_spectra(data, two, store=scan.path, cores=1)
    assert isinstance(bounds, xr.Dataset)
    out = lazyusid.map_spectra(data, span, params={"bounds": bounds}, cores=1)
    np.testing.assert_allclose(out.values, np.ptp(scan.data, axis=-1), rtol=1e-6)
    records = np.zeros((N_Y, N_X), dtype=[("lo", "f8"), ("hi", "f8")])
    records["lo"], records["hi"] = scan.data.min(-1), scan.data.max(-1)
    rec = xr.DataArray(records, dims=("Y", "X"))
    out = lazyusid.map_spectra(data, span, params={"bounds": rec}, cores=1)
    np.testing.assert_allclose(out.values, np.ptp(scan.data, axis=-1), rtol=1e-6)


@pytest.mark.parametrize("kind", ["points", "slices", "lists"])
def test_stored_selection_keeps_position_coordinates(scan, kind):
    data = lazyusid.open_usid(scan.path)
    ys, xs = [0, 2, 3], [1, 3, 6]
    if kind == "points":
        sel = data.isel(Y=xr.DataArray(ys, dims="pt"), X=xr.DataArray(xs, dims="pt"))
    elif kind == "slices":
        sel = data.isel(Y=slice(1, 4), X=slice(2, None))
    else:
        sel = data.isel(Y=ys, X=xs)
    stored = lazyusid.map_spectra(sel, Counter(), store=scan.path, cores=1)
    reopened = lazyusid.open_usid(scan.path, stored.attrs["usid_dataset"]).squeeze(drop=True)  # no "Value"
    for label in ("Y", "X"):
        np.testing.assert_allclose(
            reopened[label].broadcast_like(reopened).values.ravel(),
            sel[label].broadcast_like(stored).values.ravel(),
        )
    np.testing.assert_allclose(
        np.asarray(reopened.values).ravel(), np.abs(sel.values).sum(-1).ravel(), rtol=1e-6
    )


def slow(spectrum):
    time.sleep(SLOW_SECONDS)
    return float(np.abs(spectrum).sum())


def test_small_roi_of_a_slow_function_runs_in_this_thread(scan):
    data = lazyusid.open_usid(scan.path)
    everywhere = lazyusid.plan_spectra(data, slow, cores=2)
    assert "worker processes" in everywhere.scheduler  # the whole grid is worth the processes
    roi = np.zeros((N_Y, N_X), bool)
    roi[2, 3:5] = True
    two = lazyusid.plan_spectra(data, slow, cores=2, roi=roi)
    assert two.scheduler.startswith("this thread"), two.scheduler


def argmax(spectrum):
    return int(np.argmax(np.abs(spectrum)))


@pytest.mark.parametrize("target", [None, "hdf5", "zarr"])
def test_roi_outside_holds_the_declared_fill(scan, tmp_path, target):
    data = lazyusid.open_usid(scan.path)
    roi = np.zeros((N_Y, N_X), bool)
    roi[::2, 1::3] = True
    store = {None: None, "hdf5": scan.path, "zarr": str(tmp_path / "f.zarr")}[target]
    out = lazyusid.map_spectra(
        data, argmax, roi=roi, outputs={"argmax": {"dtype": "int16", "fill_value": -1}}, store=store, cores=1
    )
    values = out.values
    assert values.dtype == np.int16
    np.testing.assert_array_equal(values[roi], np.argmax(np.abs(scan.data), axis=-1)[roi])
    assert (values[~roi] == -1).all()


def test_fill_that_does_not_fit_is_refused(scan):
    data = lazyusid.open_usid(scan.path)
    with pytest.raises(TypeError, match=r"fill_value 0\.5 does not fit its dtype int16"):
        lazyusid.map_spectra(data, argmax, outputs={"argmax": {"dtype": "int16", "fill_value": 0.5}})
