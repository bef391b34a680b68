"""``lazyusid.Process``: the seed tutorial's pyUSID ``PeakFinder``, ported, against pyUSID itself.

The reference is pyUSID 0.0.12's own ``Process`` running the tutorial class
(``examples/pyusid_peak_finder.py``) on an identical copy of the same file.
The port below is that class with the base class changed, the hand-written
``_create_results_datasets`` / ``_write_results_chunk`` deleted and the
outputs declared: nothing else.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from scipy.signal import find_peaks_cwt

import lazyusid
from lazyusid.core.function import SpectralFunction
from lazyusid.datasets import MAIN_DATASET, make_be_pfm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
N_Y, N_X = 10, 12  # 120 positions of 119 frequencies (complex64)
#: bytes per position the plan counts: 952 input + 4 output + 952 working (mem_multiplier=1)
BYTES_PER_POSITION = 119 * 8 * 2 + 4
#: a budget of 10 positions per block (cores=1: one block in flight)
TEN_POSITIONS_MB = 10 * BYTES_PER_POSITION / 2**20

#: the widths the tutorial passes to ``find_peaks_cwt``
PEAK_WIDTHS = np.linspace(20, 60, 30)


# ---------------------------------------------------------------------------
# The port: pyUSID's tutorial class with ``usid.Process`` → ``lazyusid.Process``,
# ``_create_results_datasets`` / ``_write_results_chunk`` replaced by ``outputs``


class PeakFinder(lazyusid.Process):
    """Amplitude of the peak closest to the centre of every spectrum (pyUSID's tutorial class)."""

    outputs = {"Peak_Response": "float32"}

    def __init__(self, h5_main, **kwargs):
        super().__init__(h5_main, "Peak_Finding", parms_dict={"algorithm": "find_all_peaks"}, **kwargs)

    def test(self, pixel_ind):
        """The result for one position."""
        return self._map_function(self.h5_main[pixel_ind])

    @staticmethod
    def _map_function(spectra, *args, **kwargs):
        magnitude = np.abs(spectra)
        peaks = find_peaks_cwt(magnitude, PEAK_WIDTHS)
        if len(peaks) == 0:
            return 0.0
        centre = magnitude.size // 2
        closest = peaks[np.argmin(np.abs(np.asarray(peaks) - centre))]
        return float(magnitude[closest])


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session", autouse=True)
def _stop_lazyusid_workers():
    yield
    lazyusid.shutdown()


@pytest.fixture(scope="module")
def reference_module(pyusid):
    """``examples/pyusid_peak_finder.py``: the tutorial's class on pyUSID."""
    path = EXAMPLES / "pyusid_peak_finder.py"
    if not path.exists():
        pytest.fail(f"{path} is missing: it holds the pyUSID PeakFinder these tests compare with")
    spec = importlib.util.spec_from_file_location("pyusid_peak_finder", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A BE-PFM file, Y=10 × X=12 positions, 119 frequencies; written once."""
    path = tmp_path_factory.mktemp("source") / "be_pfm.h5"
    make_be_pfm(path, n_x=N_X, n_y=N_Y, seed=7)
    return os.fspath(path)


@pytest.fixture(scope="module")
def expected(source, reference_module, tmp_path_factory):
    """pyUSID's results (cores=1 and cores=2 agree), from copies of the source file."""
    results = []
    for cores in (1, 2):
        copy = tmp_path_factory.mktemp(f"pyusid{cores}") / "be_pfm.h5"
        shutil.copyfile(source, copy)
        with h5py.File(copy, "r+") as f:
            group = reference_module.PeakFinder(f[MAIN_DATASET], cores=cores).compute()
            assert group.name == MAIN_DATASET + "-Peak_Finding_000"
            results.append(group["Peak_Response"][()])
    np.testing.assert_array_equal(results[0], results[1])
    assert results[0].shape == (N_Y * N_X, 1) and results[0].dtype == np.float32
    return results[0]


@pytest.fixture
def scan(source, tmp_path):
    """A fresh copy of the source (results go into it)."""
    copy = os.fspath(tmp_path / "be_pfm.h5")
    shutil.copyfile(source, copy)
    return copy


@pytest.fixture
def evaluated(monkeypatch):
    """Every position the function is evaluated at by the engine (in this process: cores=1)."""
    positions: list[int] = []
    original = SpectralFunction.evaluate

    def evaluate(self, block, *, first=0, **kwargs):
        positions.extend(range(first, first + block.shape[0]))
        return original(self, block, first=first, **kwargs)

    monkeypatch.setattr(SpectralFunction, "evaluate", evaluate)
    return positions


# ---------------------------------------------------------------------------
# The port gives pyUSID's results, in a results group pyUSID reads


def test_the_port_is_the_tutorial_class_with_outputs_declared(reference_module):
    reference = reference_module.PeakFinder
    for name in ("__init__", "test"):
        assert getattr(PeakFinder, name).__code__.co_code == getattr(reference, name).__code__.co_code
    assert PeakFinder._map_function.__code__.co_code == reference._map_function.__code__.co_code
    np.testing.assert_array_equal(PEAK_WIDTHS, reference_module.PEAK_WIDTHS)
    assert "_create_results_datasets" not in vars(PeakFinder)
    assert "_write_results_chunk" not in vars(PeakFinder)


def test_results_are_identical_to_pyusid(scan, expected, pyusid):
    with h5py.File(scan, "r+") as f:
        finder = PeakFinder(f[MAIN_DATASET], cores=1)
        assert finder.duplicate_groups == [] and finder.partial_groups == []
        assert finder.test(17) == pytest.approx(float(expected[17, 0]), rel=1e-6)
        assert lazyusid.Process.test(finder, 17) == expected[17, 0]  # the inherited test(), same dtype
        group = finder.compute()
        assert isinstance(group, h5py.Group)
        assert group.name == MAIN_DATASET + "-Peak_Finding_000"  # the name pyUSID gives
        np.testing.assert_array_equal(group["Peak_Response"][()], expected)
        assert group["completed_positions"][()].all() and group.attrs["last_pixel"] == N_Y * N_X

        # pyUSID reads it: a main dataset, the source's positions, the tool and its parameters
        assert pyusid.hdf_utils.check_if_main(group["Peak_Response"])
        peaks = pyusid.USIDataset(group["Peak_Response"])
        np.testing.assert_array_equal(peaks.get_n_dim_form()[..., 0], expected[:, 0].reshape(N_Y, N_X))
        source_positions = f[f[MAIN_DATASET].attrs["Position_Indices"]]
        assert peaks.h5_pos_inds.name == source_positions.name  # reused, as pyUSID does
        assert pyusid.hdf_utils.get_source_dataset(group) == f[MAIN_DATASET]
        found = pyusid.hdf_utils.check_for_old(
            f[MAIN_DATASET], "Peak_Finding", {"algorithm": "find_all_peaks"}
        )
        assert [g.name for g in found] == [group.name]

    result = finder.result
    assert isinstance(result, xr.DataArray) and result.dims == ("Y", "X")
    np.testing.assert_array_equal(result.values, expected[:, 0].reshape(N_Y, N_X))


def test_rerun_returns_the_stored_group_and_override_makes_a_new_one(
    scan, expected, evaluated, capsys, pyusid
):
    with h5py.File(scan, "r+") as f:
        first = PeakFinder(f[MAIN_DATASET], cores=1).compute()
        assert len(evaluated) == N_Y * N_X

        evaluated.clear()
        # a new instance, given a USIDataset as pyUSID users do
        again = PeakFinder(pyusid.USIDataset(f[MAIN_DATASET]), cores=1, verbose=True)
        assert [g.name for g in again.duplicate_groups] == [first.name] and again.partial_groups == []
        group = again.compute()
        assert group.name == first.name
        assert evaluated == []  # nothing computed
        assert again.result.attrs["usid_rows_computed"] == 0
        assert "found complete results of this computation" in capsys.readouterr().out
        assert "2 complete" not in repr(again) and "1 complete, 0 partial" in repr(again)

        new = again.compute(override=True)
        assert new.name == MAIN_DATASET + "-Peak_Finding_001"
        assert len(evaluated) == N_Y * N_X
        np.testing.assert_array_equal(new["Peak_Response"][()], expected)
        assert [g.name for g in again.duplicate_groups] == [first.name, new.name]
        # a new instance returns the newest
        assert PeakFinder(f[MAIN_DATASET], cores=1).compute().name == new.name


def test_groups_pyusid_wrote_are_left_alone(scan, expected, reference_module):
    with h5py.File(scan, "r+") as f:
        theirs = reference_module.PeakFinder(f[MAIN_DATASET], cores=1).compute()
        finder = PeakFinder(f[MAIN_DATASET], cores=1)
        assert finder.duplicate_groups == [] and finder.partial_groups == []  # no token: not ours to trust
        ours = finder.compute()
        assert (theirs.name, ours.name) == (
            MAIN_DATASET + "-Peak_Finding_000",
            MAIN_DATASET + "-Peak_Finding_001",
        )
        np.testing.assert_array_equal(ours["Peak_Response"][()], theirs["Peak_Response"][()])


# ---------------------------------------------------------------------------
# Interrupted, then resumed

KILLED_RUN = """
import os, sys, time
sys.path.insert(0, {tests!r})
import h5py
import lazyusid.sinks.hdf5 as hdf5

write = hdf5.HDF5Sink.write


def logged_write(self, r0, r1, outs):  # slow the run down between checkpoints, and say where it is
    write(self, r0, r1, outs)
    with open({log!r}, "a") as f:
        f.write(f"{{r0}} {{r1}}\\n")
    time.sleep(0.25)


hdf5.HDF5Sink.write = logged_write
from test_process import PeakFinder

with h5py.File({path!r}, "r+") as f:
    PeakFinder(f[{dataset!r}], cores=1, max_mem_mb={mem!r}).compute()
print("finished", flush=True)
"""


def test_killed_compute_resumes_where_it_stopped(scan, expected, evaluated, tmp_path):
    log = tmp_path / "blocks.log"
    script = KILLED_RUN.format(
        tests=str(Path(__file__).parent), log=str(log), path=scan, dataset=MAIN_DATASET, mem=TEN_POSITIONS_MB
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, DASK_LAZYUSID__CHECKPOINT_INTERVAL="0"),  # flag every block as it is written
    )
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.communicate()}"
        assert log.exists(), "the run wrote no block within 40 s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    with h5py.File(scan, "r+") as f:
        finder = PeakFinder(f[MAIN_DATASET], cores=1, max_mem_mb=TEN_POSITIONS_MB)
        assert finder.duplicate_groups == []
        assert [g.name for g in finder.partial_groups] == [MAIN_DATASET + "-Peak_Finding_000"]
        done = finder.partial_groups[0]["completed_positions"][()].astype(bool)
        written = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
        assert len(written) >= 3 and all(b - a == 10 for a, b in written)  # blocks of the budget's size
        assert all(done[a:b].all() for a, b in written)  # every logged block is checkpointed
        assert done.sum() < N_Y * N_X

        finder.use_partial_computation()
        group = finder.compute()
        assert group.name == MAIN_DATASET + "-Peak_Finding_000"
        assert sorted(evaluated) == list(np.flatnonzero(~done))  # only the missing positions
        assert finder.result.attrs["usid_rows_computed"] == int((~done).sum())
        np.testing.assert_array_equal(group["Peak_Response"][()], expected)
        assert group["completed_positions"][()].all() and group.attrs["last_pixel"] == N_Y * N_X
        assert finder.partial_groups == [] and [g.name for g in finder.duplicate_groups] == [group.name]


def test_a_partial_group_is_resumed_without_being_named(scan, evaluated):
    """As in pyUSID, compute() resumes a partial result of the same computation by itself."""
    failing = FailingPeakFinder.fail_at
    with h5py.File(scan, "r+") as f:
        with pytest.raises(lazyusid.SpectralFunctionError):
            FailingPeakFinder(f[MAIN_DATASET], cores=1, max_mem_mb=TEN_POSITIONS_MB).compute()
        group = f[MAIN_DATASET + "-Failing_Peaks_000"]
        done = group["completed_positions"][()].astype(bool)
        assert done[: failing // 10 * 10].all() and not done[failing]  # finished blocks kept

        evaluated.clear()
        finder = FailingPeakFinder(
            f[MAIN_DATASET], cores=1, max_mem_mb=TEN_POSITIONS_MB, parms_dict={"fail": False}
        )
        assert finder.partial_groups == []  # other parameters: another computation
        resumed = FailingPeakFinder(f[MAIN_DATASET], cores=1, max_mem_mb=TEN_POSITIONS_MB)
        assert [g.name for g in resumed.partial_groups] == [group.name]
        with pytest.raises(lazyusid.SpectralFunctionError):  # still failing at that position
            resumed.compute()
        assert evaluated[0] == failing // 10 * 10  # started at the first unfinished block
        assert MAIN_DATASET + "-Failing_Peaks_001" not in f  # in the same group


# ---------------------------------------------------------------------------
# Inputs and targets


def test_dataarray_and_path_inputs(scan, expected):
    data = lazyusid.open_usid(scan)
    finder = PeakFinder(data, cores=1)
    assert lazyusid.Process.test(finder, {"Y": 2, "X": 5}) == expected[2 * N_X + 5, 0]
    group = finder.compute()
    assert group == f"{scan}:{MAIN_DATASET}-Peak_Finding_000"
    np.testing.assert_array_equal(finder.result.values, expected[:, 0].reshape(N_Y, N_X))

    by_path = PeakFinder(scan, cores=1)  # the file now holds results too: the measurement is chosen
    assert by_path.duplicate_groups == [group]
    assert by_path.compute() == group and by_path.result.attrs["usid_rows_computed"] == 0


@pytest.mark.parametrize("target", ["other.h5", "h5py-group", "results.zarr"])
def test_results_in_another_file_or_zarr(scan, expected, tmp_path, pyusid, target):
    other = os.fspath(tmp_path / "other.h5")
    with h5py.File(scan, "r+") as f:
        if target == "h5py-group":
            with h5py.File(other, "a") as out:
                grp = out.require_group("Results")
                group = PeakFinder(f[MAIN_DATASET], cores=1, h5_target_group=grp).compute()
                assert isinstance(group, h5py.Group) and group.file.filename == other
                assert group.name == "/Results/Raw_Data-Peak_Finding_000"
                values = group["Peak_Response"][()]
                assert pyusid.hdf_utils.check_if_main(group["Peak_Response"])
                assert group.attrs["source_file_path"] == os.path.abspath(scan)
        else:
            store = os.fspath(tmp_path / target)
            finder = PeakFinder(f[MAIN_DATASET], cores=1, h5_target_group=store)
            group = finder.compute()
            if target.endswith(".zarr"):
                assert group == store
                values = xr.open_zarr(store, consolidated=False)["Peak_Response"].values.reshape(-1, 1)
            else:
                assert group == f"{other}:/Raw_Data-Peak_Finding_000"
                with h5py.File(other, "r") as out:
                    values = out["Raw_Data-Peak_Finding_000/Peak_Response"][()]
            again = PeakFinder(f[MAIN_DATASET], cores=1, h5_target_group=store)
            assert again.duplicate_groups == [group] and again.compute() == group
            assert again.result.attrs["usid_rows_computed"] == 0
        # the source file is untouched
        assert not any(k.startswith("Raw_Data-") for k in f["Measurement_000/Channel_000"])
    np.testing.assert_array_equal(values, expected)


# ---------------------------------------------------------------------------
# Other subclasses


class BlockPeak(lazyusid.Process):
    """A vectorised process: ``unit_computation`` gets a block of spectra, positions first."""

    outputs = {"Peak": "float32"}

    @staticmethod
    def unit_computation(block, scale=1.0, **kwargs):
        return np.abs(block).max(axis=1) * scale


class NoFunction(lazyusid.Process):
    """A port that forgot its function."""


class FailingPeakFinder(PeakFinder):
    """Fails at one position unless told not to."""

    fail_at = 37

    def __init__(self, h5_main, parms_dict=None, **kwargs):
        lazyusid.Process.__init__(
            self, h5_main, "Failing_Peaks", parms_dict=parms_dict or {"fail": True}, **kwargs
        )

    @staticmethod
    def _map_function(spectra, *args, fail=True, **kwargs):
        if fail and np.array_equal(spectra, FAILING_SPECTRUM.get("value")):
            raise FloatingPointError("no peak")
        return float(np.abs(spectra).max())


#: the spectrum :class:`FailingPeakFinder` fails on (set by the fixture below, per file)
FAILING_SPECTRUM: dict = {}


@pytest.fixture(autouse=True)
def _failing_spectrum(source):
    with h5py.File(source, "r") as f:
        FAILING_SPECTRUM["value"] = f[MAIN_DATASET][FailingPeakFinder.fail_at]


class Scaled(lazyusid.Process):
    """Takes its parameters as keyword arguments."""

    outputs = {"Scaled_Peak": "float64"}

    @staticmethod
    def map_function(spectrum, scale, offsets, label="x"):
        assert isinstance(label, str) and isinstance(offsets, list)
        return np.abs(spectrum).max() * scale + sum(offsets)


def test_pyusid_argument_order_and_attribute_names(scan, tmp_path):
    with h5py.File(scan, "r+") as f, h5py.File(tmp_path / "out.h5", "w") as out:
        # pyUSID's order: parms_dict, cores, max_mem_mb, mem_multiplier, lazy, h5_target_group, verbose
        finder = Scaled(
            f[MAIN_DATASET], "Scaled", {"scale": 1.0, "offsets": []}, 1, 64, 1.0, False, out, False
        )
        assert finder.duplicate_h5_groups == [] and finder.partial_h5_groups == []
        group = finder.compute()
        assert group.file == out and group.name == "/Raw_Data-Scaled_000"
        assert finder.duplicate_h5_groups == [group] and finder.h5_results_grp == group


def test_unit_computation_is_vectorised(scan):
    data = lazyusid.open_usid(scan)
    finder = BlockPeak(data, cores=1, parms_dict={"scale": 2.0})
    assert finder.process_name == "BlockPeak"
    assert finder.test(5) == pytest.approx(np.abs(data.values.reshape(-1, 119)[5]).max() * 2.0, rel=1e-6)
    group = finder.compute()
    assert group.endswith(":/Measurement_000/Channel_000/Raw_Data-BlockPeak_000")
    np.testing.assert_allclose(finder.result.values, np.abs(data.values).max(axis=-1) * 2.0, rtol=1e-6)


def test_parms_dict_goes_to_the_function_and_the_group(scan, pyusid):
    parms = {"scale": 2.5, "offsets": [1, 2], "label": "amp"}
    with h5py.File(scan, "r+") as f:
        spectra = f[MAIN_DATASET][()]
        finder = Scaled(f[MAIN_DATASET], "Scaled", parms_dict=parms, cores=1)
        assert finder.test(3) == pytest.approx(np.abs(spectra[3]).max() * 2.5 + 3)
        group = finder.compute()
        np.testing.assert_allclose(
            group["Scaled_Peak"][:, 0], np.abs(spectra).max(axis=1) * 2.5 + 3, rtol=1e-6
        )
        assert group.attrs["scale"] == 2.5 and list(group.attrs["offsets"]) == [1, 2]
        assert group.attrs["label"] == "amp" and group.attrs["tool"] == "Scaled"

        found = pyusid.hdf_utils.check_for_old(
            f[MAIN_DATASET], "Scaled", new_parms={"scale": 2.5, "label": "amp"}
        )
        assert [g.name for g in found] == [group.name]
        assert pyusid.hdf_utils.check_for_old(f[MAIN_DATASET], "Scaled", new_parms={"scale": 3.0}) == []

        other = Scaled(f[MAIN_DATASET], "Scaled", parms_dict={**parms, "scale": 3.0}, cores=1)
        assert other.duplicate_groups == []
        assert other.compute().name == MAIN_DATASET + "-Scaled_001"
        assert Scaled(f[MAIN_DATASET], "Scaled", parms_dict=parms, cores=1).duplicate_groups == [group]


# ---------------------------------------------------------------------------
# Errors


def test_a_subclass_without_a_function_says_what_to_define(scan):
    with pytest.raises(NotImplementedError, match=r"NoFunction must define a static _map_function\(spectrum"):
        NoFunction(scan)
    with pytest.raises(TypeError, match=r"parms_dict must be a dict, got list"):
        lazyusid.Process(scan, "x", parms_dict=[1, 2])


def test_a_failing_function_names_the_position(scan):
    at = FailingPeakFinder.fail_at
    with h5py.File(scan, "r+") as f:
        finder = FailingPeakFinder(f[MAIN_DATASET], cores=1)
        with pytest.raises(
            lazyusid.SpectralFunctionError, match=rf"position {at} \(Y=3, X=1\).*FloatingPointError: no peak"
        ) as info:
            finder.compute()
        assert info.value.position == at and info.value.coords == {"Y": 3, "X": 1}
        with pytest.raises(lazyusid.SpectralFunctionError, match=rf"position {at} \(Y=3, X=1\)"):
            lazyusid.Process.test(finder, at)


def test_a_function_failing_on_the_first_spectrum_fails_at_construction(scan):
    FAILING_SPECTRUM["value"] = lazyusid.open_usid(scan).values[0, 0]
    with pytest.raises(
        lazyusid.SpectralFunctionError, match=r"position 0 \(Y=0, X=0\) while lazyusid inferred"
    ):
        FailingPeakFinder(scan, cores=1)


def test_too_small_a_memory_budget_is_refused(scan):
    with pytest.raises(lazyusid.BudgetError, match=r"cannot hold one position: each needs 1\.86 kiB"):
        PeakFinder(scan, cores=1, max_mem_mb=0.001)


def test_a_file_open_read_only_is_refused_with_advice(scan):
    with h5py.File(scan, "r") as f:
        finder = PeakFinder(f[MAIN_DATASET], cores=1)
        with pytest.raises(lazyusid.StoreBusyError, match=r"open read-only in this process.*close it"):
            finder.compute()


def test_partial_group_errors(scan):
    with h5py.File(scan, "r+") as f:
        finder = PeakFinder(f[MAIN_DATASET], cores=1)
        with pytest.raises(ValueError, match=r"no partial results of this computation in .*be_pfm\.h5"):
            finder.use_partial_computation()
        group = BlockPeak(f[MAIN_DATASET], "Peak_Finding", cores=1).compute()
        with pytest.raises(lazyusid.StoreConflictError, match=r"holds a different computation"):
            finder.use_partial_computation(group)
