"""Faults during a stored run on worker processes: a function that kills its worker, Ctrl-C, SIGTERM.

Real worker processes and real signals: the interrupted runs happen in a child process of their own
session (a terminal's Ctrl-C reaches the whole process group), and the tests check what the target
holds afterwards against a NumPy loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import lazyusid
import lazyusid.run.schedulers
from lazyusid import Dimension


def _scan(write_usid, ny=8, nx=12):
    return write_usid([Dimension("Y", "m", ny), Dimension("X", "m", nx)], [Dimension("Frequency", "Hz", 16)])


def exits_at_position_40(spectrum):
    """Takes its worker process down (as a segfault would) at one spectrum; slow enough for processes."""
    time.sleep(0.03)  # 96 positions: ~3 s estimated, so lazyusid runs it on worker processes
    if abs(float(spectrum[0]) - 1234.5) < 1e-3:
        os._exit(3)
    return float(np.abs(spectrum).max())


def test_function_that_kills_its_worker_names_the_block_and_keeps_what_finished(write_usid, tmp_path):
    written = _scan(write_usid)
    with h5py.File(written.path, "r+") as f:
        f[written.dataset][40, 0] = 1234.5  # position 40: Y=3, X=4
    data = lazyusid.open_usid(written.path)
    target = tmp_path / "r.h5"
    # the pool is up: no start-up left to weigh against the work
    client = lazyusid.run.schedulers.shared_client(2)
    plan = lazyusid.plan_spectra(data, exits_at_position_40, cores=2, positions_per_block=8)
    assert plan.scheduler == "2 worker processes"  # never in this process: it would take pytest down
    with pytest.raises(lazyusid.WorkerCrashedError, match=r"exits_at_position_40 crashed its worker") as info:
        lazyusid.map_spectra(
            data, exits_at_position_40, cores=2, store=target, positions_per_block=8, progress=False
        )
    message = str(info.value)
    assert "positions 40:48" in message and "Y=3, X=4" in message
    assert info.value.position == 40
    # its nannies (in this process) restarted the dead workers; a process being spawned holds copies of
    # this process's open files and so the target's HDF5 lock: the error waits until they are up
    assert len(client.scheduler_info()["workers"]) == 2
    with h5py.File(target, "r") as f:
        (name,) = [k for k in f if k.startswith("Raw_Data-exits_at_position_40_")]
        flags = f[name]["completed_positions"][()]
        assert flags[40:48].sum() == 0  # the crashing block is not flagged
        values = f[name]["exits_at_position_40"][()][:, 0]
    done = flags.astype(bool)
    expected = np.abs(written.data_2d).max(axis=1)
    np.testing.assert_array_equal(values[done], expected[done])  # every flagged row is right


_CHILD = """
import os, sys, time
import numpy as np
import lazyusid

def slow_peak(spectrum, log):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"x")
    os.close(fd)
    time.sleep(0.02)
    return float(np.abs(spectrum).max())

if __name__ == "__main__":
    path, target, log = sys.argv[1:4]
    lazyusid.run.schedulers.shared_client(2)  # up before the run, so that the run goes to it
    result = lazyusid.map_spectra(
        lazyusid.open_usid(path), slow_peak, params={"log": log}, cores=2, store=target,
        positions_per_block=8, progress=False,
    )
    print("finished", result.attrs["usid_rows_computed"])
"""


def _interrupted_run(written, tmp_path, sig, *, group: bool):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD))
    log = tmp_path / "calls.log"
    target = tmp_path / "r.h5"
    child = subprocess.Popen(
        [sys.executable, str(script), written.path, str(target), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C as in a terminal, also when the tests run in a shell's background (which ignores it there)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while (not log.exists() or log.stat().st_size < 60) and time.monotonic() < deadline:
            assert child.poll() is None, child.communicate()
            time.sleep(0.05)
        assert log.stat().st_size < 8 * 12 * 8  # mid-run
        sent = time.monotonic()
        if group:
            os.killpg(child.pid, sig)  # a terminal's Ctrl-C: the worker processes get it too
        else:
            child.send_signal(sig)
        out, err = child.communicate(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return child.returncode, out, err, seconds, target


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, group",
    # both in the second test command: the README command interrupts a run with Ctrl-C in tests/test_cli_map.py
    [
        pytest.param(signal.SIGINT, True, marks=pytest.mark.long),
        pytest.param(signal.SIGTERM, False, marks=pytest.mark.long),
    ],
    ids=["ctrl-c-to-group", "sigterm"],
)
def test_interrupt_checkpoints_says_so_once_and_stops(write_usid, tmp_path, sig, group):
    written = _scan(write_usid, ny=12, nx=12)
    code, out, err, seconds, target = _interrupted_run(written, tmp_path, sig, group=group)
    assert "finished" not in out
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted: ")]
    assert len(lines) == 1, err
    assert f"positions saved in {target}" in lines[0] and "run the same call again to resume" in lines[0]
    assert "KeyboardInterrupt" in err
    print(f"{sig.name}: exited {seconds:.1f} s after the signal")
    assert seconds < 30  # never a hang (the target, 5 s, is reported, not asserted)
    saved = int(lines[0].split()[1])
    with h5py.File(target, "r") as f:
        (name,) = [k for k in f if k.startswith("Raw_Data-slow_peak_")]
        assert int(f[name]["completed_positions"][()].sum()) == saved
    # the same call again resumes: it computes exactly the rest, and every value equals a NumPy loop
    again = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), written.path, str(target), str(tmp_path / "calls.log")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["finished", str(144 - saved)]
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f[name]["slow_peak"][()][:, 0], np.abs(written.data_2d).max(axis=1))
