"""The peers benchmark (issue 14): lazyusid against every tool a microscopist could use instead.

On one generated file per workload, each tool runs in its own long-lived process
(``python -m benchmarks.peer_tools serve``: imports, session pool or context
started and timed apart, warmed with an untimed call), the repeats interleaved
between tools; the idle tools' process groups are frozen (SIGSTOP, SIGCONT
for their turn) so that they do not take the 2 cores. Every result is checked
against the serial loop's; the peak memory of the running tool's process tree
is sampled as PSS (RSS would count forked pages once per process). Workload A
is also timed end to end in a fresh process per tool
(``python -m benchmarks.peer_tools once``).

Workloads: A the seed's peak finder; B a ~20 µs per-spectrum function
(:func:`benchmarks.functions.quadratic_peak`); C ``abs(block).max(-1)``
vectorised on a large file, next to h5py's fastest ``read_direct``; D B's
function on a file 4× pyUSID's ``max_mem_mb`` (pyUSID's multi-batch regime).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import numpy as np

from .common import SPECTRUM_BYTES, Config, Row, be_file, fmt_ratio, fmt_s, median_spread, warm
from .peer_process import ToolProcess, fresh_run

LABELS = {
    "serial": "serial loop",
    "pool": "multiprocessing.Pool(2)",
    "lazyusid-stored": "lazyusid stored",
    "lazyusid-lazy": "lazyusid lazy",
    "pyusid": "pyUSID Process",
    "libertem": "LiberTEM",
    "hyperspy-threads": "HyperSpy on threads",
    "hyperspy-cluster": "HyperSpy on a LocalCluster",
    "xarray-threads": "xarray on threads",
    "xarray-cluster": "xarray on a LocalCluster",
    "h5py": "h5py's fastest read_direct (reading only)",
}
DASK = ["libertem", "hyperspy-threads", "hyperspy-cluster", "xarray-threads", "xarray-cluster"]
#: the tools of each workload, in the order of the first repeat (the serial reference first)
RUNS = {
    "A": ["serial", "pool", "lazyusid-stored", "lazyusid-lazy", "pyusid", *DASK],
    "B": ["serial", "pool", "lazyusid-stored", "lazyusid-lazy", "pyusid", *DASK],
    "C": ["serial", "pool", "lazyusid-stored", "lazyusid-lazy", *DASK, "h5py"],
    "D": ["serial", "lazyusid-stored", "pyusid"],
}
#: issue 14's targets: lazyusid stored's speed-up (the other tool's time over lazyusid's) at least this
OTHERS_1 = {
    t: 1.0
    for t in ["pool", "libertem", "hyperspy-threads", "hyperspy-cluster", "xarray-threads", "xarray-cluster"]
}
TARGETS = {
    "A": {"pool": 0.97, "libertem": 1.0, "xarray-cluster": 1.0, "hyperspy-cluster": 1.0, "xarray-threads": 1.8,
          "hyperspy-threads": 1.8, "pyusid": 1.0},
    "A fresh": {"pyusid": 1.10, "serial": 1.0, **OTHERS_1},
    "B": {"serial": 1.6, "pyusid": 5.0, **OTHERS_1},
    "C": {"serial": 1.0, **OTHERS_1, "h5py": 0.8},
    "D": {"pyusid": 1.5},
}  # fmt: skip
TITLES = {
    "A": "peak finder",
    "B": "quadratic fit (~20 µs)",
    "C": "abs(block).max(-1)",
    "D": "quadratic fit, pyUSID batches",
}


@dataclass
class Sizes:
    a: tuple[int, int]
    b: tuple[int, int]
    c: tuple[int, int]
    d_mem_mb: int  # pyUSID's max_mem_mb for D; its file is 4× larger
    repeats: int
    fresh_repeats: int
    fresh_tools: tuple[str, ...] | None = None  # of workload A's tools (default: all)
    once_in_a: tuple[str, ...] = ()  # A's slowest tools, timed in its first repeat only


SIZES = {
    "tiny": Sizes(
        a=(4, 4),
        b=(8, 8),
        c=(16, 16),
        d_mem_mb=1,
        repeats=1,
        fresh_repeats=1,
        fresh_tools=("serial", "lazyusid-stored", "pyusid"),
    ),
    "quick": Sizes(a=(24, 24), b=(128, 128), c=(256, 256), d_mem_mb=4, repeats=2, fresh_repeats=1),
    # about 15 minutes on a quiet 2-core machine: A in session ~6 min (~17 s per tool and repeat; serial
    # and the GIL-bound thread tools ~26-41 s, once), A fresh ~4 min, B ~3 min, C ~1 min, D ~1 min
    "full": Sizes(
        a=(128, 128),
        b=(512, 512),
        c=(1024, 1152),
        d_mem_mb=32,
        repeats=2,
        fresh_repeats=1,
        fresh_tools=(
            "pool",
            "lazyusid-stored",
            "lazyusid-lazy",
            "pyusid",
            "libertem",
            "hyperspy-cluster",
            "xarray-cluster",
        ),
        once_in_a=("serial", "hyperspy-threads", "xarray-threads"),
    ),  # C: 1.05 GiB; D: 128 MiB
}


def d_shape(mem_mb: int) -> tuple[int, int]:
    """(n_y, n_x) of a file of at least 4 × ``mem_mb`` MiB of spectra, 128 positions wide."""
    n = -(-4 * mem_mb * 2**20 // SPECTRUM_BYTES)
    return -(-n // 128), 128


def compare(out: str, ref: np.ndarray) -> str:
    """``exact`` (at the tool's output precision), ``close`` (rtol 1e-6) or what differs."""
    got = np.load(out)
    if got.shape != ref.shape:
        return f"DIFFERENT shape {got.shape} (expected {ref.shape})"
    if np.array_equal(got, ref.astype(got.dtype)):
        return "exact"
    if np.allclose(got, ref, rtol=1e-6, atol=0):
        return "close"
    return f"DIFFERENT at {int((~np.isclose(got, ref, rtol=1e-6, atol=0)).sum())} positions"


def _rank(check: str) -> int:
    return 2 if check.startswith("DIFFERENT") else {"exact": 0, "close": 1}.get(check, 3)


class Results:
    """Times, CPU, PSS and result checks of one workload, per tool."""

    def __init__(self):
        self.times: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.pss: dict[str, int] = {}
        self.check: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.exit: dict[str, float] = {}  # fresh processes: seconds from the result written to the exit

    def add(self, tool: str, out: dict, check: str | None) -> None:
        if "error" in out:
            self.errors.setdefault(tool, out["error"])
            return
        self.times.setdefault(tool, []).append(out["seconds"])
        if "exit_s" in out:
            self.exit[tool] = max(self.exit.get(tool, 0.0), out["exit_s"])
        else:
            self.cpu.setdefault(tool, []).append(out["cpu_s"])
            self.pss[tool] = max(self.pss.get(tool, 0), out["pss"])
        check = check or "not checked"
        if _rank(check) >= _rank(self.check.get(tool, "exact")):  # the worst check of the repeats stays
            self.check[tool] = check

    def value(self, tool: str) -> str:
        if tool in self.times:
            return fmt_s(self.times[tool])
        return self.errors.get(tool, "not run")


def target_rows(bench: str, key: str, res: Results) -> list[Row]:
    rows = []
    mine = res.times.get("lazyusid-stored")
    for tool, target in TARGETS[key].items():
        other = res.times.get(tool)
        measure, goal = f"lazyusid stored vs {LABELS[tool]}", f"≥ {target:g}×"
        if not mine or not other:
            who = "lazyusid" if not mine else LABELS[tool]
            rows.append(Row(bench, measure, "not measured", goal, False if not mine else None,
                            f"{who}: {res.value('lazyusid-stored' if not mine else tool)}"))  # fmt: skip
            continue
        ratios = [o / m for o, m in zip(other, mine)]
        lazy = res.times.get("lazyusid-lazy")
        also = (
            f"; lazyusid lazy: {fmt_ratio([o / m for o, m in zip(other, lazy)])}"
            if lazy and tool != "lazyusid-lazy"
            else ""
        )
        rows.append(Row(bench, measure, fmt_ratio(ratios), goal, median_spread(ratios)[0] >= target,
                        f"{LABELS[tool]} {fmt_s(other)}; lazyusid stored {fmt_s(mine)}{also}"))  # fmt: skip
    return rows


def tool_rows(bench: str, res: Results, tools: list[str]) -> list[Row]:
    rows = []
    for tool in tools:
        if tool not in res.times:
            rows.append(Row(bench, LABELS[tool], res.value(tool), detail="" if res.errors.get(tool) else
                            "not run in this mode (it would add minutes; see its time in session)"))  # fmt: skip
            continue
        if tool in res.exit:
            detail = f"until its result is written; the process exited {res.exit[tool]:.1f} s later"
        else:
            detail = (f"CPU {median_spread(res.cpu[tool])[0]:.2f} s (its process tree); peak PSS of the tree "
                      f"{res.pss[tool] / 2**20:.0f} MiB")  # fmt: skip
        rows.append(Row(bench, LABELS[tool], res.value(tool), detail=f"{detail}; result {res.check[tool]}"))
    checked = {t: c for t, c in res.check.items() if c != "not checked"}
    wrong = [f"{LABELS[t]}: {c}" for t, c in checked.items() if c.startswith("DIFFERENT")]
    rows.append(Row(bench, "results equal to the serial loop's", "NO: " + "; ".join(wrong) if wrong else "yes",
                    "equal", not wrong, f"{len(checked)} tools checked (exact, or close: rtol 1e-6)"))  # fmt: skip
    return rows


def workload(w: str, path: str, procs: dict, sizes: Sizes, tmp: str, log) -> Results:
    res, ref = Results(), None
    tools = [t for t in RUNS[w] if t in procs]
    extra = {"max_mem_mb": sizes.d_mem_mb} if w == "D" else {}
    for rep in range(sizes.repeats):
        order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
        for tool in order:
            if w == "A" and rep and tool in sizes.once_in_a:
                continue
            out_path = os.path.join(tmp, f"{w}_{tool}.npy")
            out = procs[tool].call({"workload": w, "path": path, "out": out_path, **extra}, timeout_s=1800)
            if "error" not in out and out.get("checked"):
                if ref is None and tool == "serial":
                    ref = np.load(out_path)
                check = compare(out_path, ref) if ref is not None else "not checked"
            else:
                check = None
            res.add(tool, out, check)
            log(
                f"  peers {w} rep {rep + 1} {tool}: "
                + (f"{out['seconds']:.3f} s" if "seconds" in out else out["error"])
            )
    return res


def run(cfg: Config, log) -> list[Row]:
    sizes = SIZES[cfg.mode]
    shapes = {"A": sizes.a, "B": sizes.b, "C": sizes.c, "D": d_shape(sizes.d_mem_mb)}
    files = {w: be_file(cfg, s) for w, s in shapes.items()}
    tmp = os.path.join(cfg.workdir, "peers")
    os.makedirs(tmp, exist_ok=True)
    warm_path = be_file(cfg, (4, 4))
    tools = list(dict.fromkeys(t for w in RUNS for t in RUNS[w]))
    procs: dict[str, ToolProcess] = {}
    rows: list[Row] = []
    results: dict[str, Results] = {}
    try:
        for tool in tools:  # one at a time, the others frozen: each start-up measured alone
            procs[tool] = ToolProcess(tool, [w for w in RUNS if tool in RUNS[w]], warm_path, tmp)
            ready = procs[tool].reply(timeout_s=900)
            procs[tool].signal_tree(signal.SIGSTOP)
            if "error" in ready:
                procs[tool].error = ready["error"]
                rows.append(Row("peers: session start-up", LABELS[tool], ready["error"]))
            else:
                rows.append(Row("peers: session start-up", LABELS[tool], f"{ready['start_s']:.2f} s", detail=(
                    f"pool/context start; imports before it {ready['import_s']:.2f} s; "
                    f"untimed warm-up call(s) {ready['warm_s']:.2f} s")))  # fmt: skip
            log(f"  peers start {tool}: {ready}")
        for w in RUNS:
            warm(files[w])
            results[w] = workload(w, files[w], procs, sizes, tmp, log)
    finally:
        for proc in procs.values():
            proc.close(wait=False)
        for proc in procs.values():
            proc.close()
    for w in RUNS:
        n_y, n_x = shapes[w]
        mib = n_y * n_x * SPECTRUM_BYTES / 2**20
        bench = f"peers {w}: {TITLES[w]} {n_y}×{n_x}×119 ({mib:.0f} MiB)"
        if w == "D":
            bench += f", pyUSID max_mem_mb={sizes.d_mem_mb}"
        rows += tool_rows(bench, results[w], [t for t in RUNS[w] if t in procs]) + target_rows(
            bench, w, results[w]
        )
    fresh = Results()
    ref = np.load(os.path.join(tmp, "A_serial.npy"))
    for _ in range(sizes.fresh_repeats):
        for tool in RUNS["A"]:
            if sizes.fresh_tools is not None and tool not in sizes.fresh_tools:
                continue
            if procs[tool].error:
                fresh.add(tool, {"error": procs[tool].error}, None)
                continue
            out = fresh_run(tool, files["A"], tmp)
            fresh.add(tool, out, compare(out["out"], ref) if "out" in out else None)
            log(f"  peers A fresh process {tool}: {out}")
    bench = f"peers A fresh process, end to end: {sizes.a[0]}×{sizes.a[1]}"
    rows += tool_rows(bench, fresh, RUNS["A"]) + target_rows(bench, "A fresh", fresh)
    rows.append(Row("peers", "small job (1,024 positions, stored)", "see the startup benchmark",
                    "≤ 15 ms over the serial loop; cores=2 never slower than cores=1", None,
                    "measured by benchmarks/startup.py (`--only startup`)"))  # fmt: skip
    return rows


#: what the peers rows include (in docs/benchmarks.md, under "What each timing includes")
TIMINGS = """- **peers** (issue 14): every tool in its own long-lived process (`python -m benchmarks.peer_tools
  serve`), started one at a time (its pool or context start is the "session start-up" row), warmed with
  an untimed call of each workload's function on a 4×4 file, then frozen (SIGSTOP of its process group;
  distributed's `worker-ttl` disabled) except for its own timed calls, the repeats interleaved between
  tools (the order rotated each repeat). A call's time is measured inside the tool's process around the
  open + compute (+ store) call; per-call pools (pyUSID's) are inside it. Serial loop and `Pool(2)`
  (spawned, a session pool) read 16 MiB row blocks with h5py; lazyusid: `map_spectra(open_usid(path), f,
  cores=2)` (`vectorized=True` for C) into a fresh HDF5 file ("stored") or computed (`.values`, "lazy");
  pyUSID 0.0.12: the seed's `PeakFinder` (`examples/pyusid_peak_finder.py`, cores=2) into its own copy of
  the file, mapping the workload's function; LiberTEM: `Context.make_with("dask", cpus=2)`, its HDF5
  reader with `sig_dims=1`, `ctx.map(f)` (a `process_tile` UDF for C); HyperSpy 2.5: a lazy
  `ComplexSignal1D` of `open_usid(path).data`, `s.map(f)` (C: `abs(s).max(axis=-1)`); xarray:
  `apply_ufunc(f, open_usid(path), dask="parallelized")` (`vectorize=True` per spectrum); the dask-based
  ones on dask chunks of ≤ 16 MiB, ≥ 8 of them, on threads or on a 2-process LocalCluster (made the
  default client). Ratios are lazyusid stored's speed-ups (the other's time over lazyusid's, per repeat).
  Memory: peak PSS of the running tool's process tree, sampled every 50 ms, or less often when a sample is costly (the sampler takes at most 5 % of a core: unbounded it took 35 %). Results: each compared with
  the serial loop's (exact at the tool's output precision, or rtol 1e-6). **Fresh process**: wall time of
  `python -m benchmarks.peer_tools once TOOL A …` from launch until its result is written (interpreter,
  imports, pool start, open, compute, write `.npy`, and the HDF5 store for the stored tools), with the
  session processes closed. In full mode (about 15 minutes for this benchmark alone) workload A times the
  serial loop and the two thread-based tools in its first repeat only, and the fresh-process rows leave
  those three out (each would add 0.5-1 minute; their in-session times already exceed lazyusid's).
"""
