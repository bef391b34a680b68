"""Benchmark 6: a stored run on the user's own cluster, started with dask's command-line tools.

A ``dask scheduler`` and two ``dask worker --nthreads 1`` processes (the
venv's ``dask``, next to ``sys.executable``; each in its own working
directory; ``PYTHONPATH`` set so the workers import this checkout's
``lazyusid`` and ``benchmarks``), joined with
``Client(scheduler_file=...)``. The seed peak finder
(:func:`lazyusid.tutorial.peak_amplitude`) is mapped with
``map_spectra(data, f, client=client, store=<other file>.h5)``; side by
side, interleaved, the same work on lazyusid's own local pool
(``map_spectra(data, f, store=<other file>.h5, cores=2)``, no client).

Two measures: the bytes moved between processes during the stored run
(received on the loopback interface, ``/proc/net/dev``, before and after)
as a share of the input's bytes, and the time against the local pool.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import h5py
import numpy as np

import lazyusid
from lazyusid.tutorial import peak_amplitude

from .common import (
    MAIN,
    SPECTRUM_BYTES,
    Config,
    Row,
    be_file,
    fmt_ratio,
    fmt_s,
    loopback_rx_bytes,
    median_spread,
    timed,
    warm,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: positions of the serial reference (a sample: the whole loop would cost as much as the runs)
SAMPLE = 97


def dask_command() -> str:
    """The ``dask`` command of this interpreter's environment."""
    path = os.path.join(os.path.dirname(sys.executable), "dask")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no `dask` command next to {sys.executable} (looked for {path}); install distributed into "
            "this environment (`pip install -e '.[bench]'`) or run the benchmarks with its Python"
        )
    return path


class CommandLineCluster:
    """A scheduler and ``n_workers`` single-threaded workers, each its own process, stopped on exit.

    Usable as a context manager; ``client`` is a ``Client(scheduler_file=...)``
    that is not made the default client (so the local-pool runs beside it
    cannot pick it up).
    """

    def __init__(self, workdir: str, n_workers: int = 2, timeout_s: float = 180.0):
        self.workdir = workdir
        self.n_workers = n_workers
        self.timeout_s = timeout_s
        self.scheduler_file = os.path.join(workdir, "scheduler.json")
        self.procs: list[subprocess.Popen] = []
        self.client = None

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        cwd = os.path.join(self.workdir, name)
        os.makedirs(cwd, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        with open(os.path.join(cwd, "log.txt"), "wb") as log:
            proc = subprocess.Popen(
                [dask_command(), *args],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def _log_tail(self, name: str) -> str:
        try:
            with open(os.path.join(self.workdir, name, "log.txt"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def __enter__(self) -> CommandLineCluster:
        from distributed import Client

        os.makedirs(self.workdir, exist_ok=True)
        if os.path.exists(self.scheduler_file):
            os.remove(self.scheduler_file)
        try:
            common = ["--no-dashboard"]
            scheduler = self._start(
                "scheduler",
                [
                    "scheduler",
                    "--scheduler-file",
                    self.scheduler_file,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    *common,
                ],
            )
            deadline = time.monotonic() + self.timeout_s
            while not os.path.exists(self.scheduler_file):
                if scheduler.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"`dask scheduler` did not write {self.scheduler_file} "
                        f"(exit status {scheduler.poll()}); its log:\n{self._log_tail('scheduler')}"
                    )
                time.sleep(0.1)
            for i in range(self.n_workers):
                name = f"worker-{i}"
                self._start(
                    name,
                    [
                        "worker",
                        "--scheduler-file",
                        self.scheduler_file,
                        "--nthreads",
                        "1",
                        "--name",
                        name,
                        "--host",
                        "127.0.0.1",
                        "--local-directory",
                        os.path.join(self.workdir, name, "dask"),
                        *common,
                    ],
                )
            self.client = Client(scheduler_file=self.scheduler_file, set_as_default=False)
            try:
                self.client.wait_for_workers(self.n_workers, timeout=self.timeout_s)
            except TimeoutError as exc:
                logs = "\n".join(self._log_tail(f"worker-{i}") for i in range(self.n_workers))
                raise RuntimeError(
                    f"{self.n_workers} workers did not join in {self.timeout_s} s:\n{logs}"
                ) from exc
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        for proc in reversed(self.procs):  # workers first, then the scheduler
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def warm_workers(client) -> None:
    """Let every worker of ``client`` import lazyusid and the function once (not timed)."""
    spectrum = np.ones(119, dtype=np.complex64)
    workers = list(client.scheduler_info()["workers"])
    client.gather([client.submit(peak_amplitude, spectrum, pure=False, workers=[w]) for w in workers])


def stored_run(src: str, out: str, **kwargs) -> tuple[float, int, np.ndarray]:
    """``map_spectra`` of the peak finder into a fresh ``out``: (seconds, loopback bytes received, values)."""
    if os.path.exists(out):
        os.remove(out)
    data = lazyusid.open_usid(src)
    rx = loopback_rx_bytes()
    seconds, result = timed(
        lambda: lazyusid.map_spectra(data, peak_amplitude, store=out, progress=False, **kwargs)
    )
    moved = loopback_rx_bytes() - rx
    return seconds, moved, np.asarray(result.values).ravel()


def idle_rate(seconds: float) -> float:
    """Bytes per second received on the loopback interface while this process computes nothing."""
    rx = loopback_rx_bytes()
    time.sleep(seconds)
    return (loopback_rx_bytes() - rx) / seconds


def run(cfg: Config, log) -> list[Row]:
    from .peaks import warm_workers as warm_local_pool

    src = be_file(cfg, cfg.cluster_shape)
    n_y, n_x = cfg.cluster_shape
    n = n_y * n_x
    nbytes = n * SPECTRUM_BYTES
    warm(src)
    with h5py.File(src, "r") as f:
        sample = np.linspace(0, n - 1, min(n, SAMPLE)).astype(int)
        expected = np.array([peak_amplitude(s) for s in f[MAIN][sample]])
    out_cluster = os.path.join(cfg.workdir, "cluster_out_client.h5")
    out_local = os.path.join(cfg.workdir, "cluster_out_local.h5")
    warm_local_pool()

    t_cluster, t_local, ratio, pct, pct_local = [], [], [], [], []
    equal = True
    tic = time.perf_counter()
    with CommandLineCluster(os.path.join(cfg.workdir, "cluster")) as cluster:
        client = cluster.client
        log(
            f"  cluster up in {time.perf_counter() - tic:.1f} s: {len(client.scheduler_info()['workers'])} workers"
        )
        warm_workers(client)
        idle = [idle_rate(1.0)]
        for rep in range(cfg.cluster_repeats):
            runs = {
                "client": lambda: stored_run(src, out_cluster, client=client),
                "local": lambda: stored_run(src, out_local, cores=2),
            }
            order = list(runs) if rep % 2 == 0 else list(reversed(runs))  # alternate who goes first
            done = {name: runs[name]() for name in order}
            (tc, moved_c, vc), (tl, moved_l, vl) = done["client"], done["local"]
            equal &= bool(np.array_equal(vc, vl) and np.array_equal(vc[sample], expected))
            t_cluster.append(tc)
            t_local.append(tl)
            ratio.append(tc / tl)
            pct.append(100 * moved_c / nbytes)
            pct_local.append(100 * moved_l / nbytes)
            log(
                f"  cluster rep {rep + 1}: user cluster {tc:.2f} s, {moved_c / 2**20:.1f} MiB on lo "
                f"({pct[-1]:.0f}% of input); local pool {tl:.2f} s, {moved_l / 2**20:.1f} MiB ({pct_local[-1]:.0f}%)"
            )
        idle.append(idle_rate(1.0))
    for out in (out_cluster, out_local):
        if os.path.exists(out):
            os.remove(out)

    name = (
        f"6 user cluster (dask scheduler + 2 workers), peak finder {n_y}×{n_x}×119 ({nbytes / 2**20:.1f} MiB)"
    )
    background = max(idle) * median_spread(t_cluster)[0]
    pct_text = lambda v: f"{median_spread(v)[0]:.0f}% ({min(v):.0f}–{max(v):.0f}%)"  # noqa: E731
    return [
        Row(
            name,
            "bytes moved between processes during the stored run / input bytes",
            pct_text(pct),
            "≤ 25%",
            median_spread(pct)[0] <= 25,
            f"received on the loopback interface (/proc/net/dev `lo`) during map_spectra(client=, store=other.h5), "
            f"n={len(pct)}; lazyusid's local pool on the same work: {pct_text(pct_local)}; idle loopback traffic "
            f"with the cluster up (heartbeats, and any other process on this machine): "
            f"{max(idle) / 1e3:.1f} kB/s at most, {100 * background / nbytes:.1f}% of the input over one run",
        ),
        Row(
            name,
            "time on the user's cluster / lazyusid's local pool (cores=2)",
            fmt_ratio(ratio),
            "≤ 1.05×",
            median_spread(ratio)[0] <= 1.05,
            f"user cluster {fmt_s(t_cluster)}; local pool {fmt_s(t_local)}; both stored into a fresh other "
            "HDF5 file, workers warmed beforehand, order alternated per repeat",
        ),
        Row(
            name,
            "results equal (both runs; a serial loop on sampled positions)",
            "yes" if equal else "NO",
            "equal",
            equal,
            f"{len(sample)} positions recomputed serially",
        ),
    ]
