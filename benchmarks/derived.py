"""Benchmark 7: derived inputs (``data * 1``, ``data.isel(...)``) mapped and stored, against ``da.store``.

lazyusid: ``map_spectra(derived, f, vectorized=True, store=<fresh file>.h5)``
with ``f = abs(block).max(axis=-1)``. The reference does the same work with
dask alone: the same derivation of ``lazyusid.open_usid(path).data``,
reshaped to (positions, spectral points), rechunked to the block size of
lazyusid's plan (``plan_spectra(...).positions_per_block``),
``map_blocks(f)`` and ``da.store`` into a dataset of the same shape, dtype
and chunks as lazyusid's, in a fresh HDF5 file; both on threads, from a
warm page cache, repeats interleaved.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import dask.array as da
import h5py
import numpy as np

import lazyusid

from .common import SPECTRUM_BYTES, Config, Row, be_file, fmt_ratio, fmt_s, median_spread, timed, warm
from .functions import abs_max_block

#: (label, derivation of the xarray data, the same derivation of its dask array (Y, X, spectral))
DERIVATIONS: tuple[tuple[str, Callable, Callable], ...] = (
    ("data * 1", lambda d: d * 1, lambda a: a * 1),
    ("data.isel(X=slice(1, None))", lambda d: d.isel(X=slice(1, None)), lambda a: a[:, 1:]),
)


def stored_dataset(result) -> tuple[str, str]:
    """(file, dataset path) of the values a stored lazyusid result reads."""
    target, group = result.attrs["usid_store"].rsplit(":", 1)
    return target, f"{group.rstrip('/')}/{result.name}"


def lazy_store(data, out: str, ppb: int):
    """Seconds to map and store ``data`` into a fresh ``out``; and the result."""
    if os.path.exists(out):
        os.remove(out)
    return timed(
        lambda: lazyusid.map_spectra(
            data, abs_max_block, vectorized=True, store=out, positions_per_block=ppb, progress=False
        )
    )


def dask_store(arr: da.Array, out: str, ppb: int, like: tuple) -> float:
    """Seconds for ``da.store(flat.map_blocks(f), dataset)`` into a fresh ``out``.

    ``arr`` is the derived (Y, X, spectral) dask array; ``like`` is (shape,
    dtype, chunks) of lazyusid's stored dataset.
    """
    shape, dtype, chunks = like
    if os.path.exists(out):
        os.remove(out)

    def store():
        flat = arr.reshape(-1, arr.shape[-1]).rechunk((ppb, arr.shape[-1]))
        values = flat.map_blocks(
            lambda b: abs_max_block(b).astype(dtype, copy=False).reshape(-1, *shape[1:]),
            chunks=(flat.chunks[0], *shape[1:]),
            dtype=dtype,
        )
        with h5py.File(out, "w") as f:
            dset = f.create_dataset("values", shape=shape, dtype=dtype, chunks=chunks)
            da.store(values, dset, lock=True, scheduler="threads")

    return timed(store)[0]


def run(cfg: Config, log) -> list[Row]:
    src = be_file(cfg, cfg.derived_shape)
    n_y, n_x = cfg.derived_shape
    nbytes = n_y * n_x * SPECTRUM_BYTES
    warm(src)
    out_lazy = os.path.join(cfg.workdir, "derived_lazy.h5")
    out_dask = os.path.join(cfg.workdir, "derived_dask.h5")
    cases = []
    for label, derive, derive_dask in DERIVATIONS:
        data = derive(lazyusid.open_usid(src))
        ppb = lazyusid.plan_spectra(data, abs_max_block, vectorized=True).positions_per_block
        _, result = lazy_store(data, out_lazy, ppb)  # first run: imports, thread pools; the dataset to mirror
        path, name = stored_dataset(result)
        with h5py.File(path, "r") as f:
            like = (f[name].shape, f[name].dtype, f[name].chunks)
        cases.append(dict(label=label, derive=derive, derive_dask=derive_dask, ppb=ppb, like=like))
        for key in ("lazy", "dask", "ratio"):
            cases[-1][key] = []
        cases[-1]["equal"] = True

    for rep in range(cfg.derived_repeats):
        for case in cases:  # interleaved: every contender once per repeat
            data = case["derive"](lazyusid.open_usid(src))  # opened anew, as the reference's input
            t_lazy, result = lazy_store(data, out_lazy, case["ppb"])
            got = np.asarray(result.values).reshape(case["like"][0])
            t_dask = dask_store(
                case["derive_dask"](lazyusid.open_usid(src).data), out_dask, case["ppb"], case["like"]
            )
            with h5py.File(out_dask, "r") as f:
                case["equal"] &= bool(np.array_equal(got, f["values"][()]))
            case["lazy"].append(t_lazy)
            case["dask"].append(t_dask)
            case["ratio"].append(t_lazy / t_dask)
            log(f"  derived rep {rep + 1}, {case['label']}: lazyusid {t_lazy:.3f} s, da.store {t_dask:.3f} s")
    for out in (out_lazy, out_dask):
        if os.path.exists(out):
            os.remove(out)

    name = f"7 derived input stored, abs-max {n_y}×{n_x}×119 ({nbytes / 2**20:.0f} MiB)"
    rows = []
    for case in cases:
        shape, dtype, chunks = case["like"]
        rows.append(
            Row(
                name,
                f"`{case['label']}` stored / da.store(map_blocks(f)) of the same blocks",
                fmt_ratio(case["ratio"]),
                "≤ 1.5×",
                median_spread(case["ratio"])[0] <= 1.5,
                f"lazyusid map_spectra(vectorized=True, store=fresh.h5) {fmt_s(case['lazy'])}; da.store "
                f"{fmt_s(case['dask'])} ({case['ppb']} positions per block, dataset {shape} {dtype} chunks {chunks}, "
                "threads); stored values equal: " + str(case["equal"]),
            )
        )
    equal = all(c["equal"] for c in cases)
    rows.append(Row(name, "stored results equal da.store's", "yes" if equal else "NO", "equal", equal))
    return rows
