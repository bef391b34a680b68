"""Stored runs on real clusters: command-line dask processes, and SLURM through dask-jobqueue.

The input is a 150 MiB synthetic BE-PFM file (9600 spectra of 2048
complex64 points); the function, :func:`cluster_functions.peak_features`,
takes about 2 ms per spectrum, so a run on two workers lasts ~10–20 s.
References come from a plain NumPy loop over the main dataset read with
h5py; stored values must equal them bit for bit.

``cluster`` tests (a ``dask scheduler`` and two ``dask worker`` processes
started from the command line, each in its own working directory):

- a stored run completes, matches the loop, and every spectrum is
  evaluated on a worker;
- the input is not relayed: the loopback interface carries at most 25 % of
  the input's bytes during the run. Together with the previous point this
  shows that the workers read the input themselves (their ``/proc/self/io``
  counters are reported, but ``rchar`` does not count memory-mapped reads);
- a SIGKILL of one worker in the middle of the run is survived.

``slurm`` test (a single-node SLURM installed and started by the
``slurm_node`` fixture, see :mod:`clusters`): a ``SLURMCluster`` of two
one-core jobs; ``scancel`` of one job in the middle of the run is survived.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cluster_functions
import clusters
import h5py
import numpy as np
import pytest

import lazyusid
from lazyusid import datasets

N_Y, N_X, N_FREQ = 100, 96, 2048
OUTPUTS = ("peak", "where", "mean")
#: fraction of the spectra evaluated before a worker is killed
KILL_AFTER = 0.3
#: a run that should finish takes far less; past this the test fails instead of hanging
RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class InputFile:
    """The input file of these tests and the reference results of :func:`cluster_functions.reference`."""

    path: Path
    n_positions: int
    nbytes: int
    reference: tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="session")
def input_file(tmp_path_factory) -> InputFile:
    """150 MiB of BE-PFM spectra (lazyusid.datasets) and their reference results."""
    path = tmp_path_factory.mktemp("cluster-input") / "be_pfm.h5"
    datasets.make_be_pfm(path, n_x=N_X, n_y=N_Y, n_freq=N_FREQ)
    with h5py.File(path, "r") as f:
        rows = f[datasets.MAIN_DATASET][...]
    return InputFile(path, rows.shape[0], rows.nbytes, cluster_functions.reference(rows))


@pytest.fixture
def cli_cluster(tmp_path):
    """A scheduler and two single-threaded workers started with the ``dask`` command; logs shown on failure."""
    with clusters.start_command_line_cluster(tmp_path / "cluster") as cluster:
        try:
            yield cluster
        finally:
            print(cluster.logs())  # pytest shows it only when the test failed


def stored_run(data, client, target: Path):
    """The stored ``map_spectra`` call every test makes."""
    return lazyusid.map_spectra(
        data,
        cluster_functions.peak_features,
        outputs=list(OUTPUTS),
        client=client,
        store=target,
        progress=False,
    )


def assert_matches_reference(stored, input_file: InputFile) -> None:
    """Every output, read back, equals the NumPy loop bit for bit."""
    for name, expected in zip(OUTPUTS, input_file.reference):
        values = stored[name].values.reshape(-1)
        assert values.dtype == expected.dtype, name
        assert values.tobytes() == expected.tobytes(), (
            f"{name}: {int((values != expected).sum())} of {values.size} values differ from the NumPy loop"
        )


def assert_complete(target: Path, n_positions: int) -> None:
    """The target's results group flags every position as completed (read with plain h5py)."""
    with h5py.File(target, "r") as f:
        flags = []
        f.visititems(
            lambda name, obj: flags.append(obj[...]) if name.endswith("completed_positions") else None
        )
    assert len(flags) == 1, (
        f"expected one results group with completed_positions in {target}, found {len(flags)}"
    )
    assert flags[0].shape == (n_positions,) and flags[0].all(), (
        f"{int((flags[0] == 0).sum())} of {flags[0].size} positions not flagged completed in {target}"
    )


def calls_on_workers(client) -> dict[str, int]:
    """Spectra evaluated so far by :func:`cluster_functions.peak_features` in each worker."""
    return client.run(cluster_functions.calls)


@pytest.mark.cluster
def test_stored_run_on_command_line_cluster_matches_numpy(cli_cluster, input_file, tmp_path):
    client = cli_cluster.client
    stored = stored_run(lazyusid.open_usid(input_file.path), client, tmp_path / "out.h5")
    assert_matches_reference(stored, input_file)
    assert_complete(tmp_path / "out.h5", input_file.n_positions)
    calls = calls_on_workers(client)
    assert sum(calls.values()) >= input_file.n_positions, f"spectra evaluated per worker: {calls}"
    assert all(n > 0 for n in calls.values()), f"a worker evaluated nothing: {calls}"


@pytest.mark.cluster
@pytest.mark.long
def test_stored_run_does_not_relay_input(cli_cluster, input_file, tmp_path):
    client = cli_cluster.client
    data = lazyusid.open_usid(input_file.path)
    io_before = client.run(cluster_functions.process_io)
    calls_before = calls_on_workers(client)
    lo_before = clusters.loopback_bytes()
    stored = stored_run(data, client, tmp_path / "out.h5")
    moved = clusters.loopback_bytes() - lo_before
    io_after = client.run(cluster_functions.process_io)
    calls = {w: n - calls_before[w] for w, n in calls_on_workers(client).items()}
    io = {w: {k: io_after[w][k] - io_before[w][k] for k in ("rchar", "read_bytes")} for w in io_after}
    assert_matches_reference(stored, input_file)
    assert moved <= 0.25 * input_file.nbytes, (
        f"{moved / 2**20:.1f} MiB crossed the loopback during the stored run, "
        f"{moved / input_file.nbytes:.0%} of the {input_file.nbytes / 2**20:.1f} MiB input (limit 25 %): "
        f"the input is relayed between processes instead of being read by the workers "
        f"(workers' I/O counters during the run: {io}; spectra evaluated per worker: {calls})"
    )
    assert sum(calls.values()) >= input_file.n_positions and all(calls.values()), (
        f"the workers did not evaluate every spectrum ({calls} of {input_file.n_positions}); "
        "low loopback traffic then proves nothing"
    )


class Interrupter(threading.Thread):
    """Waits until the workers have evaluated a fraction of the spectra, then acts once (kill, scancel)."""

    def __init__(self, client, n_positions: int, act, fraction: float = KILL_AFTER):
        super().__init__(daemon=True)
        self.client, self.act = client, act
        self.target = sum(calls_on_workers(client).values()) + fraction * n_positions
        self.run_done = threading.Event()
        self.acted_mid_run = False
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            while not self.run_done.is_set() and time.monotonic() < deadline:
                if sum(calls_on_workers(self.client).values()) >= self.target:
                    self.acted_mid_run = not self.run_done.is_set()
                    self.act()
                    return
                time.sleep(0.1)
        except BaseException as e:  # reported by the test
            self.error = e

    def finish(self) -> None:
        self.run_done.set()
        self.join(RUN_TIMEOUT_S)


@pytest.mark.cluster
@pytest.mark.long
def test_stored_run_survives_sigkill_of_a_worker(cli_cluster, input_file, tmp_path):
    client = cli_cluster.client
    victim = cli_cluster.processes.started["worker-0"]
    assert victim.pid in cli_cluster.worker_pids
    interrupter = Interrupter(client, input_file.n_positions, lambda: os.kill(victim.pid, signal.SIGKILL))
    interrupter.start()
    try:
        stored = stored_run(lazyusid.open_usid(input_file.path), client, tmp_path / "out.h5")
    finally:
        interrupter.finish()
    assert interrupter.error is None, f"waiting to kill a worker failed: {interrupter.error!r}"
    assert interrupter.acted_mid_run, "the run ended before a worker was killed: the test proves nothing"
    assert victim.wait(10) == -signal.SIGKILL
    assert len(client.scheduler_info()["workers"]) == 1
    assert_matches_reference(stored, input_file)
    assert_complete(tmp_path / "out.h5", input_file.n_positions)


# ---------------------------------------------------------------- SLURM


@pytest.fixture(scope="session")
def slurm_node(tmp_path_factory):
    """A single-node SLURM on this machine (installed with apt when missing), stopped at the end.

    Skips only where it cannot be had at all (not root, no apt-get); any
    failure to install or start it fails with apt's output or the daemons' logs.
    """
    reason = clusters.install_slurm()
    if reason is not None:
        pytest.skip(reason)
    with clusters.start_slurm(tmp_path_factory.mktemp("slurm")) as node:
        try:
            yield node
        finally:
            print(node.logs())


@pytest.mark.slurm
@pytest.mark.long
def test_slurm_cluster_survives_scancel_of_a_worker_job(slurm_node, input_file, tmp_path):
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    with (
        SLURMCluster(
            cores=1,
            processes=1,
            memory="2GiB",
            walltime="00:30:00",
            scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
            interface="lo",
            job_script_prologue=[f"export PYTHONPATH={clusters.PYTHONPATH}"],
            python=sys.executable,
            local_directory=str(tmp_path / "workers"),
            log_directory=str(tmp_path / "job-logs"),
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        print(cluster.job_script())  # pytest shows it only when the test failed
        try:
            cluster.scale(2)
            client.wait_for_workers(2, timeout=clusters.START_TIMEOUT_S)
            job_id = next(iter(cluster.workers.values())).job_id
            interrupter = Interrupter(
                client, input_file.n_positions, lambda: slurm_node.run("scancel", str(job_id))
            )
            interrupter.start()
            try:
                stored = stored_run(lazyusid.open_usid(input_file.path), client, tmp_path / "out.h5")
            finally:
                interrupter.finish()
            assert interrupter.error is None, f"waiting to scancel a job failed: {interrupter.error!r}"
            assert interrupter.acted_mid_run, (
                "the run ended before a job was cancelled: the test proves nothing"
            )
            assert_matches_reference(stored, input_file)
            assert_complete(tmp_path / "out.h5", input_file.n_positions)
            queue = slurm_node.run("squeue", "--noheader", "--format", "%i %T")
            assert str(job_id) not in queue.split(), f"job {job_id} still queued after scancel:\n{queue}"
        finally:
            for log in sorted((tmp_path / "job-logs").glob("*")):
                print(f"----- {log} -----\n{log.read_text(errors='replace')[-10_000:]}")
            with contextlib.suppress(Exception):
                print(slurm_node.run("squeue", "-l"))


def test_slurm_fixture_skips_without_apt_or_root(tmp_path):
    """No SLURM programs and no apt-get, or not root: a reason to skip that says so; else it fails loudly."""
    if os.geteuid() != 0:
        assert "needs root" in clusters.install_slurm()
        return
    assert "missing and no apt-get" in clusters.install_slurm(search_path=str(tmp_path))
    as_nobody = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         "import clusters; print(clusters.install_slurm())"],
        cwd="/", env={**clusters.python_path_env(), "HOME": "/nonexistent"}, capture_output=True, text=True,
    )  # fmt: skip
    assert as_nobody.returncode == 0, as_nobody.stderr
    assert "needs root" in as_nobody.stdout and "uid 65534" in as_nobody.stdout
