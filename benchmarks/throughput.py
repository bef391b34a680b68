"""Benchmark 2 (and the second half of 5): a vectorised block function against plain h5py reading.

``abs(block).max(axis=-1)`` mapped with ``vectorized=True`` (threads) over
a large synthetic file, results stored in the source file, against the
same dataset read with plain h5py in large row blocks, both from a warm
page cache, interleaved. h5py is timed two ways (``d[a:b]`` in 64 MiB
blocks, and ``read_direct`` into one reused buffer of 16, 32 or 64 MiB,
the fastest of the three); the faster is the baseline.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

import lazyusid
from lazyusid.core.plan import MAX_BLOCK_INPUT_BYTES

from .common import MAIN, Config, Row, be_file, fmt_ratio, fmt_s, fresh_copy, median_spread, timed, warm
from .functions import abs_max_block

#: block sizes of the h5py baseline (``read_direct`` takes the fastest)
READ_MIB = (16, 32, 64)


def h5py_read(path: str, direct: bool, mib: int = 64) -> float:
    """Seconds to read the whole main dataset in row blocks of ``mib`` MiB."""

    def read():
        with h5py.File(path, "r") as f:
            dset = f[MAIN]
            step = max(1, mib * 2**20 // (dset.shape[1] * dset.dtype.itemsize))
            buf = np.empty((step, dset.shape[1]), dtype=dset.dtype)
            for a in range(0, dset.shape[0], step):
                b = min(a + step, dset.shape[0])
                if direct:
                    dset.read_direct(buf, np.s_[a:b], np.s_[0 : b - a])
                else:
                    dset[a:b]

    return timed(read)[0]


def hand_pipeline(path: str, threads: int = 2) -> float:
    """Seconds for the engine-free equivalent: 2 threads, each reading a row block of at most MAX_BLOCK_INPUT_BYTES (one at a
    time, under a lock) with ``read_direct`` and applying the function; results discarded."""

    def run():
        lock = threading.Lock()
        with h5py.File(path, "r") as f:
            dset = f[MAIN]
            n = dset.shape[0]
            step = max(1, MAX_BLOCK_INPUT_BYTES // (dset.shape[1] * dset.dtype.itemsize))

            def block(a: int) -> np.ndarray:
                b = min(a + step, n)
                with lock:
                    buf = np.empty((b - a, dset.shape[1]), dtype=dset.dtype)
                    dset.read_direct(buf, np.s_[a:b])
                return abs_max_block(buf)

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(block, range(0, n, step)))

    return timed(run)[0]


def lazy_map(path: str, **kwargs) -> tuple[float, int]:
    """Seconds to map the block function into a new results group of ``path``; and the number of blocks."""
    data = lazyusid.open_usid(path)
    seconds, _ = timed(
        lambda: lazyusid.map_spectra(
            data, abs_max_block, vectorized=True, store=path, override=True, progress=False, **kwargs
        )
    )
    return seconds, lazyusid.plan_spectra(data, abs_max_block, vectorized=True, **kwargs).n_blocks


def check(path: str) -> bool:
    """The last stored result equals NumPy on the file's data (read in blocks)."""
    result = lazyusid.map_spectra(
        lazyusid.open_usid(path), abs_max_block, vectorized=True, store=path, progress=False
    )
    got = np.asarray(result.values).reshape(-1)
    with h5py.File(path, "r") as f:
        dset = f[MAIN]
        step = 65536
        return all(
            np.array_equal(got[a : a + step], np.abs(dset[a : a + step]).max(axis=-1))
            for a in range(0, dset.shape[0], step)
        )


def run(cfg: Config, log) -> list[Row]:
    path = fresh_copy(be_file(cfg, cfg.vector_shape), "vector.h5", cfg)  # results go into this copy
    n_y, n_x = cfg.vector_shape
    nbytes = n_y * n_x * 119 * 8
    warm(path)
    lazy_map(path)  # first run: page cache, imports, thread pools
    plain, direct, lazy, ratio, hand, vs_hand = [], [], [], [], [], []
    fastest_mib: dict[int, int] = {}  # block size of the fastest read_direct: how often
    blocks = 0
    for rep in range(cfg.vector_repeats):
        t_plain = h5py_read(path, direct=False)
        by_size = {mib: h5py_read(path, direct=True, mib=mib) for mib in READ_MIB}
        fastest = min(by_size, key=by_size.get)
        fastest_mib[fastest] = fastest_mib.get(fastest, 0) + 1
        t_direct = by_size[fastest]
        t_lazy, blocks = lazy_map(path)
        t_hand = hand_pipeline(path)
        hand.append(t_hand)
        vs_hand.append(t_hand / t_lazy)
        plain.append(t_plain)
        direct.append(t_direct)
        lazy.append(t_lazy)
        ratio.append(min(t_plain, t_direct) / t_lazy)
        log(
            f"  vectorised rep {rep + 1}: h5py d[a:b] {t_plain:.3f} s, read_direct {t_direct:.3f} s, "
            f"lazyusid {t_lazy:.3f} s, by hand {t_hand:.3f} s ({', '.join(f'{k} MiB {v:.3f}' for k, v in by_size.items())})"
        )
    correct = check(path)
    os.remove(path)
    gbs = lambda ts: f"{nbytes / median_spread(ts)[0] / 1e9:.2f} GB/s"  # noqa: E731
    name = f"2 vectorised abs-max {n_y}×{n_x}×119 ({nbytes / 2**30:.2f} GiB)"
    rows = [
        Row(
            name,
            "lazyusid throughput / plain h5py row-block read",
            fmt_ratio(ratio),
            "≥ 80%",
            median_spread(ratio)[0] >= 0.80,
            f"lazyusid {fmt_s(lazy)} = {gbs(lazy)} ({blocks} blocks, results stored); h5py d[a:b] {fmt_s(plain)} = "
            f"{gbs(plain)}; read_direct into one reused buffer {fmt_s(direct)} = {gbs(direct)} (fastest of "
            f"{'/'.join(map(str, READ_MIB))} MiB blocks; fastest size: "
            f"{', '.join(f'{k} MiB {v}×' for k, v in sorted(fastest_mib.items()))}); the faster h5py is the baseline",
        ),
        Row(
            name,
            "lazyusid vs the same work by hand (h5py + NumPy, 2 threads)",
            fmt_ratio(vs_hand),
            detail=f"by hand {fmt_s(hand)} = {gbs(hand)}: {MAX_BLOCK_INPUT_BYTES // 2**20} MiB row blocks read one at a time with read_direct, "
            "the function on 2 threads, nothing stored (lazyusid maps contiguous datasets instead of copying "
            "them, and stores its results)",
        ),
        Row(name, "stored results equal NumPy", "yes" if correct else "NO", "equal", correct),
    ]

    return rows + scaling(cfg, log)


def scaling(cfg: Config, log) -> list[Row]:
    """5: lazyusid's time at 1×, 4×, 16× the positions (best of 3); fixed cost per call and cost per block."""
    rows = []
    sizes, times = [], []
    for shape in cfg.vector_scaling:
        p = fresh_copy(be_file(cfg, shape), "vector_scaling.h5", cfg)
        warm(p)
        lazy_map(p)
        t, b = min((lazy_map(p) for _ in range(3)), key=lambda x: x[0])
        r = min(min(h5py_read(p, True, mib) for mib in READ_MIB) for _ in range(3))
        size = shape[0] * shape[1]
        sizes.append(size)
        times.append(t)
        rows.append(
            Row(
                "5 scaling: vectorised",
                f"{size // sizes[0]}× ({size} positions)",
                f"{t:.3g} s",
                detail=f"{size * 952 / t / 1e9:.2f} GB/s ({100 * r / t:.0f}% of h5py); {b} blocks (best of 3)",
            )
        )
        log(f"  vectorised scaling {size}: {t:.3f} s, {b} blocks")
    ppb = lazyusid.plan_spectra(lazyusid.open_usid(p), abs_max_block, vectorized=True).positions_per_block
    t_many, many = min(
        (lazy_map(p, positions_per_block=max(1, ppb // 4)) for _ in range(3)), key=lambda x: x[0]
    )
    per_block = (t_many - times[-1]) / (many - b)
    os.remove(p)
    fit_a, fit_b = np.polyfit(sizes, times, 1)[::-1]
    linear = (times[-1] / times[0]) / (sizes[-1] / sizes[0])
    rows.append(
        Row(
            "5 scaling: vectorised",
            f"time({sizes[-1] // sizes[0]}×) / ({sizes[-1] // sizes[0]} × time(1×))",
            f"{linear:.2f}",
            detail=f"linear fit t = {1e3 * fit_a:.0f} ms + {1e9 * fit_b:.0f} ns × positions (1.00 = linear); one more "
            f"block costs {1e3 * per_block:+.2f} ms ({b} → {many} blocks: {times[-1]:.3f} → {t_many:.3f} s)",
        )
    )
    return rows
