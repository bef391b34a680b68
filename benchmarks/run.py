"""Run the benchmark suite, print the table and write ``docs/benchmarks.md``.

Usage::

    python -m benchmarks --quick     # about 3 minutes on 2 cores (smaller files)
    python -m benchmarks --full      # the sizes issue 6 names (about 15 minutes)
    python -m benchmarks --quick --only peaks,memory --no-write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version

import psutil

from . import checkpoint, cluster, derived, memory, peaks, peers, throughput
from .common import Row, full_config, load_average, quick_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = {
    "peaks": peaks.run,
    "vectorised": throughput.run,
    "memory": memory.run,
    "checkpoint": checkpoint.run,
    "cluster": cluster.run,
    "derived": derived.run,
    "peers": peers.run,
    "startup": __import__(f"{__package__}.startup", fromlist=["run"]).run,
}
PACKAGES = (
    "lazyusid",
    "numpy",
    "scipy",
    "h5py",
    "dask",
    "distributed",
    "xarray",
    "zarr",
    "pyUSID",
    "sidpy",
    "psutil",
    "libertem",
    "hyperspy",
)


def machine() -> list[str]:
    vm = psutil.virtual_memory()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    versions = []
    for pkg in PACKAGES:
        try:
            versions.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            versions.append(f"{pkg} (not installed)")
    import h5py

    return [
        f"CPU: {cpu}, {os.cpu_count()} logical cores ({psutil.cpu_count(logical=False)} physical)",
        f"Memory: {vm.total / 2**30:.1f} GiB",
        f"OS: {platform.platform()}",
        f"Python {platform.python_version()}; HDF5 {h5py.version.hdf5_version}",
        "Versions: " + ", ".join(versions),
    ]


def table(rows: list[Row]) -> str:
    head = "| Benchmark | Measure | Measured | Target | Result | Details |\n|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r.benchmark} | {r.measure} | {r.value} | {r.target} | {('**' + r.verdict + '**') if r.verdict else ''} "
        f"| {r.detail} |\n"
        for r in rows
    )
    return head + body


def text_table(rows: list[Row]) -> str:
    lines = []
    for r in rows:
        verdict = f"[{r.verdict}]" if r.verdict else "      "
        target = f"  target {r.target}" if r.target else ""
        lines.append(f"{verdict:6} {r.benchmark} | {r.measure}: {r.value}{target}")
        if r.detail:
            lines.append(f"{'':7}{r.detail}")
    return "\n".join(lines)


#: what profiling found behind the misses and what changed (py-spy, pyinstrument; see the issue-6 notes)
NOTES = """## What limits the misses, and what was fixed (profiled 2026-11-25 on this machine)

- **1, ≥ 1.15× pyUSID — not reachable on 2 cores.** pyUSID's `Process` (joblib pool, 2 cores) runs
  at 99–101% of a plain `multiprocessing.Pool(2)` splitting the in-memory array (the machine-ceiling
  row; the function alone costs ~1.5 ms per spectrum and takes ≥ 95% of every contender's CPU;
  garbage collection settings change nothing). 1.15× faster than pyUSID would be ~13% faster than
  two bare processes running the same function, which a CPU-bound function on 2 cores does not allow.
  lazyusid runs at 0.96–0.99× of that ceiling in session. The **fresh-process** row also pays for
  its worker processes importing lazyusid and scipy.signal on their first task (~1.4 s,
  `python -X importtime`) and the LocalCluster start (~0.4–0.6 s on a quiet machine); pyUSID pays
  `import pyUSID` (~2.3 s).
- **2, ≥ 70% of h5py's read — met.** Three causes found and fixed: (a) 32 MiB blocks were slower
  than 16 MiB (glibc serves requests of 32 MiB and more with fresh pages every time; 16 MiB blocks
  stay in cache): 0.52 → 0.33 s by hand; `plan.MAX_BLOCK_INPUT_BYTES` is now 16 MiB. (b) The sink
  analysed the source's 2.4 M position indices twice per call (~0.12 s each): a layout is now
  analysed once per unchanged file (`layout.remembering_layouts`). (c) One thread copying every block
  (`read_direct`, serial under HDF5's lock) while the other computes: contiguous datasets are now
  mapped from the file instead (`open.MappedRows`, copy-on-write, checked against h5py), so each
  thread reads its own pages: lazyusid then computes and stores in ~1.2× the time h5py takes only to
  read. The baseline is the fastest `read_direct` of 16/32/64 MiB blocks (64 MiB alone, as before,
  was ~25% slower and flattered lazyusid).
- **3, memory — met.** With 2 worker processes the client used to hold ~10 block-sized copies
  (blocks, pickled tasks, the in-process scheduler's copies): 475 MiB over baseline. Worker processes
  now map their own blocks of a contiguous source (the client sends file, offset and rows), and
  blocks of other sources are scattered straight to a worker. The chunked-source row still grows
  ~1.6× the plan's projection: glibc keeps freed blocks in per-thread arenas (the same run with
  `MALLOC_ARENA_MAX=1`: +55 MiB instead of +137 MiB in the client).
"""


def write_markdown(
    path: str, cfg, rows: list[Row], command: str, started: str, seconds: float, loads
) -> None:
    missed = [r for r in rows if r.passed is False]
    summary = (
        "All targets met."
        if not missed
        else f"Targets missed ({len(missed)}): "
        + "; ".join(f"benchmark {r.benchmark} — {r.measure} ({r.value}, target {r.target})" for r in missed)
        + "."
    )
    text = f"""# Benchmarks

Produced by `{command}` on {started} ({cfg.mode} mode, {seconds / 60:.1f} minutes).
Ratios are measured side by side in this one run, repeats interleaved; times are medians with
(min–max, n) spreads. Absolute times on a shared machine are noisy: read the ratios.

{summary}

## Machine

{chr(10).join("- " + m for m in machine())}
- Load average (1/5/15 min) at start: {loads[0]}; at end: {loads[1]} (other processes share these cores)

## Results

{table(rows)}
## What each timing includes

- **1, serial**: the loop of `lazyusid.tutorial.peak_amplitude` over the array already in memory
  (reading the file is not timed). **lazyusid**: `open_usid` + `map_spectra(..., store=copy, cores=2)`
  into a checkpointed results group in an identical copy of the file; the session's 2 worker
  processes are started (and have imported the function) beforehand, as they are reused across
  calls. **pyUSID**: `examples/pyusid_peak_finder.py` (the tutorial's `PeakFinder`, cores=2) in a
  fresh interpreter; "in session" counts `PeakFinder(...).compute()` only (not interpreter start-up
  nor `import pyUSID`, which is ~2 s), while pyUSID's own worker pool, which it starts on every
  compute, is included. The fresh-process row (full mode) times both tools as command-line runs,
  everything included. The **machine ceiling** row runs the same loop in a plain `multiprocessing.Pool(2)`
  (half the in-memory spectra per process): what 2 processes could get on the machine during this
  run; "cores obtained" is lazyusid's CPU seconds (client and workers) over its wall time.
- **2**: from a warm page cache; lazyusid's time is `map_spectra(vectorized=True, store=<source>,
  override=True)` (plan, reads, function, writes with checkpoints); h5py reads row blocks of
  64 MiB (`d[a:b]`) and of 16, 32 and 64 MiB into one reused buffer (`read_direct`, the fastest counts).
  "By hand" is the engine-free equivalent (h5py `read_direct` of 16 MiB blocks under a lock, the
  function on 2 threads, nothing stored).
- **3**: summed RSS of the child process and all its descendants, sampled every 10 ms; the
  baseline is measured in the same child after imports (and after starting the worker processes,
  for the process-pool row), before computing.
- **4**: `NoCheckpointSink` (`benchmarks/checkpoint.py`) is a benchmark-only subclass of the HDF5
  sink whose `write` stores the data without flushes, flags or `last_pixel`. Resume: the second half
  of the flags of a finished run are cleared; the whole and the resumed run each map freshly opened
  data (`open_usid` not timed, as in a new session after a crash). Data opened before the file
  changed has its layout analysed again in the timed call (~30–120 ms on 2.4 M positions).
- **5**: lazyusid alone at 1×, 4× and 16× the positions of the smallest file.
- **6**: a `dask scheduler` and 2 `dask worker --nthreads 1` processes (the command-line tools of this
  environment, each in its own working directory; `PYTHONPATH` names this checkout), joined with
  `Client(scheduler_file=...)` (not made the default client); started, and the workers' imports done,
  before timing. Each repeat times `map_spectra(open_usid(src), peak_amplitude, client=client,
  store=<fresh other file>.h5)` and the same call with `cores=2` and no client (lazyusid's session pool),
  the order alternating. Bytes moved: received on `lo` (`/proc/net/dev`) from just before to just after
  the call, over the input's bytes; the idle loopback rate with the cluster up (heartbeats, and anything
  else running on the machine) is given beside it.
- **7**: from a warm page cache, both on threads; lazyusid: `map_spectra(derived, f, vectorized=True,
  positions_per_block=<its plan's>, store=<fresh file>.h5)` with `f = abs(block).max(axis=-1)`; dask:
  the same derivation of `open_usid(src).data`, `reshape` to (positions, spectral), `rechunk` to the same
  block, `map_blocks(f)`, `da.store` into a dataset of lazyusid's shape, dtype and chunks in a fresh file.
  Opening the file is not timed for either.
{peers.TIMINGS}
{NOTES}
Sizes in this mode: peak finder {cfg.peaks_shape[0]}×{cfg.peaks_shape[1]}, vectorised
{cfg.vector_shape[0]}×{cfg.vector_shape[1]}, memory {cfg.memory_shape[0]}×{cfg.memory_shape[1]} with budget
{cfg.memory_budget}, checkpoint cost {cfg.checkpoint_shape[0]}×{cfg.checkpoint_shape[1]}, user cluster
{cfg.cluster_shape[0]}×{cfg.cluster_shape[1]}, derived inputs {cfg.derived_shape[0]}×{cfg.derived_shape[1]}
(all ×119 complex64).
Reproduce: `/work/venv/bin/python -m benchmarks --quick` (about 3 minutes) or `--full` (the sizes
issue 6 names).
"""
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small files, about 3 minutes (default)")
    mode.add_argument("--full", action="store_true", help="the sizes issue 6 names (≥ 2 GiB files)")
    parser.add_argument(
        "--only", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}"
    )
    parser.add_argument(
        "--workdir", help="where generated files go (kept for reruns; default: a temporary directory)"
    )
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    workdir = args.workdir or tempfile.mkdtemp(prefix="lazyusid-bench-")
    os.makedirs(workdir, exist_ok=True)
    cfg = full_config(workdir) if args.full else quick_config(workdir)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(SUITES)}")
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    loads = [load_average()]
    tic = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - tic:6.1f} s] {msg}", flush=True)

    rows: list[Row] = []
    try:
        for name in names:
            log(f"benchmark {name} ({cfg.mode})")
            rows.extend(SUITES[name](cfg, log))
    finally:
        from lazyusid.run.schedulers import shutdown

        shutdown()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.perf_counter() - tic
    loads.append(load_average())
    print()
    print(text_table(rows))
    print(f"\n{cfg.mode} mode: {seconds / 60:.1f} minutes; load average {loads[0]} → {loads[1]}")
    if not args.no_write:
        write_markdown(args.out, cfg, rows, command, started, seconds, loads)
        print(f"wrote {args.out}")
    return 0 if all(r.passed is not False for r in rows) else 1
