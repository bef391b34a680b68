"""Measurements that need a fresh interpreter: ``python -m benchmarks.child <what> ...``.

Each prints one JSON line (prefixed ``RESULT``) with its timings, so the
parent can separate start-up, imports and computing. ``memory`` talks to
the parent over stdin/stdout so that the parent samples the process tree
before (baseline) and during the computation.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

T0 = time.perf_counter()


def emit(**values) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def pyusid_peaks(path: str, cores: int) -> None:
    """The seed tutorial's PeakFinder (examples/pyusid_peak_finder.py) on ``path``."""
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
    import pyusid_peak_finder  # imports pyUSID (with the NumPy 2 shim)

    imported = time.perf_counter()
    amplitudes = pyusid_peak_finder.find_peaks(path, cores=cores)
    done = time.perf_counter()
    emit(import_s=imported - T0, compute_s=done - imported, n=int(amplitudes.size))


def lazy_peaks(path: str, cores: int) -> None:
    """lazyusid end to end in a fresh process: imports, worker processes, computing into ``path``."""
    import lazyusid
    from lazyusid.tutorial import peak_amplitude

    imported = time.perf_counter()
    data = lazyusid.open_usid(path)
    result = lazyusid.map_spectra(data, peak_amplitude, store=path, cores=cores, progress=False)
    done = time.perf_counter()
    emit(import_s=imported - T0, compute_s=done - imported, n=int(result.size))
    lazyusid.shutdown()


def memory(path: str, target: str, budget: str, kind: str) -> None:
    """Report ready (baseline), wait for the parent's go, compute into ``target``, report done."""
    import numpy as np

    import lazyusid

    from .functions import abs_max, abs_max_block

    data = lazyusid.open_usid(path)
    if kind == "processes":  # start and warm the worker processes: they are part of the baseline
        from lazyusid.run.schedulers import shared_client

        client = shared_client(2)
        for module in ("lazyusid.compute", "benchmarks.functions"):  # what the first block would import
            client.run(importlib.import_module, module)
        client.gather(
            [
                client.submit(abs_max, np.ones(4), pure=False, workers=[w])
                for w in client.scheduler_info()["workers"]
            ]
        )
    print("BASELINE", flush=True)
    sys.stdin.readline()
    tic = time.perf_counter()
    if kind == "threads":
        result = lazyusid.map_spectra(
            data, abs_max_block, vectorized=True, budget=budget, store=target, progress=False
        )
    else:
        result = lazyusid.map_spectra(data, abs_max, budget=budget, cores=2, store=target, progress=False)
    seconds = time.perf_counter() - tic
    plan = lazyusid.plan_spectra(
        data,
        abs_max_block if kind == "threads" else abs_max,
        vectorized=kind == "threads",
        budget=budget,
        cores=2,
    )
    emit(
        compute_s=seconds,
        n=int(result.size),
        positions_per_block=plan.positions_per_block,
        blocks=plan.n_blocks,
        projected=plan.projected_bytes,
    )
    lazyusid.shutdown()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pyusid-peaks")
    p.add_argument("path")
    p.add_argument("--cores", type=int, default=2)
    p = sub.add_parser("lazy-peaks")
    p.add_argument("path")
    p.add_argument("--cores", type=int, default=2)
    p = sub.add_parser("memory")
    p.add_argument("path")
    p.add_argument("target")
    p.add_argument("--budget", required=True)
    p.add_argument("--kind", choices=["threads", "processes"], default="threads")
    args = parser.parse_args(argv)
    if args.what == "pyusid-peaks":
        pyusid_peaks(args.path, args.cores)
    elif args.what == "lazy-peaks":
        lazy_peaks(args.path, args.cores)
    else:
        memory(args.path, args.target, args.budget, args.kind)


if __name__ == "__main__":
    main()
