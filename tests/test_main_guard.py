"""Scripts without ``if __name__ == "__main__":``: refused at once, with one message, nothing written.

Real scripts run with ``python script.py`` (and ``python -c``, ``python - < script``) in subprocesses,
mapping a slow per-spectrum Python function with ``cores=2`` into the source file itself.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import h5py
import pytest

import lazyusid
from lazyusid.run.mainguard import unguarded_main_frame

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGE = 'not under `if __name__ == "__main__":`'

FUNCTION = """
import time

import numpy as np

import lazyusid


def slow_peak(spectrum):
    time.sleep({sleep})  # 0.04 s: 256 positions take ~10 s estimated, so cores=2 means worker processes
    return float(np.abs(spectrum).max())
"""
CALL = """
data = lazyusid.open_usid({path!r})
result = lazyusid.map_spectra(data, slow_peak, cores={cores}, store={path!r}, progress=False)
expected = np.abs(data.values).max(axis=-1).astype(result.dtype)
print("computed", int(result.size), result.attrs["usid_rows_computed"], np.array_equal(result.values, expected))
"""


def _script(path: str, *, cores: int = 2, guarded: bool) -> str:
    call = CALL.format(path=path, cores=cores)
    if guarded:
        call = 'if __name__ == "__main__":\n' + textwrap.indent(call, "    ")
    return FUNCTION.format(sleep=0.04 if cores > 1 else 0.001) + call  # in process: no need to be slow


def _run(args: list[str], tmp_path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,  # a hang guard, not a timing: the refusal comes before any process starts
        check=False,
    )


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def scan(tmp_path):
    path = str(tmp_path / "scan.h5")
    lazyusid.datasets.make_be_pfm(path, n_x=16, n_y=16)
    return path


def _stored_ok(done: subprocess.CompletedProcess, path: str) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    assert "computed 256 256 True" in done.stdout  # every position, equal to a NumPy loop
    with h5py.File(path, "r") as f:
        assert any(k.startswith("Raw_Data-slow_peak_") for k in f["Measurement_000/Channel_000"])


def test_unguarded_script_is_refused_at_once_and_writes_nothing(scan, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(_script(scan, guarded=False))
    before = _sha256(scan)
    done = _run([str(script)], tmp_path)
    assert done.returncode != 0
    assert done.stderr.count(MESSAGE) == 1, done.stderr[-3000:]
    assert "lazyusid.UnguardedMainError" in done.stderr or "UnguardedMainError" in done.stderr
    assert f"{script}, line " in done.stderr  # names the line of the script
    assert "cores=1" in done.stderr and "client=" in done.stderr  # how to fix it
    assert done.stderr.count("Traceback") == 1  # the script's own, no worker's
    assert len(done.stderr.splitlines()) < 30, done.stderr[-3000:]
    assert _sha256(scan) == before  # no results group, not even an empty one


def test_guarded_script_computes(scan, tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(_script(scan, guarded=True))
    _stored_ok(_run([str(script)], tmp_path), scan)


# stdin in the second test command only: the same refusal-free path as -c, another 7 s
@pytest.mark.parametrize("how", ["-c", pytest.param("stdin", marks=pytest.mark.long)])
def test_code_without_a_file_needs_no_guard(scan, tmp_path, how):
    code = _script(scan, guarded=False)
    done = _run(["-c", code], tmp_path) if how == "-c" else _run(["-"], tmp_path, stdin=code)
    _stored_ok(done, scan)


def test_unguarded_script_with_one_core_computes_in_process(scan, tmp_path):
    script = tmp_path / "one_core.py"
    script.write_text(_script(scan, cores=1, guarded=False))
    _stored_ok(_run([str(script)], tmp_path), scan)


def test_code_run_under_pytest_is_not_taken_for_an_unguarded_script():
    # pytest's own entry script is __main__ with a file, guarded: this frame is not at its top level
    assert unguarded_main_frame(sys._getframe()) is None
