"""``lazyusid map MODULE:FUNCTION FILE``, end to end: the real entry point in a subprocess, on small generated files.

The mapped functions live in a module written for each test into a directory
of its own (``mods/mapfuncs.py``), outside every ``PYTHONPATH``: given as a
file path the command must make it importable itself (also in worker
processes); given as a module name it is found in the current directory.
References are plain NumPy loops over the main dataset read with h5py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np
import pytest

import lazyusid
from lazyusid import datasets

EXE = str(Path(sys.executable).with_name("lazyusid"))
ROOT = str(Path(lazyusid.__file__).resolve().parents[1])
N_Y, N_X, N_FREQ = 8, 12, 16
GROUP = "Measurement_000/Channel_000"

FUNCTIONS = '''
import os
import time

import numpy as np


def peak(spectrum):
    return float(np.abs(spectrum).max())


def scaled(spectrum, k, offset, label):
    return float(np.abs(spectrum).max()) * k + offset + len(label)


def logged_peak(spectrum, log, sleep_s=0.0):
    """The peak; appends this process's pid to ``log`` first, then sleeps."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{os.getpid()}\\n".encode())
    os.close(fd)
    time.sleep(sleep_s)
    return float(np.abs(spectrum).max())


def block_peaks(block):
    return np.abs(block).max(axis=-1)


NOT_A_FUNCTION = 3
'''


@pytest.fixture
def scan(tmp_path) -> Path:
    """A small BE-PFM file (8 x 12 positions x 16 frequencies)."""
    path = tmp_path / "scan.h5"
    datasets.make_be_pfm(path, n_x=N_X, n_y=N_Y, n_freq=N_FREQ)
    return path


@pytest.fixture
def mods(tmp_path) -> Path:
    """A directory on no path holding ``mapfuncs.py`` (:data:`FUNCTIONS`) and ``broken.py`` (a syntax error)."""
    d = tmp_path / "mods"
    d.mkdir()
    (d / "mapfuncs.py").write_text(FUNCTIONS)
    (d / "broken.py").write_text("def f(spectrum):\n    return spectrum +\n")
    return d


def env() -> dict[str, str]:
    """This environment with only the package under test on ``PYTHONPATH`` (not tests/, not the modules)."""
    return {**os.environ, "PYTHONPATH": ROOT}


def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``lazyusid *args`` through the installed console script."""
    return subprocess.run(
        [EXE, *map(str, args)], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )


def numpy_peaks(path: Path) -> np.ndarray:
    """max |spectrum| of every row of the main dataset: a plain loop."""
    with h5py.File(path, "r") as f:
        rows = f[datasets.MAIN_DATASET][()]
    return np.array([float(np.abs(row).max()) for row in rows])


def results_groups(path: Path, tool: str) -> list[str]:
    with h5py.File(path, "r") as f:
        return sorted(g for g in f[GROUP] if g.startswith(f"Raw_Data-{tool}_"))


def stored(path: Path, tool: str) -> np.ndarray:
    """The values of the one results group of ``tool`` (flat, one per position), read with h5py."""
    (name,) = results_groups(path, tool)
    with h5py.File(path, "r") as f:
        grp = f[GROUP][name]
        assert grp["completed_positions"][()].all()
        return grp[tool][()][:, 0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def logged_pids(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()]


def test_map_stores_what_a_numpy_loop_computes_and_a_rerun_computes_nothing(scan, mods):
    done = run("map", mods / "mapfuncs.py:peak", scan, "--no-progress")
    assert done.returncode == 0, done.stderr
    (name,) = results_groups(scan, "peak")
    where = f"{scan}:/{GROUP}/{name}"
    assert f"computed peak on {N_Y * N_X} positions" in done.stdout and where in done.stdout
    assert "positions/s" in done.stdout
    np.testing.assert_array_equal(stored(scan, "peak"), numpy_peaks(scan))

    before = sha256(scan)
    again = run("map", mods / "mapfuncs.py:peak", scan, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "already computed" in again.stdout and where in again.stdout
    assert "positions/s" not in again.stdout
    assert results_groups(scan, "peak") == [name]
    assert sha256(scan) == before


def test_params_and_params_json_reach_the_function(scan, mods):
    params = mods / "params.json"
    params.write_text(json.dumps({"offset": 0.5, "k": 7}))
    done = run(
        "map", "mapfuncs:scaled", scan, "--param", "k=2", "--param", "label=abc", "--params-json", params,
        "--no-progress", cwd=mods,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(stored(scan, "scaled"), numpy_peaks(scan) * 2 + 0.5 + 3, rtol=0, atol=0)
    (name,) = results_groups(scan, "scaled")
    with h5py.File(scan, "r") as f:
        attrs = f[GROUP][name].attrs
        assert attrs["k"] == 2 and np.asarray(attrs["k"]).dtype.kind == "i"  # JSON 2, not the string "2"
        assert attrs["label"] == "abc" and attrs["offset"] == 0.5


def test_a_py_file_runs_on_worker_processes(scan, mods, tmp_path):
    log = tmp_path / "calls.log"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.Popen(
        [EXE, "map", os.path.relpath(mods / "mapfuncs.py", elsewhere) + ":logged_peak", str(scan),
         "--param", f"log={log}", "--param", "sleep_s=0.12", "--cores", "2", "--no-progress"],  # ~11.5 s of work: worth the workers
        cwd=elsewhere, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    np.testing.assert_array_equal(stored(scan, "logged_peak"), numpy_peaks(scan))
    pids = logged_pids(log)
    on_workers = [p for p in pids if p != proc.pid]
    assert len(on_workers) >= N_Y * N_X, f"{len(on_workers)} of {len(pids)} calls in worker processes"
    assert f"computed logged_peak on {N_Y * N_X} positions" in out


@pytest.fixture
def in_process(monkeypatch, capsys):
    """``lazyusid.cli.main`` in this process, undoing what importing the user's module changes (``sys.path``,
    ``sys.modules``); returns ``(exit status, stdout, stderr)``. Quicker than a subprocess for refusals."""
    from lazyusid.cli import main

    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    capsys.readouterr()

    def call(*args, cwd: Path | None = None) -> tuple[int, str, str]:
        with monkeypatch.context() as m:
            if cwd is not None:
                m.chdir(cwd)
            code = main([str(a) for a in args])
        for name in set(sys.modules) - before:
            if name.startswith(("mapfuncs", "broken", "no_such_module")):
                del sys.modules[name]
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.mark.parametrize(
    "spec, says",
    [
        ("{mods}/mapfuncs.py", "expected MODULE:FUNCTION"),
        ("{mods}/mapfuncs.py:", "expected MODULE:FUNCTION"),
        ("no_such_module_xyz:peak", "no module named 'no_such_module_xyz'"),
        ("{mods}/missing.py:peak", "no such file"),
        ("{mods}/mapfuncs.py:nope", "has no function 'nope'"),
        ("{mods}/mapfuncs.py:NOT_A_FUNCTION", "is not callable"),
        ("{mods}/broken.py:f", "cannot import 'broken'"),
    ],
    ids=["no-colon", "no-function", "no-module", "no-file", "no-attribute", "not-callable", "syntax-error"],
)
def test_a_bad_function_exits_2_with_one_line_and_writes_nothing(scan, mods, in_process, spec, says):
    before = sha256(scan)
    code, out, err = in_process("map", spec.format(mods=mods), scan, cwd=mods.parent)
    assert code == 2, (out, err)
    assert err.startswith("lazyusid map: error: ") and err.count("\n") == 1, err
    assert says in err
    assert out == ""
    assert sha256(scan) == before


def test_bad_params_exit_2_with_one_line(scan, mods, in_process):
    before = sha256(scan)
    for args, says in (
        (["--param", "k"], "--param must look like NAME=VALUE"),
        (["--param", "k=1", "--param", "k=2"], "--param k is given twice"),
        (["--params-json", mods / "missing.json"], "no such file"),
        (["--params-json", mods / "mapfuncs.py"], "is not JSON"),
        (["--outputs", "peak=float77"], "is not a NumPy dtype"),
    ):
        code, out, err = in_process("map", mods / "mapfuncs.py:scaled", scan, *args)
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and says in err, err
        assert out == ""
    assert sha256(scan) == before


def test_errors_of_the_run_are_one_line_with_exit_1_and_write_nothing(scan, mods, tmp_path, in_process):
    before = sha256(scan)
    for args, says in (
        ([mods / "mapfuncs.py:peak", tmp_path / "missing.h5"], "no such file"),
        ([mods / "mapfuncs.py:peak", scan, "--dataset", "Nope"], "'Nope' is not in the file"),
        ([mods / "mapfuncs.py:scaled", scan, "--param", "k=2"], "scaled failed at position 0"),
        ([mods / "mapfuncs.py:peak", scan, "--budget", "1B"], "budget"),
        ([mods / "mapfuncs.py:peak", scan, "--core-dims", "Nope"], "are not dimensions of the data"),
        ([mods / "mapfuncs.py:peak", scan, "--outputs", '{"peak": {"dtipe": "f4"}}'], "unknown keys"),
    ):
        code, out, err = in_process("map", *args, "--no-progress")
        assert code == 1, (args, err)
        assert err.startswith("lazyusid map: error: ") and err.count("\n") == 1, err
        assert says in err, err
        assert out == ""
    assert sha256(scan) == before


def test_store_into_zarr_names_the_store(scan, mods, tmp_path):
    import xarray as xr

    target = tmp_path / "results.zarr"
    done = run("map", mods / "mapfuncs.py:peak", scan, "--store", target, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"into {target}" in done.stdout
    on_disk = xr.open_zarr(target, consolidated=False)
    np.testing.assert_array_equal(on_disk["peak"].values.reshape(-1), numpy_peaks(scan))
    again = run("map", mods / "mapfuncs.py:peak", scan, "--store", target, "--no-progress")
    assert "already computed" in again.stdout and str(target) in again.stdout


def test_vectorized_with_core_dims(tmp_path, mods):
    path = tmp_path / "beps.h5"
    datasets.make_beps(path, n_x=3, n_y=2, n_dc=5, n_freq=8)
    done = run("map", f"{mods / 'mapfuncs.py'}:block_peaks", path, "--vectorized", "--core-dims", "Frequency",
               "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = lazyusid.open_usid(path)
    expected = np.abs(data.values).max(axis=-1)  # (Y, X, DC_Offset)
    (name,) = results_groups(path, "block_peaks")
    result = lazyusid.open_usid(path, f"/{GROUP}/{name}/block_peaks")
    assert result.dims == ("Y", "X", "DC_Offset")
    np.testing.assert_array_equal(result.values, expected)
    assert f"computed block_peaks on {2 * 3 * 5} positions" in done.stdout


def test_ctrl_c_checkpoints_exits_130_and_a_rerun_completes(scan, mods, tmp_path):
    log = tmp_path / "calls.log"
    argv = [EXE, "map", f"{mods / 'mapfuncs.py'}:logged_peak", str(scan), "--param", f"log={log}",
            "--param", "sleep_s=0.05", "--cores", "2", "--no-progress"]  # fmt: skip
    # Ctrl-C as in a terminal, also when the tests run in a shell's background (which ignores it there)
    child = subprocess.Popen(
        argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while (not log.exists() or len(logged_pids(log)) < 12) and time.monotonic() < deadline:
            assert child.poll() is None, child.communicate()
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGINT)  # a terminal's Ctrl-C: the worker processes get it too
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 130, (out, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted: ")]
    assert len(lines) == 1, err
    saved = int(lines[0].split()[1])
    assert saved < N_Y * N_X, lines[0]
    assert "computed" not in out

    again = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"computed logged_peak on {N_Y * N_X - saved} positions" in again.stdout, again.stdout
    np.testing.assert_array_equal(stored(scan, "logged_peak"), numpy_peaks(scan))


@pytest.mark.cluster
@pytest.mark.long  # the README command runs a command-line cluster in tests/test_cluster.py
def test_scheduler_file_runs_on_a_running_dask_scheduler(scan, mods, tmp_path):
    import clusters

    log = tmp_path / "calls.log"
    with clusters.start_command_line_cluster(tmp_path / "cluster", n_workers=1) as cluster:
        try:
            proc = subprocess.Popen(
                [EXE, "map", f"{mods / 'mapfuncs.py'}:logged_peak", str(scan), "--param", f"log={log}",
                 "--scheduler-file", str(cluster.scheduler_file), "--wait-for-workers", "1", "--no-progress"],
                env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            out, err = proc.communicate(timeout=300)
            # a package of the current directory is not sent to the workers: refused before anything is written
            package = tmp_path / "here" / "mypkg"
            package.mkdir(parents=True)
            (package / "__init__.py").write_text(FUNCTIONS)
            before = sha256(scan)
            refused = run(
                "map", "mypkg:peak", scan, "--scheduler-file", cluster.scheduler_file, cwd=package.parent
            )
        finally:
            print(cluster.logs())  # shown when the test fails
        assert proc.returncode == 0, err
        worker_pids = set(cluster.worker_pids)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "of the cluster's workers cannot import 'mypkg'" in refused.stderr
    assert sha256(scan) == before
    np.testing.assert_array_equal(stored(scan, "logged_peak"), numpy_peaks(scan))
    pids = logged_pids(log)
    assert set(pids) - {proc.pid} == worker_pids, f"calls per pid: {np.unique(pids, return_counts=True)}"
    assert sum(p in worker_pids for p in pids) >= N_Y * N_X
    assert f"computed logged_peak on {N_Y * N_X} positions" in out


def test_version():
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout == f"lazyusid {version('lazyusid')}\n"


def test_help_says_how_param_values_are_read():
    done = run("map", "--help")
    assert done.returncode == 0
    assert "JSON" in done.stdout and "MODULE:FUNCTION" in done.stdout and "--scheduler-file" in done.stdout


def test_outputs_name_and_type_the_result(scan, mods, in_process):
    code, out, err = in_process(
        "map", mods / "mapfuncs.py:peak", scan, "--outputs", "amp=float32", "--no-progress"
    )
    assert code == 0, err
    assert "(outputs: amp)" in out
    (name,) = results_groups(scan, "peak")
    with h5py.File(scan, "r") as f:
        values = f[GROUP][name]["amp"][()][:, 0]
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, numpy_peaks(scan).astype(np.float32))
