"""Benchmark 1 (and the first half of 5): the seed tutorial's peak finder, a per-spectrum Python function.

Side by side, interleaved, on identical copies of one synthetic BE-PFM file:

- a plain serial loop of :func:`lazyusid.tutorial.peak_amplitude` over the
  array already in memory (the loop only);
- lazyusid in this session: ``open_usid`` + ``map_spectra(..., store=copy,
  cores=2)`` into a checkpointed results group. lazyusid's worker
  processes are started once per session and reused, so their start-up is
  not in this timing (it is in the fresh-process row);
- pyUSID 0.0.12's ``Process`` (the tutorial's ``PeakFinder``,
  ``examples/pyusid_peak_finder.py``, cores=2) in a fresh interpreter: the
  "in session" time excludes interpreter start-up and ``import pyUSID``
  (it includes pyUSID's own per-call worker pool, which it starts on every
  compute); the fresh-process time includes everything.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time

import h5py
import numpy as np

import lazyusid
from lazyusid.tutorial import peak_amplitude

from .common import (
    MAIN,
    Config,
    Row,
    be_file,
    cpu_seconds,
    fmt_ratio,
    fmt_s,
    fresh_copy,
    median_spread,
    timed,
    warm,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(*args: str) -> tuple[float, dict]:
    """Run ``python -m benchmarks.child ARGS``; return (wall seconds, its RESULT plus ``cpu_s``).

    ``cpu_s``: CPU seconds of the child and of every process it started and waited for (pyUSID's pool).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, out = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "benchmarks.child", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmarks.child {args[0]} failed:\n{out.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result["cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, result


def warm_workers() -> None:
    """Start the session's 2 worker processes and let them import the function once."""
    from lazyusid.run.schedulers import shared_client

    client = shared_client(2)
    spectrum = np.ones(119, dtype=np.complex64)
    client.gather(
        [
            client.submit(peak_amplitude, spectrum, pure=False, workers=[w])
            for w in client.scheduler_info()["workers"]
        ]
    )


def lazy_run(path: str, override: bool = False, **kwargs) -> tuple[float, np.ndarray, int, float]:
    """lazyusid into ``path``'s own file: (seconds, values, blocks, CPU seconds of client + workers)."""
    cpu = cpu_seconds()
    seconds, result = timed(
        lambda: lazyusid.map_spectra(
            lazyusid.open_usid(path),
            peak_amplitude,
            store=path,
            cores=2,
            progress=False,
            override=override,
            **kwargs,
        )
    )
    cpu = cpu_seconds() - cpu
    plan = lazyusid.plan_spectra(lazyusid.open_usid(path), peak_amplitude, cores=2, **kwargs)
    return seconds, np.asarray(result.values).ravel(), plan.n_blocks, cpu


def _half(spectra: np.ndarray) -> list[float]:
    return [peak_amplitude(s) for s in spectra]


def pool_run(data: np.ndarray) -> float:
    """The machine's ceiling: a plain ``multiprocessing.Pool(2)``, half of the in-memory spectra each."""
    ctx = multiprocessing.get_context("spawn")  # this process runs threads (dask): do not fork it
    with ctx.Pool(2) as pool:
        pool.map(_half, [data[:1], data[1:2]])  # the workers are up before timing
        seconds, _ = timed(lambda: pool.map(_half, np.array_split(data, 2)))
    return seconds


def serial_run(data: np.ndarray) -> tuple[float, np.ndarray, float]:
    cpu = time.process_time()
    seconds, values = timed(lambda: np.array([peak_amplitude(s) for s in data]))
    return seconds, values, time.process_time() - cpu


def run(cfg: Config, log) -> list[Row]:
    rows: list[Row] = []
    src = be_file(cfg, cfg.peaks_shape)
    n_y, n_x = cfg.peaks_shape
    n = n_y * n_x
    warm(src)
    with h5py.File(src, "r") as f:
        data = f[MAIN][()]
    warm_workers()

    serial, lazy, pool, pyusid, pyusid_wall, lazy_cpu, pyusid_cpu = [], [], [], [], [], [], []
    vs_serial, vs_pyusid, vs_pool, ceiling, cpu_ratio, cores_used = [], [], [], [], [], []
    identical_pyusid = identical_serial = True
    for rep in range(cfg.peaks_repeats):
        t_serial, expected, cpu_serial = serial_run(data)
        t_pool = pool_run(data)
        copy = fresh_copy(src, "peaks_lazy.h5", cfg)
        t_lazy, values, blocks, cpu_lazy = lazy_run(copy)
        copy = fresh_copy(src, "peaks_pyusid.h5", cfg)
        wall, res = child("pyusid-peaks", copy, "--cores", "2")
        with h5py.File(copy, "r") as f:
            ref = f[f"{MAIN}-Peak_Finding_000/Peak_Response"][:, 0]
        identical_serial &= bool(np.array_equal(values, expected))
        identical_pyusid &= bool(np.array_equal(values.astype(np.float32), ref))
        serial.append(t_serial)
        lazy.append(t_lazy)
        pool.append(t_pool)
        pyusid.append(res["compute_s"])
        pyusid_wall.append(wall)
        vs_serial.append(t_serial / t_lazy)
        vs_pyusid.append(res["compute_s"] / t_lazy)
        vs_pool.append(t_pool / t_lazy)
        ceiling.append(t_serial / t_pool)
        cpu_ratio.append(cpu_lazy / cpu_serial)
        cores_used.append(cpu_lazy / t_lazy)
        lazy_cpu.append(cpu_lazy)
        pyusid_cpu.append(res["cpu_s"])
        log(
            f"  peaks rep {rep + 1}: serial {t_serial:.2f} s, Pool(2) {t_pool:.2f} s, lazyusid {t_lazy:.2f} s "
            f"({blocks} blocks, {cpu_lazy:.1f} CPU-s), pyUSID {res['compute_s']:.2f} s "
            f"(+{res['import_s']:.2f} s import, {wall:.2f} s wall)"
        )

    name = f"1 peak finder {n_y}×{n_x}×119"
    rows += [
        Row(
            name,
            "lazyusid (2 processes) vs serial loop",
            fmt_ratio(vs_serial),
            "≥ 1.9×",
            median_spread(vs_serial)[0] >= 1.9,
            f"serial {fmt_s(serial)}; lazyusid {fmt_s(lazy)}; results equal: {identical_serial}",
        ),
        Row(
            name,
            "machine ceiling now: multiprocessing.Pool(2) vs serial loop",
            fmt_ratio(ceiling),
            detail=f"Pool(2) {fmt_s(pool)}, half the in-memory spectra per process, no file, no checkpoints: "
            "what 2 processes can get on this machine during this run",
        ),
        Row(
            name,
            "lazyusid vs that Pool(2)",
            fmt_ratio(vs_pool),
            "≥ 0.97×",
            median_spread(vs_pool)[0] >= 0.97,
            f"Pool(2) {fmt_s(pool)}; lazyusid {fmt_s(lazy)}; "
            f"lazyusid CPU (client + workers) / serial CPU: {fmt_ratio(cpu_ratio)}; cores lazyusid obtained "
            f"(CPU-s / wall-s): {median_spread(cores_used)[0]:.2f} of 2",
        ),
        Row(
            name,
            "lazyusid vs pyUSID Process (cores=2), in session (the 1.15× target is retired, issue 14)",
            fmt_ratio(vs_pyusid),
            detail=f"pyUSID compute {fmt_s(pyusid)} (import pyUSID and interpreter start excluded; its per-call "
            f"worker pool included); lazyusid {fmt_s(lazy)} (session workers already started); CPU-s: "
            f"lazyusid {median_spread(lazy_cpu)[0]:.1f}, pyUSID {median_spread(pyusid_cpu)[0]:.1f} (whole child "
            "process, imports included)",
        ),
        Row(
            name,
            "results identical to pyUSID",
            "yes" if identical_pyusid else "NO",
            "identical",
            identical_pyusid,
            "lazyusid float64 values cast to pyUSID's float32 dataset, compared exactly",
        ),
    ]
    if cfg.peaks_cold:
        cold_lazy, cold_ratio = [], []
        for i in range(len(pyusid_wall)):
            copy = fresh_copy(src, "peaks_cold.h5", cfg)
            wall, res = child("lazy-peaks", copy, "--cores", "2")
            cold_lazy.append(wall)
            cold_ratio.append(pyusid_wall[i] / wall)
            log(
                f"  peaks fresh process: lazyusid {wall:.2f} s wall (import {res['import_s']:.2f} s), "
                f"pyUSID {pyusid_wall[i]:.2f} s"
            )
        rows.append(
            Row(
                name,
                "lazyusid vs pyUSID, each in a fresh process (start-up included; issue 14's subject)",
                fmt_ratio(cold_ratio),
                detail="wall time of `python -m benchmarks.child …` incl. interpreter, imports and worker start-up: "
                f"lazyusid {fmt_s(cold_lazy)}, pyUSID {fmt_s(pyusid_wall)}",
            )
        )
    return rows + scaling(cfg, log, median_spread(serial)[0] / n)


def scaling(cfg: Config, log, per_spectrum_s: float) -> list[Row]:
    """5: lazyusid's time at 1×, 4×, 16× the positions; fixed cost per call and cost per block."""
    rows = []
    times, sizes = [], []
    for shape in cfg.peaks_scaling:
        path = fresh_copy(be_file(cfg, shape), "peaks_scaling.h5", cfg)
        t, _, blocks, cpu = lazy_run(path)
        size = shape[0] * shape[1]
        times.append(t)
        sizes.append(size)
        base = sizes[0]
        rows.append(
            Row(
                "5 scaling: peak finder",
                f"{size // base}× ({size} positions)",
                f"{t:.3g} s",
                detail=f"{1e6 * t / size:.0f} µs/position ({1e6 * per_spectrum_s:.0f} serially); {blocks} blocks; "
                f"{cpu / t:.2f} cores obtained",
            )
        )
        log(f"  peaks scaling {size}: {t:.2f} s, {blocks} blocks")
    # cost of a block: the largest size again with 4× as many blocks
    default = lazyusid.plan_spectra(lazyusid.open_usid(path), peak_amplitude, cores=2)
    t_many, _, many, _ = lazy_run(
        path, positions_per_block=max(1, default.positions_per_block // 4), override=True
    )
    per_block = (t_many - times[-1]) / (many - default.n_blocks)
    fit_a, fit_b = np.polyfit(sizes, times, 1)[::-1]
    linear = (times[-1] / times[0]) / (sizes[-1] / sizes[0])
    rows.append(
        Row(
            "5 scaling: peak finder",
            f"time({sizes[-1] // sizes[0]}×) / ({sizes[-1] // sizes[0]} × time(1×))",
            f"{linear:.2f}",
            detail=f"linear fit t = {fit_a:.2f} s + {1e6 * fit_b:.0f} µs × positions (1.00 = linear); "
            f"one more block costs {1e3 * per_block:+.0f} ms ({default.n_blocks} → {many} blocks: "
            f"{times[-1]:.2f} → {t_many:.2f} s)",
        )
    )
    return rows
