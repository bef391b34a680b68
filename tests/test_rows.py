"""Row readers (lazyusid.io.rows): mapped, decoded from raw chunks, or h5py: same values as h5py, file never changed."""

from __future__ import annotations

import hashlib
import os

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazyusid
from lazyusid import Dimension
from lazyusid.io.rows import row_reader

SHAPE = (37, 11)


def _file(path, data, **kwargs) -> str:
    with h5py.File(path, "w", **{k: v for k, v in kwargs.items() if k == "userblock_size"}) as f:
        f.create_dataset("x", data=data, **{k: v for k, v in kwargs.items() if k != "userblock_size"})
    return str(path)


def sha256(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.mark.parametrize("dtype", ["f4", "f8", "c8", "c16", "i2", "u8"])
@pytest.mark.parametrize("userblock", [0, 1024])
def test_mapped_rows_equal_h5py(tmp_path, dtype, userblock):
    data = (np.random.default_rng(0).normal(size=SHAPE) * 100).astype(dtype)
    if np.dtype(dtype).kind == "c":
        data = data + 1j * data[::-1]
    path = _file(tmp_path / "a.h5", data, userblock_size=userblock)
    with h5py.File(path, "r") as f:
        rows = row_reader(f["x"])
        assert rows.how == "mapped"
        for r0, r1 in [(0, 1), (0, 37), (5, 19), (36, 37), (3, 3)]:
            block = rows(r0, r1)
            assert block.dtype == data.dtype and block.flags.writeable
            np.testing.assert_array_equal(block, data[r0:r1])


@given(st.integers(0, SHAPE[0]), st.integers(0, SHAPE[0]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_run_of_rows(tmp_path, a, b):
    a, b = min(a, b), max(a, b)
    data = np.arange(np.prod(SHAPE), dtype="f4").reshape(SHAPE)
    path = _file(tmp_path / "h.h5", data)
    with h5py.File(path, "a") as f:
        f.create_dataset("c", data=data, chunks=(4, 5), compression="gzip", shuffle=True, fletcher32=True)
    with h5py.File(path, "r") as f:
        rows = row_reader(f["x"])
        np.testing.assert_array_equal(rows(a, b), data[a:b])
        chunked = row_reader(f["c"])
        assert chunked.how == "chunks"
        np.testing.assert_array_equal(chunked.for_rows(a, b)(a, b), data[a:b])


@pytest.mark.parametrize(
    "kwargs, dtype, how",
    [
        ({"chunks": (4, 11)}, "f4", "chunks"),  # chunked: bytes are not one run; decoded from raw chunks
        ({"chunks": (4, 11), "compression": "gzip"}, "f4", "chunks"),
        ({"chunks": (5, 3), "compression": "gzip", "shuffle": True, "fletcher32": True}, "c8", "chunks"),
        ({"chunks": (4, 11), "compression": "lzf"}, "f4", "h5py"),  # a filter h5py registers: not outside
        ({}, ">f4", "h5py"),  # big-endian on disk: not the native bytes
    ],
)
def test_readers_equal_h5py(tmp_path, kwargs, dtype, how):
    data = np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(dtype)
    path = _file(tmp_path / "b.h5", data, **kwargs)
    with h5py.File(path, "r") as f:
        rows = row_reader(f["x"])
        assert rows.how == how
        for r0, r1 in [(0, 1), (0, 37), (5, 19), (36, 37), (3, 3)]:
            block = rows.for_rows(r0, r1)(r0, r1)
            assert block.dtype == f["x"].dtype
            np.testing.assert_array_equal(block, data[r0:r1])


def test_chunks_never_written_read_as_the_fill_value(tmp_path):
    path = tmp_path / "u.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", shape=SHAPE, dtype="f8", chunks=(5, 11), fillvalue=-7.5)
        d[10:20] = 1.0
    with h5py.File(path, "r") as f:
        rows = row_reader(f["x"])
        assert rows.how == "chunks"
        np.testing.assert_array_equal(rows(0, 37), f["x"][:])


def test_changed_file_falls_back_to_h5py(tmp_path):
    """Byte addresses are trusted only while the file is unchanged: a rewritten file is read through HDF5."""
    path = _file(tmp_path / "s.h5", np.zeros(SHAPE, "f4"))
    with h5py.File(path, "r") as f:
        rows = row_reader(f["x"])
    os.remove(path)
    with h5py.File(path, "w") as f:  # same path, another file: the dataset is elsewhere
        f.attrs["pad"] = np.zeros(5000)
        f.create_dataset("x", data=np.ones(SHAPE, "f4"))
    np.testing.assert_array_equal(rows(0, 37), np.ones(SHAPE, "f4"))


_READ_IN_CHILD = """
import pickle, sys
readers = pickle.load(open(sys.argv[1], "rb"))
print(sum(float(r(0, r.n_rows).sum()) for r in readers))
"""


def test_lock_free_readers_read_while_another_process_writes_the_file(tmp_path):
    """What lets worker processes read a source file whose results the client writes into it."""
    import pickle
    import subprocess
    import sys

    data = np.arange(np.prod(SHAPE), dtype="f4").reshape(SHAPE)
    path = _file(tmp_path / "w.h5", data)
    with h5py.File(path, "a") as f:
        f.create_dataset("c", data=data, chunks=(4, 5), compression="gzip")
    with h5py.File(path, "r+") as writer:  # holds HDF5's file lock
        readers = [row_reader(writer["x"], strict=False), row_reader(writer["c"], strict=False)]
        assert [r.how for r in readers] == ["mapped", "chunks"]
        writer.create_group("results").create_dataset("v", data=np.ones(1000))
        writer.flush()
        pickle.dump(readers, open(tmp_path / "r.pkl", "wb"))
        child = subprocess.run(
            [sys.executable, "-c", _READ_IN_CHILD, str(tmp_path / "r.pkl")], capture_output=True, text=True
        )
        assert child.returncode == 0, child.stderr
        assert float(child.stdout) == 2 * float(data.sum())
        locked = subprocess.run(
            [sys.executable, "-c", f"import h5py; h5py.File({path!r}, 'r')"], capture_output=True, text=True
        )
        assert locked.returncode != 0 and "lock" in locked.stderr  # h5py itself is refused


def test_unallocated_dataset_not_mapped(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=SHAPE, dtype="f4")
    with h5py.File(path, "r") as f:
        rows = row_reader(f["x"])
        assert rows.how == "h5py"


def _usid(write_usid, **kwargs):
    return write_usid(
        [Dimension("Y", "m", 6), Dimension("X", "m", 7)], [Dimension("Frequency", "Hz", 9)], **kwargs
    )


def _zero_in_place(block):
    """A function that overwrites its input (allowed: blocks are the function's own)."""
    peak = np.abs(block).max(axis=-1)
    block[...] = 0
    return peak


@pytest.mark.parametrize("chunks", [None, (5, 9)])
def test_functions_may_change_their_block_but_never_the_file(write_usid, tmp_path, chunks):
    written = _usid(write_usid, chunks=chunks)
    with h5py.File(written.path, "r") as f:
        rows = row_reader(f[written.dataset])
        assert rows.how == ("mapped" if chunks is None else "chunks")  # both ways of reading are exercised
    out = tmp_path / "results.h5"
    before = sha256(written.path)
    data = lazyusid.open_usid(written.path)
    result = lazyusid.map_spectra(data, _zero_in_place, vectorized=True, store=out, progress=False)
    np.testing.assert_array_equal(result.values, np.abs(written.data).max(axis=-1))
    assert sha256(written.path) == before
    np.testing.assert_array_equal(lazyusid.open_usid(written.path).values, written.data)


@pytest.mark.parametrize("chunks", [None, (5, 9)])
def test_stored_result_same_for_mapped_and_chunked_sources(write_usid, chunks):
    written = _usid(write_usid, chunks=chunks, dtype="c8")
    data = lazyusid.open_usid(written.path)
    result = lazyusid.map_spectra(
        data, lambda b: np.abs(b).max(axis=-1), vectorized=True, store=written.path, progress=False
    )
    expected = np.array([[np.abs(s).max() for s in row] for row in written.data])
    np.testing.assert_array_equal(result.values, expected)


def _read_from_the_file(spectrum, parent: int) -> float:
    """1.0 when a worker process (not ``parent``) got the spectrum as a view of a memory map of the file.

    Slow enough (50 ms) that lazyusid runs it in worker processes.
    """
    import mmap
    import os
    import time

    time.sleep(0.05)
    if os.getpid() == parent:
        return -1.0
    base = spectrum
    while getattr(base, "base", None) is not None:
        base = base.base
    return float(isinstance(getattr(base, "obj", base), mmap.mmap))


@pytest.mark.parametrize("chunks, mapped", [(None, 1.0), ((5, 9), 0.0)])
def test_worker_processes_map_their_own_blocks(write_usid, tmp_path, chunks, mapped):
    """Contiguous source: lazyusid's worker processes receive (file, offset), never the block itself."""
    written = _usid(write_usid, chunks=chunks)
    data = lazyusid.open_usid(written.path)
    lazyusid.run.schedulers.shared_client(2)  # the pool is up: no start-up left to weigh against the work
    got = lazyusid.map_spectra(
        data,
        _read_from_the_file,
        params={"parent": os.getpid()},
        cores=2,
        store=tmp_path / "r.h5",
        positions_per_block=7,
        progress=False,
    )
    np.testing.assert_array_equal(got.values, np.full((6, 7), mapped))
    peaks = lazyusid.map_spectra(
        data, lambda s: float(np.abs(s).max()), cores=2, store=tmp_path / "p.h5", progress=False
    )
    np.testing.assert_array_equal(peaks.values, np.abs(written.data).max(axis=-1))


def test_readers_pickle(tmp_path):
    import pickle

    data = np.arange(np.prod(SHAPE), dtype="c8").reshape(SHAPE)
    path = _file(tmp_path / "p.h5", data)
    with h5py.File(path, "r") as f:
        rows = row_reader(f["x"])
    again = pickle.loads(pickle.dumps(rows))
    np.testing.assert_array_equal(again(4, 9), data[4:9])


def _slow_peak(spectrum) -> float:
    import time

    time.sleep(0.05)  # slow enough for worker processes
    return float(np.abs(spectrum).max())


@pytest.mark.parametrize("chunks", [None, (6, 8192)])
@pytest.mark.parametrize("in_file", [False, True])
def test_large_blocks_reach_worker_processes_intact(write_usid, tmp_path, chunks, in_file):
    """Large blocks are read by the worker itself: mapped (contiguous) or decoded from raw chunks."""
    written = write_usid(
        [Dimension("Y", "m", 6), Dimension("X", "m", 7)], [Dimension("Frequency", "Hz", 8192)], chunks=chunks
    )
    got = lazyusid.map_spectra(
        lazyusid.open_usid(written.path),
        _slow_peak,
        cores=2,
        store=written.path if in_file else tmp_path / "r.h5",
        positions_per_block=21,
        progress=False,
    )
    np.testing.assert_array_equal(got.values, np.abs(written.data).max(axis=-1))
