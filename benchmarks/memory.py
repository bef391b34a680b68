"""Benchmark 3: peak resident memory of the whole process tree, against budget + baseline + 150 MB.

The computation runs in a fresh child process (``benchmarks.child memory``)
so that the baseline is clean: the child imports lazyusid, opens the file
(and, for the process pool, starts and warms its 2 worker processes), then
waits. This process samples the summed RSS of the child and all its
descendants: a baseline while it waits, then every 10 ms while it computes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import psutil
from dask.utils import format_bytes, parse_bytes

from .common import Config, Row, TreeSampler, be_file, tree_rss, warm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLACK = 150 * 10**6


def measure(path: str, budget: str, kind: str, workdir: str) -> dict:
    target = os.path.join(workdir, f"memory_{kind}.h5")
    if os.path.exists(target):
        os.remove(target)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.child",
            "memory",
            path,
            target,
            "--budget",
            budget,
            "--kind",
            kind,
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        if line.strip() != "BASELINE":
            raise RuntimeError(f"memory child: {line!r}\n{proc.stderr.read()[-3000:]}")
        ps = psutil.Process(proc.pid)
        time.sleep(0.5)
        samples = []
        for _ in range(20):
            samples.append(tree_rss(ps, parts=True))
            time.sleep(0.01)
        baseline = statistics.median(s[0] for s in samples)
        baseline_own = statistics.median(s[1] for s in samples)
        with TreeSampler(proc.pid) as sampler:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out = proc.stdout.readline()
            while out and not out.startswith("RESULT "):
                out = proc.stdout.readline()
        proc.wait(timeout=600)
        if not out:
            raise RuntimeError(f"memory child failed:\n{proc.stderr.read()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    os.remove(target)
    res = json.loads(out[len("RESULT ") :])
    res.update(
        baseline=baseline,
        peak=sampler.peak,
        samples=sampler.samples,
        own=(baseline_own, sampler.peak_own),
        children=(baseline - baseline_own, sampler.peak_children),
    )
    return res


#: the chunked source's chunks: (positions, frequencies), ~1 MiB
CHUNKS = (1024, 119)


def run(cfg: Config, log) -> list[Row]:
    contiguous = be_file(cfg, cfg.memory_shape)
    budget = parse_bytes(cfg.memory_budget)
    size = os.path.getsize(contiguous)
    rows = []
    for kind, path, what in (
        ("threads", contiguous, "vectorised abs-max (threads)"),
        ("processes", contiguous, "per-spectrum abs-max (2 worker processes; they map their blocks)"),
        (
            "processes",
            be_file(cfg, cfg.memory_shape, CHUNKS),
            f"per-spectrum abs-max (2 worker processes), chunked source {CHUNKS}: blocks sent to them",
        ),
    ):
        warm(path)
        r = measure(path, cfg.memory_budget, kind, cfg.workdir)
        growth = r["peak"] - r["baseline"]
        limit = budget + SLACK
        log(
            f"  memory {kind}: baseline {format_bytes(r['baseline'])}, peak {format_bytes(r['peak'])}, {r['samples']} samples, {r['compute_s']:.1f} s"
        )
        rows.append(
            Row(
                f"3 memory: file {size / 2**20:.0f} MiB = {size / budget:.1f}× budget {cfg.memory_budget}",
                f"peak − baseline, {what}",
                format_bytes(growth),
                f"≤ budget + 150 MB = {format_bytes(limit)}",
                growth <= limit,
                f"process-tree RSS: baseline (interpreter + imports + open file"
                f"{' + 2 idle workers' if kind == 'processes' else ''}) {format_bytes(r['baseline'])}, "
                f"peak {format_bytes(r['peak'])}"
                + (
                    f" (main process {format_bytes(r['own'][0])} → {format_bytes(r['own'][1])}, workers "
                    f"{format_bytes(r['children'][0])} → {format_bytes(r['children'][1])}, peaks need not coincide)"
                    if kind == "processes"
                    else ""
                )
                + f"; plan: {r['blocks']} blocks of {r['positions_per_block']} positions, "
                f"projected {format_bytes(r['projected'])}; {r['compute_s']:.1f} s",
            )
        )
    return rows
