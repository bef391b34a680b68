"""Real clusters for the tests: command-line dask processes, and a single-node SLURM.

:func:`start_command_line_cluster`
    A ``dask scheduler`` and ``dask worker`` processes started with the
    command-line tools of the test's venv, each in its own working
    directory, as a user would. Workers run without a nanny, so the pid of
    each worker is the process that computes: SIGKILL stops a computation.
:func:`start_slurm`
    munged, slurmctld and slurmd, started in the foreground from a
    ``slurm.conf`` written under a temporary directory (one node: this
    machine), for ``dask_jobqueue.SLURMCluster``. :func:`install_slurm`
    installs the Debian packages first when they are missing.

Both are context managers that stop what they started by pid, also when
the test fails, and keep every process's log in the directory so that a
failure can show it (``.logs()``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import distributed

import lazyusid

#: directories worker processes need on their PYTHONPATH: the package under test and tests/
PYTHONPATH = os.pathsep.join(
    [str(Path(lazyusid.__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
)
#: generous limit for a process or a cluster to come up (the machine may be busy)
START_TIMEOUT_S = 120


def python_path_env() -> dict[str, str]:
    """This process's environment with :data:`PYTHONPATH` in front of any it had."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHONPATH, env.get("PYTHONPATH")) if p)
    return env


@dataclass
class Processes:
    """Processes started for a test, with their logs; stopped by pid in reverse order."""

    directory: Path
    started: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        """Start ``argv`` in ``cwd`` (its own session), output to ``<directory>/<name>.log``."""
        cwd.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.started[name] = proc
        return proc

    def check_running(self, name: str) -> None:
        """Raise with the log if the process ``name`` has exited."""
        code = self.started[name].poll()
        if code is not None:
            raise RuntimeError(f"{name} exited with code {code} while starting:\n{self.logs()}")

    def logs(self, *extra: Path) -> str:
        """Every process's log (and the ``extra`` files), each under a header line."""
        paths = [self.directory / f"{name}.log" for name in self.started] + list(extra)
        parts = []
        for path in paths:
            text = path.read_text(errors="replace") if path.exists() else "(no file)\n"
            parts.append(f"----- {path} -----\n{text[-20_000:]}")
        return "\n".join(parts)

    def stop(self, timeout_s: float = 10) -> None:
        """SIGTERM every process still running (newest first), SIGKILL it after ``timeout_s``."""
        for proc in reversed(list(self.started.values())):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout_s)


def wait_until(condition, what: str, check=lambda: None, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``condition()`` until true; call ``check()`` between polls (it raises on a dead process)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.2)


# ---------------------------------------------------------------- dask command-line tools


@dataclass
class CommandLineCluster:
    """A running ``dask scheduler`` + ``dask worker`` processes, and a client connected to it."""

    scheduler_address: str
    scheduler_file: Path
    client: distributed.Client
    worker_pids: list[int]
    processes: Processes

    def logs(self) -> str:
        """The scheduler's and every worker's log."""
        return self.processes.logs()


@contextlib.contextmanager
def start_command_line_cluster(directory: Path, n_workers: int = 2) -> Iterator[CommandLineCluster]:
    """Start a scheduler and ``n_workers`` single-threaded workers with the ``dask`` command.

    Each process runs in its own subdirectory of ``directory`` (the
    scheduler in ``scheduler/``, workers in ``worker-<i>/``), listens on
    127.0.0.1, and has :data:`PYTHONPATH` set. Everything is killed by pid
    on exit, whatever happened.
    """
    dask_cli = str(Path(sys.executable).with_name("dask"))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scheduler_file = directory / "sched.json"
    env = python_path_env()
    procs = Processes(directory)
    client = None
    try:
        procs.start(
            "scheduler",
            [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--dashboard-address", "127.0.0.1:0",  # its HTTP server (health, metrics) runs anyway
             "--scheduler-file", str(scheduler_file)],
            cwd=directory / "scheduler", env=env,
        )  # fmt: skip
        wait_until(scheduler_file.exists, "the scheduler file", lambda: procs.check_running("scheduler"))
        for i in range(n_workers):
            cwd = directory / f"worker-{i}"
            procs.start(
                f"worker-{i}",
                [dask_cli, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                 "--nworkers", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                 "--name", f"worker-{i}", "--local-directory", str(cwd)],
                cwd=cwd, env=env,
            )  # fmt: skip
        client = distributed.Client(scheduler_file=str(scheduler_file), set_as_default=False)

        def all_workers_up() -> bool:
            return len(client.scheduler_info()["workers"]) == n_workers

        def none_exited() -> None:
            for name in procs.started:
                procs.check_running(name)

        wait_until(all_workers_up, f"{n_workers} workers connecting", none_exited)
        pids = client.run(os.getpid)
        started = {p.pid for name, p in procs.started.items() if name.startswith("worker")}
        if set(pids.values()) != started:
            raise RuntimeError(f"worker pids {sorted(pids.values())} are not the started {sorted(started)}")
        yield CommandLineCluster(
            scheduler_address=client.scheduler.address,
            scheduler_file=scheduler_file,
            client=client,
            worker_pids=sorted(started),
            processes=procs,
        )
    finally:
        if client is not None:
            client.close(timeout=10)
        procs.stop()


# ---------------------------------------------------------------- loopback traffic


def loopback_bytes() -> int:
    """Bytes received so far on the loopback interface ``lo`` (``/proc/net/dev``)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[0])
    raise RuntimeError("no loopback interface 'lo' in /proc/net/dev")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- SLURM

SLURM_PACKAGES = ("slurm-wlm", "munge")
SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel")


def install_slurm(search_path: str | None = None) -> str | None:
    """Make sure the SLURM and munge programs exist; install the Debian packages if needed.

    Parameters
    ----------
    search_path : str, optional
        Where to look for the programs and ``apt-get`` (default: ``PATH``
        plus ``/usr/sbin`` and ``/sbin``).

    Returns
    -------
    str or None
        Why SLURM cannot be had here (not root; programs missing and no
        ``apt-get``), to skip with; ``None`` when the programs are there. A
        failed installation raises with apt's output instead: that is a
        defect, not a reason to skip.
    """
    search_path = _SBIN_PATH if search_path is None else search_path

    def missing() -> list[str]:
        return [p for p in SLURM_PROGRAMS if shutil.which(p, path=search_path) is None]

    if os.geteuid() != 0:
        return f"a single-node SLURM needs root to run slurmd and munged (running as uid {os.geteuid()})"
    if not missing():
        return None
    apt_get = shutil.which("apt-get", path=search_path)
    if apt_get is None:
        return f"{', '.join(missing())} missing and no apt-get to install {' and '.join(SLURM_PACKAGES)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = [apt_get, "-o", "DPkg::Lock::Timeout=300"]
    install = [*apt, "install", "-y", "--no-install-recommends", *SLURM_PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        update = subprocess.run([*apt, "update"], env=env, capture_output=True, text=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        output += update.stdout + update.stderr + result.stdout + result.stderr
    if result.returncode != 0 or missing():
        raise RuntimeError(
            f"{' '.join(install)} failed (exit {result.returncode}; still missing: {missing()}):\n"
            f"{output[-10_000:]}"
        )
    return None


_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


@dataclass
class SlurmNode:
    """A running single-node SLURM: its configuration file and daemons."""

    conf: Path
    env: dict[str, str]
    processes: Processes
    hostname: str

    def logs(self) -> str:
        """munged's, slurmctld's and slurmd's logs."""
        d = self.processes.directory
        return self.processes.logs(d / "munged-own.log", d / "slurmctld-own.log", d / "slurmd-own.log")

    def run(self, *argv: str) -> str:
        """Run a SLURM command against this node; its stdout (raises with stderr on failure)."""
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
        return result.stdout


def _slurm_conf(directory: Path, hostname: str, socket_path: Path) -> str:
    with open("/proc/meminfo") as f:
        total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    real_memory_mib = int(total_kib / 1024 * 0.9)  # below what slurmd detects, or it drains the node
    return f"""\
ClusterName=lazyusid-test
SlurmctldHost={hostname}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket_path}
CredType=cred/munge
StateSaveLocation={directory / "ctld-state"}
SlurmdSpoolDir={directory / "slurmd-spool"}
SlurmctldPidFile={directory / "slurmctld.pid"}
SlurmdPidFile={directory / "slurmd.pid"}
SlurmctldLogFile={directory / "slurmctld-own.log"}
SlurmdLogFile={directory / "slurmd-own.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
NodeName={hostname} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={real_memory_mib} State=UNKNOWN
PartitionName=debug Nodes={hostname} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def start_slurm(directory: Path) -> Iterator[SlurmNode]:
    """Start munged, slurmctld and slurmd for one node (this machine); wait until it is idle.

    The configuration, keys, sockets, state and logs all live in
    ``directory``; ``SlurmNode.env`` (also set in ``os.environ`` while the
    node runs, for dask-jobqueue's ``sbatch``/``scancel``) has ``SLURM_CONF``
    pointing at it. The daemons run in the foreground and are stopped by
    pid on exit. A daemon that exits or a node that never becomes idle
    raises with every log.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hostname = socket.gethostname().split(".")[0]
    munge_dir = directory / "munge"
    for d in (directory, munge_dir, directory / "ctld-state", directory / "slurmd-spool"):
        d.mkdir(exist_ok=True)
        d.chmod(0o755)  # munged refuses a socket in a directory others may write to, or not enter
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = munge_dir / "munge.socket.2"
    conf = directory / "slurm.conf"
    conf.write_text(_slurm_conf(directory, hostname, socket_path))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": _SBIN_PATH}
    procs = Processes(directory)
    node = SlurmNode(conf=conf, env=env, processes=procs, hostname=hostname)
    saved = {name: os.environ.get(name) for name in ("SLURM_CONF", "PATH")}

    def none_exited() -> None:
        for name in procs.started:
            if procs.started[name].poll() is not None:
                raise RuntimeError(f"{name} exited with code {procs.started[name].poll()}:\n{node.logs()}")

    try:
        procs.start(
            "munged",
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
             f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={directory / 'munged-own.log'}",
             f"--seed-file={munge_dir / 'munged.seed'}"],
            cwd=munge_dir, env=env,
        )  # fmt: skip
        wait_until(socket_path.exists, "munged's socket", none_exited)
        procs.start("slurmctld", ["slurmctld", "-D", "-c", "-f", str(conf)], cwd=directory, env=env)
        procs.start("slurmd", ["slurmd", "-D", "-f", str(conf)], cwd=directory, env=env)

        def idle() -> bool:
            result = subprocess.run(
                ["sinfo", "--noheader", "--nodes", hostname, "--format", "%t"],
                env=env, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            return result.returncode == 0 and result.stdout.strip() == "idle"

        try:
            wait_until(idle, f"node {hostname} idle in sinfo", none_exited)
        except TimeoutError as e:
            raise RuntimeError(f"{e}; sinfo says:\n{node.run('sinfo', '-N', '-l')}\n{node.logs()}") from e
        os.environ["SLURM_CONF"] = str(conf)
        os.environ["PATH"] = _SBIN_PATH
        yield node
    finally:
        with contextlib.suppress(Exception):
            jobs = subprocess.run(["squeue", "--noheader", "--format", "%i"], env=env,
                                  capture_output=True, text=True, timeout=30).stdout.split()  # fmt: skip
            if jobs:  # slurmd kills the jobs' processes; wait for that before stopping it
                subprocess.run(["scancel", *jobs], env=env, capture_output=True, timeout=30)
                wait_until(lambda: not node.run("squeue", "--noheader").strip(), "jobs ending", timeout_s=30)
        procs.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
