"""Benchmark 4: what checkpoints cost, returning a stored result, and resuming half a run.

- *Markers and flushes*: the same vectorised computation into the source
  file, with lazyusid's HDF5 sink (data, flush, flags + ``last_pixel``,
  flush per block) and with :class:`NoCheckpointSink`, a benchmark-only
  subclass whose ``write`` stores the data only. Interleaved repeats.
- *Already complete*: a file holding 50 results groups of the same tool;
  time of ``map_spectra`` returning one of them (nothing computed).
- *Resume*: a complete run, then its group made half-done (flags and
  ``last_pixel`` cleared for the second half, data overwritten with NaN),
  then ``map_spectra`` again: positions computed and time against a whole run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics

import h5py
import numpy as np

import lazyusid
import lazyusid.sinks as sinks
from lazyusid.sinks.hdf5 import HDF5Sink

from . import counter
from .common import MAIN, Config, Row, be_file, fmt_ratio, fmt_s, fresh_copy, median_spread, timed, warm
from .functions import abs_max_block, counted_abs_max_block, scaled_abs_max_block


class NoCheckpointSink(HDF5Sink):
    """HDF5 results without checkpoints: data only, no flushes, no flags, no ``last_pixel``."""

    def write(self, r0: int, r1: int, outs) -> None:
        for dset, arr in zip(self._dsets, outs):
            dset[r0:r1] = np.asarray(arr).reshape(r1 - r0, -1)


@contextlib.contextmanager
def without_checkpoints():
    """Make ``map_spectra`` write through :class:`NoCheckpointSink` (benchmark only)."""
    original = sinks._open_sink

    def patched(*args, **kwargs):
        sink = original(*args, **kwargs)
        if type(sink) is HDF5Sink:
            sink.__class__ = NoCheckpointSink
        return sink

    sinks._open_sink = patched
    try:
        yield
    finally:
        sinks._open_sink = original


def overhead(cfg: Config, log) -> list[Row]:
    path = fresh_copy(be_file(cfg, cfg.checkpoint_shape), "checkpoint.h5", cfg)
    warm(path)
    data = lazyusid.open_usid(path)

    def once(checkpoints: bool) -> float:
        ctx = contextlib.nullcontext() if checkpoints else without_checkpoints()
        with ctx:
            return timed(
                lambda: lazyusid.map_spectra(
                    data, abs_max_block, vectorized=True, store=path, override=True, progress=False
                )
            )[0]

    once(True)
    once(False)
    with_cp, without_cp, ratio = [], [], []
    for rep in range(cfg.checkpoint_repeats):
        a, b = (once(True), once(False)) if rep % 2 == 0 else (once(False), once(True))[::-1]
        with_cp.append(a)
        without_cp.append(b)
        ratio.append(a / b)
    blocks = lazyusid.plan_spectra(data, abs_max_block, vectorized=True).n_blocks
    log(f"  checkpoints: with {fmt_s(with_cp)}, without {fmt_s(without_cp)}")
    over = median_spread(ratio)[0] - 1
    os.remove(path)
    return [
        Row(
            "4 checkpoint cost",
            f"markers + flushes vs none ({cfg.checkpoint_shape[0]}×{cfg.checkpoint_shape[1]}, {blocks} blocks)",
            f"{100 * over:+.1f}% ({fmt_ratio(ratio)})",
            "≤ 5%",
            over <= 0.05,
            f"with {fmt_s(with_cp)}; without (NoCheckpointSink) {fmt_s(without_cp)}; "
            f"{1e3 * (median_spread(with_cp)[0] - median_spread(without_cp)[0]) / blocks:+.2f} ms per block; "
            "vectorised abs-max, interleaved, order alternating",
        )
    ]


def complete(cfg: Config, log) -> list[Row]:
    path = fresh_copy(be_file(cfg, cfg.groups_shape), "groups.h5", cfg)
    data = lazyusid.open_usid(path)
    for i in range(cfg.n_groups):
        lazyusid.map_spectra(
            data,
            scaled_abs_max_block,
            vectorized=True,
            params={"scale": float(i)},
            store=path,
            progress=False,
        )
    with h5py.File(path, "r") as f:
        n_groups = sum(1 for k in f[os.path.dirname(MAIN)] if "-scaled_abs_max_block_" in k)
    target = {"scale": float(cfg.n_groups // 2)}
    times = []
    counter.reset()
    for _ in range(21):
        t, result = timed(
            lambda: lazyusid.map_spectra(
                data, scaled_abs_max_block, vectorized=True, params=target, store=path, progress=False
            )
        )
        times.append(t)
    computed = counter.positions - 21  # each call runs the function once on one spectrum to infer its outputs
    ok = np.allclose(np.asarray(result.values), np.abs(data.values).max(axis=-1) * target["scale"])
    os.remove(path)
    med = statistics.median(times)
    log(f"  complete result: {fmt_s(times)}")
    return [
        Row(
            "4 checkpoint cost",
            f"return a complete result ({n_groups} results groups in the file)",
            f"{1e3 * med:.1f} ms ({1e3 * min(times):.1f}–{1e3 * max(times):.1f}, n=21)",
            "≤ 100 ms",
            med <= 0.1 and computed == 0 and ok,
            f"map_spectra on already-open data; positions computed: {computed} (besides one spectrum per call to "
            f"infer the outputs); values right: {ok}",
        )
    ]


def resume(cfg: Config, log) -> list[Row]:
    src = be_file(cfg, cfg.checkpoint_shape)
    path = fresh_copy(src, "resume.h5", cfg)
    warm(path)
    data = lazyusid.open_usid(path)
    n = data.sizes["Y"] * data.sizes["X"]
    half = n // 2

    def run_once():
        counter.reset()
        data = lazyusid.open_usid(path)  # not timed, as for the resumed run
        return timed(
            lambda: lazyusid.map_spectra(
                data, counted_abs_max_block, vectorized=True, store=path, override=True, progress=False
            )
        )

    run_once()  # warm-up
    full_t, resumed_t, computed, correct = [], [], [], True
    for _ in range(3):
        t_full, result = run_once()
        name = result.attrs["usid_store"].rsplit(":", 1)[-1]
        with h5py.File(path, "r+") as f:
            grp = f[name]
            expected = grp["counted_abs_max_block"][()]
            grp["completed_positions"][half:] = 0
            grp["counted_abs_max_block"][half:] = np.nan
            grp.attrs["last_pixel"] = half
        counter.reset()
        reopened = lazyusid.open_usid(path)  # as a new session would, after a crash; not timed
        t_resume, again = timed(
            functools.partial(
                lazyusid.map_spectra,
                reopened,
                counted_abs_max_block,
                vectorized=True,
                store=path,
                progress=False,
            )
        )
        computed.append(counter.positions - 1)  # one spectrum to infer the outputs
        correct &= again.attrs["usid_store"] == result.attrs["usid_store"] and np.array_equal(
            np.asarray(again.values).reshape(expected.shape), expected
        )
        full_t.append(t_full)
        resumed_t.append(t_resume)
    os.remove(path)
    ratio = [r / f for r, f in zip(resumed_t, full_t)]
    med = median_spread(ratio)[0]
    log(f"  resume: full {fmt_s(full_t)}, resumed {fmt_s(resumed_t)}, computed {computed}")
    only_missing = all(c == n - half for c in computed)
    return [
        Row(
            "4 checkpoint cost",
            "resume a half-done run: time / whole run",
            fmt_ratio(ratio),
            "computes only the missing half; time ≈ 0.5",
            only_missing and correct and 0.35 <= med <= 0.65,
            f"positions computed {sorted(set(computed))} of {n} (missing {n - half}); same group, values equal to "
            f"the whole run: {correct}; whole {fmt_s(full_t)}, resumed {fmt_s(resumed_t)}",
        )
    ]


def run(cfg: Config, log) -> list[Row]:
    return overhead(cfg, log) + complete(cfg, log) + resume(cfg, log)
