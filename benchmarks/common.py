"""What every benchmark shares: result rows, repeated timings, process-tree memory, test files."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

#: the BE-PFM main dataset every generated file holds
MAIN = "/Measurement_000/Channel_000/Raw_Data"
#: bytes of one 119-point complex64 spectrum
SPECTRUM_BYTES = 119 * 8


@dataclass
class Row:
    """One line of the results table: a measured value next to its target.

    ``passed`` is None for rows that only inform (no target).
    """

    benchmark: str
    measure: str
    value: str
    target: str = ""
    passed: bool | None = None
    detail: str = ""

    @property
    def verdict(self) -> str:
        return "" if self.passed is None else ("PASS" if self.passed else "MISS")


@dataclass
class Config:
    """Sizes and repeats of one mode (quick or full)."""

    mode: str
    workdir: str
    peaks_shape: tuple[int, int]  # (n_y, n_x) of the peak-finder file
    peaks_repeats: int
    peaks_cold: bool  # also time everything in fresh processes
    peaks_scaling: tuple[tuple[int, int], ...]
    vector_shape: tuple[int, int]
    vector_repeats: int
    vector_scaling: tuple[tuple[int, int], ...]
    memory_budget: str
    memory_shape: tuple[int, int]
    checkpoint_shape: tuple[int, int]
    checkpoint_repeats: int
    groups_shape: tuple[int, int] = (64, 64)
    n_groups: int = 50
    cluster_shape: tuple[int, int] = (64, 64)  # peak finder on the user's cluster (benchmark 6)
    cluster_repeats: int = 3
    derived_shape: tuple[int, int] = (512, 512)  # derived inputs stored (benchmark 7)
    derived_repeats: int = 5
    notes: list[str] = field(default_factory=list)


def quick_config(workdir: str) -> Config:
    return Config(
        mode="quick",
        workdir=workdir,
        peaks_shape=(64, 64),
        peaks_repeats=2,
        peaks_cold=False,
        peaks_scaling=((24, 24), (48, 48), (96, 96)),  # below ~1 s of work lazyusid runs in-process
        vector_shape=(512, 512),  # 238 MiB
        vector_repeats=5,
        vector_scaling=((128, 128), (256, 256), (512, 512)),
        memory_budget="24MiB",
        memory_shape=(512, 512),  # 238 MiB: 9.9x the budget
        checkpoint_shape=(512, 512),
        checkpoint_repeats=11,
        cluster_shape=(64, 64),  # 3.7 MiB; ~3.5 s of work per run on 2 cores
        cluster_repeats=3,
        derived_shape=(512, 512),  # 238 MiB
        derived_repeats=5,
    )


def full_config(workdir: str) -> Config:
    return Config(
        mode="full",
        workdir=workdir,
        peaks_shape=(128, 128),
        peaks_repeats=3,
        peaks_cold=True,
        peaks_scaling=((32, 32), (64, 64), (128, 128)),
        vector_shape=(1536, 1536),  # 2.09 GiB
        vector_repeats=5,
        vector_scaling=((384, 384), (768, 768), (1536, 1536)),
        memory_budget="256MiB",
        memory_shape=(1536, 1536),  # 8.4x the budget
        checkpoint_shape=(1536, 1536),
        checkpoint_repeats=7,
        cluster_shape=(128, 128),  # 14.9 MiB; ~14 s of work per run on 2 cores
        cluster_repeats=3,
        derived_shape=(1536, 1536),  # 2.09 GiB
        derived_repeats=5,
    )


def tiny_config(workdir: str) -> Config:
    """Seconds-long sizes for the smoke tests (``tests/test_benchmarks.py``): runs, not timings."""
    return Config(
        mode="tiny",
        workdir=workdir,
        peaks_shape=(8, 8),
        peaks_repeats=1,
        peaks_cold=True,
        peaks_scaling=((4, 4), (8, 8), (16, 16)),
        vector_shape=(32, 32),
        vector_repeats=1,
        vector_scaling=((8, 8), (16, 16), (32, 32)),
        memory_budget="64KiB",
        memory_shape=(32, 32),
        checkpoint_shape=(32, 32),
        checkpoint_repeats=1,
        groups_shape=(8, 8),
        n_groups=5,
        cluster_shape=(8, 8),
        cluster_repeats=1,
        derived_shape=(16, 16),
        derived_repeats=1,
    )


def be_file(cfg: Config, shape: tuple[int, int], chunks: tuple[int, int] | None = None) -> str:
    """A synthetic BE-PFM file of ``shape`` = (n_y, n_x) in the work directory, generated once.

    Contiguous, or chunked with ``chunks`` = (positions, frequencies).
    """
    from lazyusid.datasets import make_be_pfm

    n_y, n_x = shape
    if chunks is not None:
        chunks = (min(chunks[0], n_y * n_x), min(chunks[1], 119))
    suffix = "" if chunks is None else f"_chunks{chunks[0]}x{chunks[1]}"
    path = os.path.join(cfg.workdir, f"be_{n_y}x{n_x}{suffix}.h5")
    if not os.path.exists(path):
        make_be_pfm(path, n_x=n_x, n_y=n_y, chunks=chunks)
    return path


def fresh_copy(src: str, name: str, cfg: Config) -> str:
    """An identical copy of ``src`` (no results groups yet) under ``name`` in the work directory."""
    dst = os.path.join(cfg.workdir, name)
    shutil.copyfile(src, dst)
    return dst


def warm(path: str) -> None:
    """Read a file once so that the page cache holds it (every contender then reads it warm)."""
    with open(path, "rb") as f:
        while f.read(64 * 2**20):
            pass


def median_spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def fmt_s(values: list[float]) -> str:
    """Median time and its spread, e.g. ``15.2 s (14.9–16.0, n=3)``."""
    med, lo, hi = median_spread(values)
    if len(values) == 1:
        return f"{med:.3g} s"
    return f"{med:.3g} s ({lo:.3g}–{hi:.3g}, n={len(values)})"


def fmt_ratio(values: list[float]) -> str:
    med, lo, hi = median_spread(values)
    if len(values) == 1:
        return f"{med:.2f}×"
    return f"{med:.2f}× ({lo:.2f}–{hi:.2f})"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    tic = time.perf_counter()
    out = fn()
    return time.perf_counter() - tic, out


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live descendants, each with its children that exited.

    Live ones: e.g. a session's workers; exited ones (counted by the process that waited for them):
    e.g. pyUSID's per-call joblib workers, or a restarted worker. A difference of two readings counts
    a process that exits in between once, at its full time.
    """
    total = 0.0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def tree_rss(proc: psutil.Process, parts: bool = False, pss: bool = False):
    """Resident bytes of a process and all its descendants (with ``parts``: also the process's own).

    With ``pss``: proportional set sizes instead (pages shared between the processes, e.g. forked ones,
    counted once in the sum rather than once per process).
    """
    total = own = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss = p.memory_full_info().pss if pss else p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += rss
        if p.pid == proc.pid:
            own = rss
    return (total, own) if parts else total


#: the most of one core a PSS sampler may take: it waits at least (1 / share - 1) times as long as its last
#: sample took. Unbounded, sampling a tool's tree (smaps_rollup walks every page of every process) every 50 ms
#: took 35 % of a core from the tools (3.45 CPU-s in 10 s, during peers A), more for a tool with more processes
SAMPLER_SHARE = 0.05


class TreeSampler:
    """Sample the summed RSS (or PSS: ``pss=True``) of a process tree every ``interval_s`` in a thread; keep the peak.

    PSS samples come less often when they are costly: at most :data:`SAMPLER_SHARE` of one core.
    """

    def __init__(self, pid: int, interval_s: float = 0.01, pss: bool = False):
        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.pss = pss
        self.peak = 0
        self.peak_own = 0  # of the process itself
        self.peak_children = 0  # of its descendants together
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            tic = time.perf_counter()
            try:
                total, own = tree_rss(self.proc, parts=True, pss=self.pss)
                self.peak = max(self.peak, total)
                self.peak_own = max(self.peak_own, own)
                self.peak_children = max(self.peak_children, total - own)
                self.samples += 1
            except psutil.NoSuchProcess:
                return
            cost = time.perf_counter() - tic
            self._stop.wait(
                max(self.interval_s, cost * (1 / SAMPLER_SHARE - 1)) if self.pss else self.interval_s
            )

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_python(code: str, *args: str, timeout_s: float = 1800) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter; return (wall seconds including start-up, stdout)."""
    tic = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def loopback_rx_bytes() -> int:
    """Bytes received so far on the loopback interface (``lo`` in ``/proc/net/dev``): traffic between local processes."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[0])
    raise RuntimeError("no `lo` interface in /proc/net/dev: the loopback traffic cannot be measured here")


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"
