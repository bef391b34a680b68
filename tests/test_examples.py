"""The example scripts run end to end on a small size, and their numbers are right.

Each script runs as a user runs it, in a subprocess
(``python examples/X.py --size 8x6 --out DIR``). Its results are then read
back with h5py from the file it wrote and checked against references: plain
NumPy loops of the same function over the raw spectra, or the generator's
ground truth. The scripts' functions are imported from the files without
running them (all their work is under ``if __name__ == "__main__":``).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

import lazyusid
from lazyusid.datasets import MAIN_DATASET, load_ground_truth, sho_response
from lazyusid.tutorial import PEAK_WIDTHS, peak_amplitude

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
N_X, N_Y = 8, 6
SCRIPTS = ("peak_finding.py", "sho_fit.py", "dimension_juggling.py", "cluster.py", "be_sho_pipeline.py")
CHANNEL = MAIN_DATASET.rsplit("/", 1)[0]


def run_example(script: str, out: Path, *args: str, size: tuple[int, int] = (N_X, N_Y)) -> str:
    """Run ``examples/<script>`` on the small size; return its standard output."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--size", f"{size[0]}x{size[1]}", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def load_example(script: str):
    """Import an example as a module (runs nothing: its work is under the main guard)."""
    spec = importlib.util.spec_from_file_location(f"example_{Path(script).stem}", EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_pngs(out: Path, *names: str) -> None:
    for name in names:
        png = out / name
        assert png.is_file(), f"{png} was not written"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, f"{png} is no plot"


def raw_spectra(path: Path) -> np.ndarray:
    """The source main dataset as written, ``(positions, spectral)``, read without lazyusid."""
    with h5py.File(path, "r") as f:
        return f[MAIN_DATASET][()]


def stored(path: Path, group: str, name: str) -> np.ndarray:
    """One output of a complete results group next to the source, ``(positions, columns)``."""
    with h5py.File(path, "r") as f:
        grp = f[f"{CHANNEL}/{group}"]
        assert grp["completed_positions"][()].all(), f"{grp.name} is not complete"
        return grp[name][()]


def results_groups(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return sorted(k for k in f[CHANNEL] if isinstance(f[CHANNEL][k], h5py.Group))


def peak_reference(path: Path) -> np.ndarray:
    """The tutorial's peak finder in a plain loop over the file: ``(N_Y, N_X)``."""
    return np.array([peak_amplitude(s, PEAK_WIDTHS) for s in raw_spectra(path)]).reshape(N_Y, N_X)


def test_peak_finding_accessor_and_process_give_the_plain_loop_result(tmp_path):
    out = run_example("peak_finding.py", tmp_path)
    assert_pngs(tmp_path, "tested_spectrum.png", "peak_amplitude.png")
    path = tmp_path / "be_pfm.h5"
    reference = peak_reference(path)

    accessor = stored(path, "Raw_Data-peak_amplitude_000", "peak_amplitude")
    np.testing.assert_array_equal(accessor.reshape(N_Y, N_X), reference)
    process = stored(path, "Raw_Data-Peak_Finding_000", "Peak_Response")
    assert process.dtype == np.float32  # PeakFinder declares outputs = {"Peak_Response": "float32"}
    np.testing.assert_array_equal(process.reshape(N_Y, N_X), reference.astype(np.float32))

    assert f"computed {N_X * N_Y} spectra" in out
    assert (
        "a new PeakFinder finds duplicate_groups=['/Measurement_000/Channel_000/Raw_Data-Peak_Finding_000']"
        in out
    )
    assert "its compute(): found the stored result" in out
    assert "maps agree: True" in out

    groups = results_groups(path)
    again = run_example("peak_finding.py", tmp_path)  # a rerun computes nothing and adds no group
    assert "computed" not in again
    assert "accessor: found the stored result" in again
    assert results_groups(path) == groups == ["Raw_Data-Peak_Finding_000", "Raw_Data-peak_amplitude_000"]


@pytest.mark.parametrize(
    ("amplitude", "frequency", "quality_factor", "phase"),
    [
        (4e-3, 325e3, 150.0, 0.3),
        (2e-3, 315.2e3, 60.0, -3.0),  # low Q, near the lower end of the resonance range, phase near −π
        (6e-3, 334.8e3, 250.0, 3.1),  # high Q (about 3 bins wide), phase near +π
    ],
)
def test_sho_fit_recovers_exact_parameters_from_noise_free_spectra(
    amplitude, frequency, quality_factor, phase
):
    example = load_example("sho_fit.py")
    freqs = np.linspace(300e3, 350e3, 119)
    spectrum = sho_response(freqs, amplitude, frequency, quality_factor, phase)
    np.testing.assert_allclose(
        example.sho_model(freqs, amplitude, frequency, quality_factor, phase), spectrum, rtol=1e-12
    )
    fit = example.fit_sho(spectrum.astype(np.complex64), freqs)
    np.testing.assert_allclose(
        [fit["amplitude"], fit["frequency"], fit["quality_factor"]],
        [amplitude, frequency, quality_factor],
        rtol=1e-5,  # the data are complex64: ~1e-7 relative rounding
    )
    assert abs(np.angle(np.exp(1j * (fit["phase"] - phase)))) < 1e-5
    assert fit["r_squared"] == pytest.approx(1.0, abs=1e-9)


def test_sho_fit_matches_the_ground_truth_and_a_plain_loop(tmp_path):
    out = run_example("sho_fit.py", tmp_path)
    assert_pngs(tmp_path, "sho_spectrum.png", "sho_maps.png")
    assert "median (95th percentile)" in out
    path = tmp_path / "be_pfm.h5"
    names = ("amplitude", "frequency", "quality_factor", "phase", "r_squared")
    fitted = {k: stored(path, "Raw_Data-SHO_Fit_000", k).reshape(N_Y, N_X) for k in names}

    # the stored maps are the function applied to every spectrum of the file
    example = load_example("sho_fit.py")
    with h5py.File(path, "r") as f:
        freqs = f[f"{CHANNEL}/Spectroscopic_Values"][0].astype(np.float64)
    loop = [example.fit_sho(s, freqs) for s in raw_spectra(path)]
    for k in names:
        np.testing.assert_allclose(fitted[k], np.reshape([r[k] for r in loop], (N_Y, N_X)), rtol=1e-12)

    # ... and they are close to the truth. Measured with noise=0.03 (the default, SNR ~33 at resonance):
    # on this 8 x 6 file, median relative errors A 0.9 %, Q 0.9 %, w0 2.7e-5 and phase 0.009 rad; on
    # 128 x 128, A 0.8 % (95th percentile 2.8 %), Q 1.2 % (3.9 %), w0 3.2e-5 (1.4e-4), phase 0.008 rad
    # (0.028 rad), R² median 0.984, lowest 0.914. The bounds sit at about 3x the medians, at or above
    # the 95th percentiles: noise cannot trip them, while a biased or broken fit (a wrong phase
    # convention, Q off by the half-power factor) gives errors of tens of percent.
    errors = example.fit_errors(fitted, load_ground_truth(path))
    assert np.median(errors["amplitude"]) < 0.03
    assert np.median(errors["quality_factor"]) < 0.03
    assert np.median(errors["frequency"]) < 2e-4  # 65 Hz, a sixth of a frequency bin (424 Hz)
    assert np.median(errors["phase"]) < 0.03  # rad
    assert np.median(fitted["r_squared"]) > 0.95
    assert np.all((fitted["r_squared"] > 0.85) & (fitted["r_squared"] <= 1))


def test_dimension_juggling_loops_over_positions_and_dc_bias(tmp_path):
    run_example("dimension_juggling.py", tmp_path)
    assert_pngs(tmp_path, "hysteresis_loop.png")
    path = tmp_path / "beps.h5"
    truth = load_ground_truth(path)
    n_dc, n_freq = truth.dc_offsets.size, truth.frequencies.size

    example = load_example("dimension_juggling.py")
    spectra = raw_spectra(path).reshape(N_Y, N_X, n_dc, n_freq)  # DC_Offset slow, Frequency fast
    expected = {
        "amplitude": np.empty((N_Y, N_X, n_dc), np.float32),
        "phase": np.empty((N_Y, N_X, n_dc), np.float32),
    }
    for index in np.ndindex(N_Y, N_X, n_dc):
        for k, v in example.resonance_peak(spectra[index]).items():
            expected[k][index] = v
    for k, v in expected.items():
        got = stored(path, "Raw_Data-resonance_peak_000", k)
        assert got.shape == (N_Y * N_X, n_dc)  # USID: positions x the spectroscopic dim DC_Offset
        np.testing.assert_array_equal(got.reshape(N_Y, N_X, n_dc), v)

    # the example's loop follows the true polarisation wherever it has switched
    group = f"{CHANNEL}/Raw_Data-resonance_peak_000"
    result = xr.Dataset({k: lazyusid.open_usid(path, f"{group}/{k}") for k in expected})
    loop = example.piezoresponse_loop(result).values
    switched = np.abs(truth.polarisation()) > 0.5
    assert np.array_equal(np.sign(loop[switched]), np.sign(truth.polarisation()[switched]))


@pytest.mark.long
def test_cluster_example_computes_on_a_local_cluster(tmp_path):
    out = run_example("cluster.py", tmp_path, "--workers", "2")
    assert_pngs(tmp_path, "cluster_peak_amplitude.png")
    assert "2 worker threads" in out
    assert "lazy and stored maps agree: True" in out
    path = tmp_path / "be_pfm_cluster.h5"
    got = stored(path, "Raw_Data-peak_amplitude_000", "peak_amplitude")
    np.testing.assert_array_equal(got.reshape(N_Y, N_X), peak_reference(path))


def step_lines(out: str, label: str) -> dict[str, tuple[int, int, str]]:
    """``{step: (positions computed, of how many, results group)}`` from one pass of the pipeline's output."""
    block = out.split(f"\n{label} ", 1)[1].split("\npass ", 1)[0]
    found = re.findall(r"^  (\w+): +computed (\d+) of (\d+) positions in [\d.]+ s -> ([\w-]+)", block, re.M)
    return {step: (int(rows), int(total), group) for step, rows, total, group in found}


def test_be_sho_pipeline_reruns_nothing_recomputes_a_changed_guess_and_refits_failures(tmp_path):
    n_x, n_y = 16, 12  # 192 positions: 4 fits fail from the default guess (the 8 x 6 file has 2)
    n = n_x * n_y
    out = run_example("be_sho_pipeline.py", tmp_path, size=(n_x, n_y))
    assert_pngs(tmp_path, "pipeline_maps.png")
    first = step_lines(out, "pass 1")
    assert set(first) == {"guess", "fit", "refit"}, f"a step did not run (no failed fit to refit?):\n{out}"
    assert first == {
        "guess": (n, n, "Raw_Data-SHO_Guess_000"),
        "fit": (n, n, "Raw_Data-SHO_Fit_000"),
        "refit": (first["refit"][0], n, "Raw_Data-SHO_Refit_000"),
    }
    second = step_lines(out, "pass 2")
    assert second == {step: (0, n, group) for step, (_, _, group) in first.items()}  # found, not computed
    assert "pass 2 (the same again) computed nothing: 0 positions for every step" in out
    third = step_lines(out, "pass 3")  # another guess parameter: the guess and the fit again, new groups
    assert third["guess"] == (n, n, "Raw_Data-SHO_Guess_001")
    assert third["fit"] == (n, n, "Raw_Data-SHO_Fit_001")
    # the lineage of the fit names the guess it started from (a Dataset: one input per variable)
    assert re.search(
        r"guess +<- \S+/Raw_Data-SHO_Guess_000 \(amplitude, frequency, quality_factor, phase\)", out
    )

    path = tmp_path / "be_pipeline.h5"
    example = load_example("be_sho_pipeline.py")
    spectra = raw_spectra(path)
    with h5py.File(path, "r") as f:
        freqs = f[f"{CHANNEL}/Spectroscopic_Values"][0].astype(np.float64)
        guess_grp, fit_grp, refit_grp = (
            f[f"{CHANNEL}/Raw_Data-SHO_{s}_000"] for s in ("Guess", "Fit", "Refit")
        )
        assert fit_grp.attrs["num_source_dsets"] == 5  # the spectra, and the 4 variables of the guess
        assert f[fit_grp.attrs["source_001"]].name == guess_grp.name + "/amplitude"
        guess = {k: guess_grp[k][()].ravel() for k in example.PARAMETERS}
        fit = {k: fit_grp[k][()].ravel() for k in (*example.PARAMETERS, "r_squared")}
        fit_failed = fit_grp["failed_positions"][()].ravel().astype(bool)
        refit = {k: refit_grp[k][()].ravel() for k in example.PARAMETERS}
        refit_done = refit_grp["completed_positions"][()].ravel().astype(bool)
        refit_failed = refit_grp["failed_positions"][()].ravel().astype(bool)

    # the guess is the vectorised function on all spectra at once; the fit a plain loop over (spectrum, guess)
    reference = example.guess_sho(spectra, freqs, 100.0)
    for k in example.PARAMETERS:
        np.testing.assert_allclose(guess[k], reference[k], rtol=1e-12)
    loop_failed = np.zeros(n, bool)
    for i, spectrum in enumerate(spectra):
        try:
            one = example.fit_from_guess(spectrum, freqs, {k: guess[k][i] for k in example.PARAMETERS})
        except RuntimeError:
            loop_failed[i] = True
            continue
        for k, v in one.items():
            assert fit[k][i] == pytest.approx(v, rel=1e-12), (k, i)
    np.testing.assert_array_equal(fit_failed, loop_failed)
    assert all(np.isnan(fit[k][fit_failed]).all() for k in fit)
    # the fit really fails at a few positions; the refit ran on exactly those and fails at fewer
    assert 0 < fit_failed.sum() < 0.1 * n and first["refit"][0] == fit_failed.sum()
    np.testing.assert_array_equal(refit_done, fit_failed)  # roi=fit.usid.failed: flags only the ROI
    assert refit_failed.sum() < fit_failed.sum() and not (refit_failed & ~fit_failed).any()
    assert (
        f"{fit_failed.sum()} failed (first at " in out and "RuntimeError: the SHO fit did not converge" in out
    )

    # the final maps (the fit, refitted where it failed) are close to the truth wherever one succeeded.
    # Measured on this 16 x 12 file (noise 0.03): median relative errors A 0.81 %, Q 1.2 %, w0 3.3e-5,
    # phase 0.0098 rad; largest A 5.0 %, Q 6.6 %, w0 3.4e-4, phase 0.070 rad (on 32 x 24 the medians
    # are the same within 10 %, the largest A 7.0 %, Q 10.5 %, w0 3.1e-4, phase 0.062 rad). The median
    # bounds are those of the sho_fit test (about 3x the medians); the bounds on every position about 3x
    # the largest errors: noise cannot trip them, while a fit left at the guess (its Q prior of 100
    # against a true 60-250) is off by up to 67 % in Q.
    good = ~(fit_failed & refit_failed)
    final = {k: np.where(fit_failed, refit[k], fit[k]).reshape(n_y, n_x) for k in example.PARAMETERS}
    errors = {k: v.ravel()[good] for k, v in example.fit_errors(final, load_ground_truth(path)).items()}
    assert np.median(errors["amplitude"]) < 0.03 and errors["amplitude"].max() < 0.2
    assert np.median(errors["quality_factor"]) < 0.03 and errors["quality_factor"].max() < 0.3
    assert np.median(errors["frequency"]) < 2e-4 and errors["frequency"].max() < 1e-3
    assert np.median(errors["phase"]) < 0.03 and errors["phase"].max() < 0.2  # rad
    assert results_groups(path) == [
        "Raw_Data-SHO_Fit_000",
        "Raw_Data-SHO_Fit_001",
        "Raw_Data-SHO_Guess_000",
        "Raw_Data-SHO_Guess_001",
        "Raw_Data-SHO_Refit_000",
    ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_examples_do_nothing_on_import(script, tmp_path, monkeypatch):
    """Worker processes import the script: all its work must sit under the main guard."""
    monkeypatch.chdir(tmp_path)
    module = load_example(script)
    assert module.__doc__ and len(module.__doc__) > 200, f"{script} needs a docstring saying what it shows"
    assert callable(module.main) and callable(module.parse_args)
    assert list(tmp_path.iterdir()) == [], f"importing {script} wrote files"
    args = module.parse_args(["--size", "8x6", "--out", "somewhere"])
    assert (args.size, args.out) == ((8, 6), "somewhere")


def test_sho_fit_map_figure_has_labelled_axes_units_and_no_empty_panel(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    sho = load_example("sho_fit.py")
    path = tmp_path / "be.h5"
    lazyusid.datasets.make_be_pfm(path, n_x=N_X, n_y=N_Y)
    data = lazyusid.open_usid(path)
    params = {"freqs": data["Frequency"].values.astype(np.float64)}
    fitted = lazyusid.map_spectra(data, sho.fit_sho, params=params, outputs=sho.OUTPUTS, cores=1).compute()
    assert [fitted[k].attrs["units"] for k in sho.OUTPUTS] == ["V", "Hz", "", "rad", ""]

    fig = sho.maps_figure(fitted, load_ground_truth(path))
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_title()]
    colorbars = [ax for ax in fig.axes if not ax.get_title()]
    assert len(panels) == 10
    assert all(ax.images or ax.patches for ax in panels), "an empty panel"
    maps = [ax for ax in panels if ax.images]
    assert len(maps) == 9
    for ax in maps:  # 8 positions at 20 nm: nanometres, no offset text
        assert ax.get_xlabel() in ("X (nm)", "") and ax.xaxis.get_offset_text().get_text() == ""
    assert [ax.get_xlabel() for ax in maps[5:]] == ["X (nm)"] * 4  # the fitted row, at the bottom
    assert {ax.get_ylabel() for ax in maps} == {"Y (nm)", ""} and maps[0].get_ylabel() == "Y (nm)"
    assert [ax.get_xlabel() for ax in colorbars] == ["A (mV)", "w0 (kHz)", "Q", "φ (rad)", "R²"]
    truth_amplitude = maps[0].images[0].get_array()
    np.testing.assert_allclose(truth_amplitude, load_ground_truth(path).amplitude / 1e-3, rtol=1e-6)
