"""Benchmark 8: the start-up tax — what a small job costs beyond its work, and ``cores=2`` against ``cores=1``.

Three measures, each in fresh interpreters (``python -m benchmarks.startup child ...``) so
that nothing of this benchmark process (its pools, its imports, its caches) helps:

- **small job stored**: 1,024 positions (32×32×119 complex64), a trivial per-spectrum
  function (:func:`benchmarks.functions.abs_max`), stored into a fresh copy of the
  file (the result is not there yet): ``map_spectra(open_usid(copy), f, store=copy)``
  against the serial loop (h5py reads the dataset, a Python loop calls ``f``). One child
  process, warmed by one untimed call of each, repeats interleaved; the measure is the
  difference per repeat.
- **cores=2 / cores=1 on the small job**: the same stored call with ``cores=2`` and with
  ``cores=1``, interleaved in one child (in a fresh session: lazyusid's worker pool is
  not running unless the job is worth starting it).
- **fresh process end to end**: the seed peak finder (``find_peaks_cwt``) on 32×32, each run
  a fresh ``python`` (interpreter, imports, open, compute, store into a fresh copy),
  ``cores=2`` and ``cores=1`` interleaved; the wall time seen by the parent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from .common import MAIN, Config, Row, be_file, fmt_ratio, fresh_copy, median_spread, warm

SMALL_SHAPE = (32, 32)  # 1,024 positions
#: (in-session repeats of the small job, fresh processes per contender) per mode
REPEATS = {"quick": (15, 4), "full": (31, 6), "tiny": (2, 1)}
#: "never slower": the ratio of medians, with this much room for the noise of a shared machine
NOISE = 1.05


def _child(args: list[str]) -> dict:
    """Run ``python -m benchmarks.startup child ...`` in a fresh interpreter; its JSON result and wall time."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    tic = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.startup", "child", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
        timeout=1800,
        check=False,
    )
    wall = time.perf_counter() - tic
    if done.returncode != 0:
        raise RuntimeError(f"startup benchmark child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    return {**json.loads(line[len("RESULT ") :]), "wall_s": wall}


def fmt_ms(values: list[float]) -> str:
    med, lo, hi = median_spread(values)
    return f"{med * 1e3:.1f} ms ({lo * 1e3:.1f}–{hi * 1e3:.1f}, n={len(values)})"


def run(cfg: Config, log) -> list[Row]:
    in_session, fresh = REPEATS.get(cfg.mode, REPEATS["quick"])
    src = be_file(cfg, SMALL_SHAPE)
    warm(src)
    work = os.path.join(cfg.workdir, "startup")
    os.makedirs(work, exist_ok=True)
    n = SMALL_SHAPE[0] * SMALL_SHAPE[1]

    small = _child(["small", src, work, "--repeats", str(in_session)])
    log(f"  small job: lazyusid {fmt_ms(small['lazy'])}, serial {fmt_ms(small['serial'])}")
    extra = [a - b for a, b in zip(small["lazy"], small["serial"])]
    med_extra = median_spread(extra)[0]

    cores = _child(["cores", src, work, "--repeats", str(in_session)])
    c2, c1 = cores["cores2"], cores["cores1"]
    ratio = statistics.median(c2) / statistics.median(c1)
    log(f"  small job: cores=2 {fmt_ms(c2)}, cores=1 {fmt_ms(c1)}")

    walls: dict[int, list[float]] = {1: [], 2: []}
    schedulers: dict[int, set] = {1: set(), 2: set()}
    for rep in range(fresh):
        for k in (2, 1) if rep % 2 == 0 else (1, 2):  # interleaved, the order alternating
            copy = fresh_copy(src, f"startup_fresh_{k}.h5", cfg)
            out = _child(["peaks", copy, "--cores", str(k)])
            walls[k].append(out["wall_s"])
            schedulers[k].add(out["scheduler"])
            os.remove(copy)
            log(f"  fresh peak finder rep {rep + 1}, cores={k}: {out['wall_s']:.2f} s ({out['scheduler']})")
    fresh_ratio = [a / b for a, b in zip(walls[2], walls[1])]
    shutil.rmtree(work, ignore_errors=True)

    name = f"8 start-up, {SMALL_SHAPE[0]}×{SMALL_SHAPE[1]}×119 ({n:,} positions)"
    return [
        Row(
            name,
            "small job stored: lazyusid − serial loop (ms)",
            f"{med_extra * 1e3:.1f} ms ({min(extra) * 1e3:.1f}–{max(extra) * 1e3:.1f}, n={len(extra)})",
            "≤ 15 ms",
            med_extra <= 0.015,
            f"map_spectra(open_usid(copy), abs_max, store=copy) {fmt_ms(small['lazy'])} (runs on "
            f"{small['scheduler']}); serial loop (h5py read + Python loop) {fmt_ms(small['serial'])}; "
            f"one fresh child process, warmed, repeats interleaved, each into a fresh copy of the file; "
            f"CPU of the process per call: lazyusid {fmt_ms(small['lazy_cpu'])}, serial {fmt_ms(small['serial_cpu'])}",
        ),
        Row(
            name,
            "cores=2 / cores=1 on the small job",
            f"{ratio:.2f}×",
            f"≤ 1.0 (± {NOISE - 1:.0%} noise)",
            ratio <= NOISE,
            f"cores=2 {fmt_ms(c2)} (runs on {cores['scheduler2']}), cores=1 {fmt_ms(c1)}; stored, one fresh "
            "child process, interleaved; ratio of the medians",
        ),
        Row(
            name,
            "fresh process end to end, peak finder, cores=2 / cores=1",
            fmt_ratio(fresh_ratio),
            f"≤ 1.0 (± {NOISE - 1:.0%} noise)",
            statistics.median(walls[2]) / statistics.median(walls[1]) <= NOISE,
            f"each run a fresh `python` (imports, open, compute find_peaks_cwt, store into a fresh copy): "
            f"cores=2 {_fmt_s(walls[2])} on {', '.join(sorted(schedulers[2]))}; cores=1 {_fmt_s(walls[1])}; "
            "interleaved, the order alternating",
        ),
    ]


def _fmt_s(values: list[float]) -> str:
    med, lo, hi = median_spread(values)
    return f"{med:.2f} s ({lo:.2f}–{hi:.2f}, n={len(values)})"


# -- in the child process ---------------------------------------------------------------------------


#: CPU seconds of this process per call (the child's own record, beside the wall times)
_CPU: list[float] = []
_SERIAL_CPU: list[float] = []


def _emit(**values) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def _stored(src: str, work: str, i: int, cores: int | None):
    """Seconds of one stored small job into a fresh copy of ``src``; and the result."""
    import lazyusid

    from .functions import abs_max

    dst = os.path.join(work, f"small_{os.getpid()}_{i}.h5")
    shutil.copyfile(src, dst)
    tic, cpu = time.perf_counter(), time.process_time()
    result = lazyusid.map_spectra(lazyusid.open_usid(dst), abs_max, store=dst, cores=cores, progress=False)
    seconds = time.perf_counter() - tic
    _CPU.append(time.process_time() - cpu)
    assert result.attrs["usid_rows_computed"] == SMALL_SHAPE[0] * SMALL_SHAPE[1]  # not stored yet: computed
    os.remove(dst)
    return seconds, result


def _serial(src: str) -> float:
    import h5py
    import numpy as np

    from .functions import abs_max

    tic, cpu = time.perf_counter(), time.process_time()
    with h5py.File(src, "r") as f:
        values = f[MAIN][()]
    np.array([abs_max(s) for s in values])
    _SERIAL_CPU.append(time.process_time() - cpu)
    return time.perf_counter() - tic


def child_small(src: str, work: str, repeats: int) -> None:
    import lazyusid

    _stored(src, work, -1, None)  # warm: imports, first calls
    _serial(src)
    _CPU.clear()
    _SERIAL_CPU.clear()
    lazy, serial = [], []
    for i in range(repeats):
        lazy.append(_stored(src, work, i, None)[0])
        serial.append(_serial(src))
    scheduler = lazyusid.plan_spectra(lazyusid.open_usid(src), _abs_max()).scheduler
    _emit(lazy=lazy, serial=serial, scheduler=scheduler, lazy_cpu=_CPU, serial_cpu=_SERIAL_CPU)


def child_cores(src: str, work: str, repeats: int) -> None:
    import lazyusid

    _stored(src, work, -1, 1)  # warm the imports only: no worker pool unless cores=2 starts one
    c1, c2 = [], []
    for i in range(repeats):
        for k in (2, 1) if i % 2 == 0 else (1, 2):
            (c2 if k == 2 else c1).append(_stored(src, work, i * 2 + k, k)[0])
    scheduler = lazyusid.plan_spectra(lazyusid.open_usid(src), _abs_max(), cores=2).scheduler
    _emit(cores1=c1, cores2=c2, scheduler2=scheduler)
    lazyusid.shutdown()


def child_peaks(path: str, cores: int) -> None:
    import lazyusid
    from lazyusid.tutorial import peak_amplitude

    data = lazyusid.open_usid(path)
    plan = lazyusid.plan_spectra(data, peak_amplitude, cores=cores)
    result = lazyusid.map_spectra(data, peak_amplitude, store=path, cores=cores, progress=False)
    _emit(n=int(result.size), scheduler=plan.scheduler)
    lazyusid.shutdown()


def _abs_max():
    from .functions import abs_max

    return abs_max


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup")
    sub = parser.add_subparsers(dest="what", required=True)
    child = sub.add_parser("child").add_subparsers(dest="kind", required=True)
    for kind in ("small", "cores"):
        p = child.add_parser(kind)
        p.add_argument("src")
        p.add_argument("work")
        p.add_argument("--repeats", type=int, default=15)
    p = child.add_parser("peaks")
    p.add_argument("path")
    p.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    if args.kind == "small":
        child_small(args.src, args.work, args.repeats)
    elif args.kind == "cores":
        child_cores(args.src, args.work, args.repeats)
    else:
        child_peaks(args.path, args.cores)


if __name__ == "__main__":
    main()
