"""lazyusid.datasets: synthetic BE-PFM and BEPS files, ground truth, pyUSID agreement, bounded memory."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import lazyusid
import lazyusid.datasets
import lazyusid.datasets.generate
import lazyusid.datasets.models
from lazyusid.datasets import (
    MAIN_DATASET,
    BEGroundTruth,
    BEPSGroundTruth,
    load_ground_truth,
    make_be_pfm,
    make_beps,
    polarisation,
    sho_response,
)

SMALL = {"n_x": 24, "n_y": 16}


def read_nd(path) -> np.ndarray:
    return lazyusid.open_usid(path).values


def within(values, lo, hi) -> bool:
    return bool(values.min() >= np.float32(lo) and values.max() <= np.float32(hi))


@pytest.fixture(scope="module")
def default_be(tmp_path_factory):
    """The default 128 × 128 × 119 file, written once for this module."""
    path = tmp_path_factory.mktemp("default") / "be.h5"
    truth = make_be_pfm(path)
    return path, truth


# --- sho_response and polarisation -------------------------------------------


def test_sho_response_known_values_and_broadcasting():
    f = np.linspace(300e3, 350e3, 101)
    amp, w0, q, phi = 2e-3, 325e3, 150.0, 0.7
    r = sho_response(f, amp, w0, q, phi)
    assert r.shape == (101,) and r.dtype == np.complex128
    # on resonance i·A·Q·e^{iφ}; far below resonance −A·e^{iφ}
    np.testing.assert_allclose(r[50], 1j * amp * q * np.exp(1j * phi), rtol=1e-12)
    np.testing.assert_allclose(sho_response([1.0], amp, w0, q, phi)[0], -amp * np.exp(1j * phi), rtol=1e-6)
    # the formula as written in the docstring, in Hz
    expected = amp * w0**2 / (f**2 - w0**2 - 1j * f * w0 / q) * np.exp(1j * phi)
    np.testing.assert_allclose(r, expected, rtol=1e-10)
    # leading dimensions broadcast between parameters
    amps = np.linspace(1e-3, 2e-3, 4)[:, None]
    w0s = np.linspace(320e3, 330e3, 3)
    out = sho_response(f, amps, w0s, q, 0.0)
    assert out.shape == (4, 3, 101)
    np.testing.assert_allclose(out[2, 1], sho_response(f, amps[2, 0], w0s[1], q, 0.0))
    with pytest.raises(ValueError, match="1-D array of frequencies"):
        sho_response(np.ones((2, 3)), amp, w0, q, phi)


def test_polarisation_switches_at_plus_and_minus_vc():
    t = np.arange(400) / 400
    v = 10 * lazyusid.datasets.models.triangle(t)
    p = polarisation(v, 3.0, switching_width=0.05)
    rising = np.r_[True, np.diff(v) > 0]
    # rising branch switches up at +Vc, falling branch down at −Vc
    np.testing.assert_array_equal(p[rising & (v > 3.5)] > 0.99, True)
    np.testing.assert_array_equal(p[rising & (v < 2.5)] < -0.99, True)
    np.testing.assert_array_equal(p[~rising & (v > -2.5)] > 0.99, True)
    np.testing.assert_array_equal(p[~rising & (v < -3.5)] < -0.99, True)
    assert np.all(np.abs(p) <= 1)
    # a map of coercive voltages gives one loop per position
    assert polarisation(v, np.full((2, 5), 3.0)).shape == (2, 5, 400)
    # a step with no change keeps the direction of the previous step
    flat = np.array([0.0, 5.0, 5.0, -5.0, -5.0])
    np.testing.assert_allclose(polarisation(flat, 2.0, switching_width=1e-3), [-1, 1, 1, -1, -1])


# --- BE-PFM: structure --------------------------------------------------------


def test_default_file_structure(default_be):
    path, truth = default_be
    arr = lazyusid.open_usid(path)
    assert arr.dims == ("Y", "X", "Frequency")
    assert arr.shape == (128, 128, 119)
    assert arr.dtype == np.complex64
    assert arr.attrs["quantity"] == "Piezoresponse" and arr.attrs["units"] == "V"
    assert arr.attrs["usid_dataset"] == MAIN_DATASET
    freqs = arr["Frequency"].values
    assert freqs.min() >= 300e3 - 1 and freqs.max() <= 350e3 + 1
    np.testing.assert_allclose(freqs, truth.frequencies, rtol=1e-7)
    assert arr["Frequency"].attrs["units"] == "Hz"
    for dim in ("X", "Y"):
        assert arr[dim].attrs["units"] == "m"
        np.testing.assert_allclose(arr[dim].values, np.arange(128) * 20e-9, rtol=1e-6)
    assert lazyusid.list_main(path) == [MAIN_DATASET]
    assert truth.shape == (128, 128) and truth.frequencies.shape == (119,)


def test_non_square_dims(tmp_path):
    path = tmp_path / "be.h5"
    truth = make_be_pfm(path, n_x=24, n_y=16, n_freq=31)
    arr = lazyusid.open_usid(path)
    assert arr.dims == ("Y", "X", "Frequency")
    assert arr.shape == (16, 24, 31)
    assert arr["X"].size == 24 and arr["Y"].size == 16
    assert truth.shape == (16, 24)
    for name in BEGroundTruth.MAPS:
        assert getattr(truth, name).shape == (16, 24)
    with h5py.File(path, "r") as f:
        assert f[MAIN_DATASET].shape == (16 * 24, 31)
        assert f["Measurement_000"].attrs["grid_num_rows"] == 16
        assert f["Measurement_000"].attrs["grid_num_cols"] == 24


# --- BE-PFM: data against the model ---------------------------------------------


def test_noise_free_data_equal_the_model(tmp_path):
    path = tmp_path / "be.h5"
    truth = make_be_pfm(path, noise=0.0, **SMALL)
    data = read_nd(path)
    expected = sho_response(
        truth.frequencies, truth.amplitude, truth.frequency, truth.quality_factor, truth.phase
    )
    assert truth.noise_std == 0
    np.testing.assert_allclose(data, expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(data, truth.model(), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(truth.model(slice(3, 5)), truth.model()[3:5])


def test_noise_matches_the_documented_level(tmp_path):
    path = tmp_path / "be.h5"
    truth = make_be_pfm(path, n_x=32, n_y=32, noise=0.05, seed=3)
    residual = read_nd(path) - truth.model()
    mean_on_resonance = np.mean(truth.amplitude.astype(np.float64) * truth.quality_factor)
    assert truth.noise == 0.05
    assert truth.noise_std == pytest.approx(0.05 * mean_on_resonance, rel=1e-9)
    # complex Gaussian: E|n|² = noise_std², real and imaginary parts each noise_std/√2
    assert np.std(residual) == pytest.approx(truth.noise_std, rel=0.03)
    assert np.std(residual.real) == pytest.approx(truth.noise_std / math.sqrt(2), rel=0.03)
    assert np.std(residual.imag) == pytest.approx(truth.noise_std / math.sqrt(2), rel=0.03)
    assert abs(np.mean(residual)) < 0.02 * truth.noise_std
    # white: no correlation between neighbouring frequencies
    r = residual.reshape(-1, residual.shape[-1])
    lag1 = np.mean(r[:, 1:] * np.conj(r[:, :-1])) / np.mean(np.abs(r) ** 2)
    assert abs(lag1) < 0.02


def test_default_noise_gives_a_snr_of_about_33(default_be):
    _, truth = default_be
    on_resonance = truth.amplitude.astype(np.float64) * truth.quality_factor
    snr = on_resonance / truth.noise_std
    assert truth.noise == 0.03
    assert np.mean(snr) == pytest.approx(1 / 0.03, rel=1e-6)
    assert 4 < snr.min() and snr.max() < 150


def test_magnitude_peaks_at_the_true_resonance(tmp_path):
    path = tmp_path / "be.h5"
    truth = make_be_pfm(path, n_x=32, n_y=32, noise=0.005, seed=7)
    data = read_nd(path)
    peak = np.argmax(np.abs(data), axis=-1)
    nearest = np.argmin(np.abs(truth.frequencies - truth.frequency[..., None]), axis=-1)
    assert np.max(np.abs(peak - nearest)) <= 2


# --- reproducibility --------------------------------------------------------------


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = make_be_pfm(tmp_path / "a.h5", seed=5, **SMALL)
    b = make_be_pfm(tmp_path / "b.h5", seed=5, **SMALL)
    c = make_be_pfm(tmp_path / "c.h5", seed=6, **SMALL)
    assert a == b and a != c
    np.testing.assert_array_equal(read_nd(tmp_path / "a.h5"), read_nd(tmp_path / "b.h5"))
    assert not np.any(read_nd(tmp_path / "a.h5") == read_nd(tmp_path / "c.h5"))
    with h5py.File(tmp_path / "a.h5", "r") as fa, h5py.File(tmp_path / "b.h5", "r") as fb:
        for name in ("Raw_Data", "Position_Values", "Spectroscopic_Values"):
            key = f"/Measurement_000/Channel_000/{name}"
            assert fa[key][()].tobytes() == fb[key][()].tobytes()


@pytest.mark.parametrize("rows_per_block", [1, 3, 100])
def test_data_do_not_depend_on_the_block_size(tmp_path, monkeypatch, rows_per_block):
    reference = make_be_pfm(tmp_path / "ref.h5", seed=11, **SMALL)
    row_bytes = SMALL["n_x"] * 119 * 8
    monkeypatch.setattr(
        lazyusid.datasets.generate, "_BLOCK_BYTES", rows_per_block * row_bytes + row_bytes // 2
    )
    truth = make_be_pfm(tmp_path / "blocks.h5", seed=11, **SMALL)
    assert truth == reference
    np.testing.assert_array_equal(read_nd(tmp_path / "blocks.h5"), read_nd(tmp_path / "ref.h5"))


def test_beps_data_do_not_depend_on_the_block_size(tmp_path, monkeypatch):
    make_beps(tmp_path / "ref.h5", n_x=5, n_y=7, n_dc=8, n_freq=9)
    monkeypatch.setattr(lazyusid.datasets.generate, "_BLOCK_BYTES", 1)
    make_beps(tmp_path / "rows.h5", n_x=5, n_y=7, n_dc=8, n_freq=9)
    np.testing.assert_array_equal(read_nd(tmp_path / "rows.h5"), read_nd(tmp_path / "ref.h5"))


# --- ground truth -------------------------------------------------------------------

RANGES = {
    "amplitude": (2e-3, 6e-3),
    "frequency": (315e3, 335e3),
    "quality_factor": (60, 250),
    "phase": (-math.pi / 2, math.pi / 2),
}


def test_ground_truth_maps_are_smooth_and_span_their_ranges(default_be):
    _, truth = default_be
    for name, (lo, hi) in RANGES.items():
        m = getattr(truth, name).astype(np.float64)
        assert m.dtype == np.float64 and getattr(truth, name).dtype == np.float32
        assert within(getattr(truth, name), lo, hi), name
        # each map spans exactly its range...
        assert m.min() == pytest.approx(lo, rel=1e-6) and m.max() == pytest.approx(hi, rel=1e-6)
        # ...smoothly: neighbours differ by a small fraction of it
        span = hi - lo
        for axis in (0, 1):
            steps = np.abs(np.diff(m, axis=axis))
            assert steps.max() < 0.06 * span, (name, axis, steps.max() / span)
            assert steps.mean() < 0.03 * span, (name, axis, steps.mean() / span)
    # the maps differ from each other (independent random fields)
    corr = np.corrcoef([getattr(truth, n).ravel() for n in RANGES])
    assert np.all(np.abs(corr[np.triu_indices(4, 1)]) < 0.95)


def test_custom_ranges_are_respected(tmp_path):
    truth = make_be_pfm(
        tmp_path / "be.h5",
        f_min=100e3,
        f_max=120e3,
        amplitude_range=(1e-4, 1e-4),
        frequency_range=(105e3, 110e3),
        quality_range=(20, 30),
        phase_range=(-math.pi, math.pi),
        **SMALL,
    )
    np.testing.assert_array_equal(truth.amplitude, np.float32(1e-4))
    assert within(truth.frequency, 105e3, 110e3)
    assert within(truth.quality_factor, 20, 30)
    assert within(truth.phase, -math.pi, math.pi)
    # the default resonance range is the central 40 % of the band
    default = make_be_pfm(tmp_path / "band.h5", f_min=100e3, f_max=120e3, **SMALL)
    assert within(default.frequency, 106e3, 114e3)


def test_ground_truth_round_trips_and_is_not_a_main_dataset(tmp_path):
    path = tmp_path / "be.h5"
    truth = make_be_pfm(path, **SMALL)
    loaded = load_ground_truth(path)
    assert type(loaded) is BEGroundTruth
    assert loaded == truth
    assert repr(loaded) == repr(truth)
    assert lazyusid.list_main(path) == [MAIN_DATASET]
    with h5py.File(path, "r") as f:
        group = f[lazyusid.datasets.GROUND_TRUTH_GROUP]
        assert group.attrs["generator"] == "make_be_pfm"
        units = {name: group[name].attrs["units"] for name in (*BEGroundTruth.MAPS, "frequencies")}
        assert units == {
            "amplitude": "V",
            "frequency": "Hz",
            "quality_factor": "",
            "phase": "rad",
            "frequencies": "Hz",
        }
        for name in BEGroundTruth.MAPS:
            np.testing.assert_array_equal(group[name][()], getattr(truth, name))
            assert not lazyusid.is_main(group[name])


def test_ground_truth_is_frozen(default_be):
    _, truth = default_be
    with pytest.raises(dataclasses.FrozenInstanceError):
        truth.noise = 1.0
    with pytest.raises(ValueError, match="read-only"):
        truth.amplitude[0, 0] = 1.0
    assert "n_y=128" in repr(truth) and "seed=0" in repr(truth)


def test_load_ground_truth_of_another_file(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f.create_group("Ground_Truth")
    with pytest.raises(lazyusid.DatasetSelectionError, match="holds no ground truth"):
        load_ground_truth(path)
    with pytest.raises(FileNotFoundError):
        load_ground_truth(tmp_path / "missing.h5")


# --- files and arguments --------------------------------------------------------------


def test_existing_file_needs_overwrite(tmp_path):
    path = tmp_path / "be.h5"
    first = make_be_pfm(path, seed=1, **SMALL)
    with pytest.raises(FileExistsError, match=r"already exists; pass overwrite=True"):
        make_be_pfm(path, seed=2, **SMALL)
    assert load_ground_truth(path) == first
    second = make_be_pfm(path, seed=2, overwrite=True, **SMALL)
    assert load_ground_truth(path) == second != first
    assert os.listdir(tmp_path) == ["be.h5"]


def test_failed_generation_leaves_no_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(lazyusid.datasets.generate, "write_truth", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        make_be_pfm(tmp_path / "be.h5", **SMALL)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_x": 0}, "n_x must be a positive integer"),
        ({"n_freq": 2.5}, "n_freq must be a positive integer"),
        ({"f_min": 350e3, "f_max": 300e3}, "f_min < f_max"),
        ({"noise": -0.1}, "noise must be a non-negative"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"frequency_range": (290e3, 320e3)}, r"frequency_range .* inside \[300000, 350000\]"),
        ({"quality_range": (0, 100)}, "quality_range"),
        ({"phase_range": (-4.0, 0.0)}, "phase_range"),
        ({"amplitude_range": (2e-3, 1e-3)}, "low <= high"),
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_be_pfm(tmp_path / "be.h5", **{**SMALL, **kwargs})
    assert os.listdir(tmp_path) == []


def test_bad_beps_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"coercive_range .* inside \(0, 10\]"):
        make_beps(tmp_path / "beps.h5", coercive_range=(2.0, 12.0))
    with pytest.raises(ValueError, match="n_dc must be a positive integer"):
        make_beps(tmp_path / "beps.h5", n_dc=0)
    with pytest.raises(ValueError, match="switching_width"):
        make_beps(tmp_path / "beps.h5", switching_width=0)
    assert os.listdir(tmp_path) == []


# --- BEPS -------------------------------------------------------------------------------


def test_beps_structure_and_defaults(tmp_path):
    path = tmp_path / "beps.h5"
    truth = make_beps(path)
    arr = lazyusid.open_usid(path)
    assert arr.dims == ("Y", "X", "DC_Offset", "Frequency")
    assert arr.shape == (32, 32, 16, 64)
    assert arr.dtype == np.complex64
    assert arr["DC_Offset"].attrs["units"] == "V"
    expected_dc = [0, 2.5, 5, 7.5, 10, 7.5, 5, 2.5, 0, -2.5, -5, -7.5, -10, -7.5, -5, -2.5]
    np.testing.assert_array_equal(arr["DC_Offset"].values, expected_dc)
    np.testing.assert_array_equal(truth.dc_offsets, expected_dc)
    assert lazyusid.list_main(path) == [MAIN_DATASET]
    assert isinstance(truth, BEPSGroundTruth)
    assert within(truth.coercive_voltage, 2.0, 6.0)
    loaded = load_ground_truth(path)
    assert type(loaded) is BEPSGroundTruth and loaded == truth


def test_beps_non_square(tmp_path):
    path = tmp_path / "beps.h5"
    truth = make_beps(path, n_x=7, n_y=3, n_dc=12, n_freq=10)
    assert lazyusid.open_usid(path).shape == (3, 7, 12, 10)
    assert truth.polarisation().shape == (3, 7, 12)
    assert truth.model().shape == (3, 7, 12, 10)


def test_beps_polarisation_follows_the_hysteresis_loop(tmp_path):
    path = tmp_path / "beps.h5"
    truth = make_beps(path, n_x=12, n_y=10, noise=0.0, seed=4)
    data = read_nd(path)
    np.testing.assert_allclose(data, truth.model(), rtol=1e-6, atol=0)
    p = truth.polarisation()
    dc = truth.dc_offsets
    k_max, k_min = int(np.argmax(dc)), int(np.argmin(dc))
    assert np.all(p[..., k_max] > 0.9) and np.all(p[..., k_min] < -0.9)
    # the same V = 0 gives opposite polarisation on the rising and falling branches
    k_zero = np.flatnonzero(dc == 0)
    assert np.all(p[..., k_zero[0]] < -0.9) and np.all(p[..., k_zero[1]] > 0.9)
    # a negative polarisation flips the sign of the whole spectrum
    np.testing.assert_allclose(data[:, :, k_max], -data[:, :, k_min], rtol=1e-5)
    sho = sho_response(truth.frequencies, truth.amplitude, truth.frequency, truth.quality_factor, truth.phase)
    np.testing.assert_allclose(data, p[..., None] * sho[:, :, None, :], rtol=1e-6)


def test_beps_noise_level(tmp_path):
    path = tmp_path / "beps.h5"
    truth = make_beps(path, n_x=16, n_y=16, noise=0.1, seed=2)
    residual = read_nd(path) - truth.model()
    assert np.std(residual) == pytest.approx(truth.noise_std, rel=0.03)


# --- pyUSID agrees ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "kwargs"),
    [
        (make_be_pfm, {"n_x": 24, "n_y": 16, "n_freq": 17}),
        (make_beps, {"n_x": 6, "n_y": 5, "n_dc": 8, "n_freq": 9}),
    ],
)
def test_pyusid_reads_the_same_array(tmp_path, pyusid, make, kwargs):
    path = tmp_path / "file.h5"
    make(path, **kwargs)
    arr = lazyusid.open_usid(path)
    with h5py.File(path, "r") as f:
        dset = f[MAIN_DATASET]
        assert pyusid.hdf_utils.check_if_main(dset)
        usid = pyusid.USIDataset(dset)
        assert list(usid.n_dim_labels) == list(arr.dims)
        np.testing.assert_array_equal(usid.get_n_dim_form(), arr.values)
        assert [d.name for d in pyusid.hdf_utils.get_all_main(f)] == [MAIN_DATASET]


# --- bounded memory ---------------------------------------------------------------------------

# Peak memory of the child itself: VmHWM is reset by exec, whereas ru_maxrss keeps
# the high-water mark of the forked pytest process (hundreds of MB with pyUSID loaded).
_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, re, sys, time
    import lazyusid.datasets
    start = time.perf_counter()
    if sys.argv[1] != "-":
        lazyusid.datasets.make_be_pfm(sys.argv[1], n_x=1064, n_y=1064)
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as f:
        peak = int(re.search(r"VmHWM:\\s*(\\d+) kB", f.read()).group(1)) * 1024
    print(json.dumps({"seconds": seconds, "peak_bytes": peak}))
    """
)


def _run_memory_script(arg: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, arg], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc for VmHWM")
@pytest.mark.long
def test_a_1_gib_file_is_written_with_bounded_memory(tmp_path):
    path = tmp_path / "big.h5"
    baseline = _run_memory_script("-")
    run = _run_memory_script(str(path))
    size = os.path.getsize(path)
    assert size > 2**30  # 1064 × 1064 positions × 119 × 8 bytes
    extra = run["peak_bytes"] - baseline["peak_bytes"]
    print(f"1 GiB file: {run['seconds']:.1f} s, {extra / 2**20:.0f} MiB above the import baseline")
    assert extra < 400e6, (
        f"peak memory {extra / 2**20:.0f} MiB above baseline for a {size / 2**30:.2f} GiB file"
    )


def test_chunked_file_holds_the_same_values(tmp_path):
    a, b = tmp_path / "contiguous.h5", tmp_path / "chunked.h5"
    make_be_pfm(a, n_x=12, n_y=10, n_freq=31)
    make_be_pfm(b, n_x=12, n_y=10, n_freq=31, chunks=(16, 31))
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa[MAIN_DATASET].chunks is None and fb[MAIN_DATASET].chunks == (16, 31)
        np.testing.assert_array_equal(fa[MAIN_DATASET][()], fb[MAIN_DATASET][()])
