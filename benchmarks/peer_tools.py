"""The tool side of the peers benchmark (``benchmarks/peers.py``): one tool per process.

``python -m benchmarks.peer_tools serve TOOL WARM TMP --workloads A,B``
    imports the tool, starts its session pool or context (both timed and
    reported), warms it with an untimed call of every workload's function
    on the small file ``WARM``, then runs one timed call per JSON command
    read from stdin (``{"workload", "path", "out", ...}``), saving the
    result to ``out`` (``.npy``) and replying one ``RESULT`` line each.
``python -m benchmarks.peer_tools once TOOL WORKLOAD SRC OUT``
    the fresh-process run: imports, pool start, open, compute, write the
    result; prints ``DONE`` when the result is written.

One adapter per tool, each small: serial loop, ``multiprocessing.Pool(2)``,
lazyusid (stored and lazy), pyUSID, h5py (read only) here; the dask-based
peers (LiberTEM, HyperSpy, xarray) in ``benchmarks/peer_dask.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
import traceback
import uuid
import warnings

import numpy as np

from .child import emit
from .common import MAIN, cpu_seconds

#: workload -> (kind, "module:function"): "spectrum" functions get one spectrum, "block" ones many
WORKLOADS = {
    "A": ("spectrum", "lazyusid.tutorial:peak_amplitude"),
    "B": ("spectrum", "benchmarks.functions:quadratic_peak"),
    "C": ("block", "benchmarks.functions:abs_max_block"),
    "D": ("spectrum", "benchmarks.functions:quadratic_peak"),
}
#: the largest row block the loops read at once (lazyusid's own block limit)
BLOCK_BYTES = 16 * 2**20


def workload_function(workload: str):
    kind, where = WORKLOADS[workload]
    module, name = where.split(":")
    return kind, getattr(importlib.import_module(module), name)


def row_blocks(path: str, at_least: int = 1) -> list[tuple[int, int]]:
    """Row ranges of at most :data:`BLOCK_BYTES` (and at least ``at_least`` of them) of ``path``'s main dataset."""
    import h5py

    with h5py.File(path, "r") as f:
        n, row = f[MAIN].shape[0], f[MAIN].shape[1] * f[MAIN].dtype.itemsize
    count = max(at_least, -(-n * row // BLOCK_BYTES))
    count += count % at_least and at_least - count % at_least  # a multiple of at_least
    edges = np.linspace(0, n, min(count, n) + 1).astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def read_rows(path: str, a: int, b: int) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return f[MAIN][a:b]


def spectra_task(args) -> np.ndarray:
    """A ``Pool`` task: read rows ``a:b`` with h5py and loop the function over them."""
    path, a, b, func = args
    return np.array([func(s) for s in read_rows(path, a, b)], dtype=np.float64)


def block_task(args) -> np.ndarray:
    path, a, b, func = args
    return func(read_rows(path, a, b))


class Adapter:
    """One tool: ``imports`` and ``start`` are timed apart; ``run`` is the timed call."""

    kinds = ("spectrum", "block")

    def imports(self) -> None:
        pass

    def start(self) -> None:
        pass

    def prepare(self, path: str, tmp: str) -> str:
        """The file the timed call reads (untimed; pyUSID writes into its own copy)."""
        return path

    def run(self, kind: str, func, path: str, tmp: str, opts: dict) -> np.ndarray | float:
        """The result per position; or seconds measured by the tool itself (h5py's read)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """After the timed call (untimed): remove what it wrote."""

    def close(self) -> None:
        pass


class Serial(Adapter):
    """The reference: h5py reads 16 MiB row blocks; a Python loop (or the vectorised function) over each."""

    def run(self, kind, func, path, tmp, opts):
        import h5py

        out = []
        blocks = row_blocks(path)
        with h5py.File(path, "r") as f:
            dset = f[MAIN]
            buf = np.empty((max(b - a for a, b in blocks), dset.shape[1]), dset.dtype)
            for a, b in blocks:
                if kind == "block":
                    dset.read_direct(buf, np.s_[a:b], np.s_[0 : b - a])
                    out.append(func(buf[: b - a]))
                else:
                    out.append(np.array([func(s) for s in dset[a:b]], dtype=np.float64))
        return np.concatenate(out)


class Pool(Adapter):
    """``multiprocessing.Pool(2)`` (spawned, a session pool): each task reads its rows with h5py."""

    def start(self):
        import multiprocessing

        self.pool = multiprocessing.get_context("spawn").Pool(2)

    def run(self, kind, func, path, tmp, opts):
        task = spectra_task if kind == "spectrum" else block_task
        return np.concatenate(self.pool.map(task, [(path, a, b, func) for a, b in row_blocks(path, 2)]))

    def close(self):
        self.pool.terminate()


class Lazyusid(Adapter):
    """``map_spectra(open_usid(path), f, cores=2)``: ``store=`` a fresh HDF5 file, or lazy and computed."""

    def __init__(self, stored: bool):
        self.stored = stored
        self.written: str | None = None

    def imports(self):
        import lazyusid  # noqa: F401

    def start(self):
        from lazyusid.run.schedulers import shared_client

        client = shared_client(2)
        for module in ("lazyusid.tutorial", "benchmarks.functions"):  # what the first block would import
            client.run(importlib.import_module, module)

    def run(self, kind, func, path, tmp, opts):
        import lazyusid

        options = {"vectorized": True} if kind == "block" else {"cores": 2}
        data = lazyusid.open_usid(path)
        if self.stored:
            self.written = os.path.join(tmp, f"lazyusid_{uuid.uuid4().hex}.h5")
            result = lazyusid.map_spectra(data, func, store=self.written, progress=False, **options)
        else:
            result = lazyusid.map_spectra(data, func, progress=False, **options)
        return np.asarray(result.values).ravel()

    def cleanup(self):
        if self.written and os.path.exists(self.written):
            os.remove(self.written)
        self.written = None

    def close(self):
        import lazyusid

        lazyusid.shutdown()


class PyUSID(Adapter):
    """pyUSID 0.0.12's ``Process`` (cores=2; its worker pool is started on every compute): the seed's
    ``PeakFinder`` (``examples/pyusid_peak_finder.py``) for A, the same class mapping another function otherwise.
    Writes its results group into its own copy of the file; the group is deleted after each call.
    """

    kinds = ("spectrum",)

    def __init__(self, copy: bool = True):
        self.copy = copy
        self.copies: dict[str, str] = {}
        self.group: tuple[str, str] | None = None

    def imports(self):
        sys.path.insert(
            0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
        )
        import pyusid_peak_finder  # imports pyUSID, with the NumPy 2 shim (np.product = np.prod)

        self.finder = pyusid_peak_finder.PeakFinder

    def prepare(self, path, tmp):
        if not self.copy:
            return path
        if path not in self.copies:
            self.copies[path] = os.path.join(tmp, f"pyusid_{len(self.copies)}_{os.path.basename(path)}")
            shutil.copyfile(path, self.copies[path])
        return self.copies[path]

    def run(self, kind, func, path, tmp, opts):
        import h5py
        import pyUSID as usid

        from lazyusid.tutorial import peak_amplitude

        cls = self.finder
        if func is not peak_amplitude:
            cls = type("FunctionFinder", (self.finder,), {"_map_function": staticmethod(func)})
        with h5py.File(path, "r+") as f:
            process = cls(
                usid.USIDataset(f[MAIN]), cores=2, verbose=False, max_mem_mb=opts.get("max_mem_mb", 4096)
            )
            group = process.compute()
            self.group = (path, group.name)
            return group["Peak_Response"][:, 0]

    def cleanup(self):
        import h5py

        if self.group is not None and self.copy:
            with h5py.File(self.group[0], "r+") as f:
                del f[self.group[1]]
        self.group = None


class H5pyRead(Adapter):
    """h5py's fastest ``read_direct`` of the whole dataset (16, 32 or 64 MiB blocks): reads only."""

    kinds = ("block",)

    def imports(self):
        import h5py  # noqa: F401

    def run(self, kind, func, path, tmp, opts):
        from .throughput import READ_MIB, h5py_read

        return min(h5py_read(path, True, mib) for mib in READ_MIB)


def make(tool: str) -> Adapter:
    from . import peer_dask

    simple = {
        "serial": Serial,
        "pool": Pool,
        "lazyusid-stored": lambda: Lazyusid(True),
        "lazyusid-lazy": lambda: Lazyusid(False),
        "pyusid": PyUSID,
        "h5py": H5pyRead,
    }
    return simple[tool]() if tool in simple else peer_dask.make(tool)


def serve(tool: str, warm: str, tmp: str, workloads: list[str]) -> None:
    warnings.simplefilter("ignore")
    try:
        adapter = make(tool)
        tic = time.perf_counter()
        adapter.imports()
        imported = time.perf_counter()
        adapter.start()
        started = time.perf_counter()
        for w in workloads:  # untimed: the workers import each function, pools and caches fill
            kind, func = workload_function(w)
            adapter.run(kind, func, adapter.prepare(warm, tmp), tmp, {})
            adapter.cleanup()
        emit(import_s=imported - tic, start_s=started - imported, warm_s=time.perf_counter() - started)
    except ImportError as exc:
        emit(error=f"not installable here: {exc}", missing=True)
        return
    except Exception as exc:
        emit(error=f"failed to start: {type(exc).__name__}: {exc}", trace=traceback.format_exc()[-2000:])
        return
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        try:
            kind, func = workload_function(cmd["workload"])
            path = adapter.prepare(cmd["path"], tmp)
            cpu = cpu_seconds()
            tic = time.perf_counter()
            out = adapter.run(kind, func, path, tmp, cmd)
            seconds = time.perf_counter() - tic
            cpu = cpu_seconds() - cpu
            adapter.cleanup()
            if isinstance(out, float):
                seconds, out = out, None
            else:
                np.save(cmd["out"], out)
            emit(seconds=seconds, cpu_s=cpu, checked=out is not None)
        except Exception as exc:
            emit(error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-2000:])
    adapter.close()


def once(tool: str, workload: str, src: str, out: str) -> None:
    """Fresh-process end to end: imports, pool start, open, compute, write the result (``DONE``)."""
    adapter = PyUSID(copy=False) if tool == "pyusid" else make(tool)
    adapter.imports()
    adapter.start()
    kind, func = workload_function(workload)
    result = adapter.run(kind, func, src, os.path.dirname(out), {})
    np.save(out, result)
    print("DONE", flush=True)
    adapter.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_tools")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("serve")
    p.add_argument("tool")
    p.add_argument("warm")
    p.add_argument("tmp")
    p.add_argument("--workloads", default="A")
    p = sub.add_parser("once")
    for name in ("tool", "workload", "src", "out"):
        p.add_argument(name)
    args = parser.parse_args(argv)
    if args.what == "serve":
        serve(args.tool, args.warm, args.tmp, args.workloads.split(","))
    else:
        once(args.tool, args.workload, args.src, args.out)


if __name__ == "__main__":
    main()
