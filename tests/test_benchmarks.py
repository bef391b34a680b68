"""Smoke versions of the benchmark suite (``python -m benchmarks``): each runs, and its results are right.

Timings are not asserted (tiny files, shared machines); the rows that check
results (identical to pyUSID, equal to NumPy, only the missing half
computed) must pass, and every benchmark must produce its rows.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pyUSID")
psutil = pytest.importorskip("psutil")

from benchmarks import checkpoint, cluster, derived, memory, peaks, throughput  # noqa: E402
from benchmarks.common import cpu_seconds, tiny_config  # noqa: E402
from benchmarks.run import table, text_table, write_markdown  # noqa: E402


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return tiny_config(str(tmp_path_factory.mktemp("bench")))


def _rows(run, cfg):
    log: list[str] = []
    rows = run(cfg, log.append)
    assert rows and log
    return {r.measure: r for r in rows}


@pytest.mark.long
def test_peak_finder_matches_pyusid_and_serial(cfg):
    rows = _rows(peaks.run, cfg)
    assert rows["results identical to pyUSID"].passed
    assert "results equal: True" in rows["lazyusid (2 processes) vs serial loop"].detail
    assert any(m.startswith("lazyusid vs pyUSID, each in a fresh process") for m in rows)
    assert any(m.startswith("16×") for m in rows)  # the scaling curve


def test_vectorised_results_equal_numpy(cfg):
    rows = _rows(throughput.run, cfg)
    assert rows["stored results equal NumPy"].passed
    assert "lazyusid throughput / plain h5py row-block read" in rows


@pytest.mark.long
def test_memory_is_sampled_over_the_process_tree(cfg):
    rows = list(_rows(memory.run, cfg).values())
    assert len(rows) == 3  # threads; worker processes on a contiguous source; on a chunked one
    for row in rows:
        assert "baseline" in row.detail and row.passed is not None


def test_checkpoint_cost_complete_and_resume(cfg):
    rows = _rows(checkpoint.run, cfg)
    complete = next(r for m, r in rows.items() if m.startswith("return a complete result"))
    assert "positions computed: 0 " in complete.detail and "values right: True" in complete.detail
    resume = rows["resume a half-done run: time / whole run"]
    assert "values equal to the whole run: True" in resume.detail
    n = cfg.checkpoint_shape[0] * cfg.checkpoint_shape[1]
    assert f"positions computed [{n - n // 2}] of {n}" in resume.detail


def test_no_checkpoint_sink_writes_data_only(cfg, tmp_path):
    import h5py

    import lazyusid
    from benchmarks.common import be_file, fresh_copy
    from benchmarks.functions import abs_max_block

    path = fresh_copy(be_file(cfg, (8, 8)), "nocp.h5", cfg)
    with checkpoint.without_checkpoints():
        result = lazyusid.map_spectra(
            lazyusid.open_usid(path),
            abs_max_block,
            vectorized=True,
            store=path,
            override=True,
            progress=False,
        )
    with h5py.File(path, "r") as f:
        data = f["/Measurement_000/Channel_000/Raw_Data"][()]
        group = f[result.attrs["usid_store"].rsplit(":", 1)[-1]]
        assert not group["completed_positions"][()].any() and group.attrs["last_pixel"] == 0
    np.testing.assert_array_equal(np.asarray(result.values).ravel(), np.abs(data).max(axis=-1))


def test_report_is_written(cfg, tmp_path):
    from benchmarks.common import Row

    rows = [Row("1 x", "ratio", "2.00×", "≥ 1.8×", True, "detail"), Row("5 y", "1×", "1 s")]
    out = tmp_path / "benchmarks.md"
    write_markdown(str(out), cfg, rows, "python -m benchmarks --quick", "today", 60.0, ["1.0", "1.0"])
    text = out.read_text()
    assert "**PASS**" in text and "python -m benchmarks --quick" in text and "Versions:" in text
    assert "[PASS]" in text_table(rows) and table(rows).count("\n") == 4


def test_report_counts_the_missed_targets_apart_from_benchmark_numbers(cfg, tmp_path):
    from benchmarks.common import Row

    rows = [Row("1 x", "ratio", "2.00×", "≥ 1.8×", True), Row("2 y", "share", "0.20×", "≥ 80%", False)]
    out = tmp_path / "benchmarks.md"
    write_markdown(str(out), cfg, rows, "python -m benchmarks --quick", "today", 60.0, ["1.0", "1.0"])
    summary = [line for line in out.read_text().splitlines() if line.startswith("Targets missed")]
    assert summary == ["Targets missed (1): benchmark 2 y — share (0.20×, target ≥ 80%)."]


def test_blocks_are_read_directly_from_an_untouched_source(tmp_path):
    """Benchmarks 2 and 3 rely on it: an open_usid array is read a block of rows at a time, not by dask chunks."""
    import lazyusid
    from lazyusid.compute import prepare_map
    from lazyusid.datasets import make_beps

    path = tmp_path / "beps.h5"
    make_beps(path, n_x=5, n_y=3, n_dc=4, n_freq=16)
    data = lazyusid.open_usid(path)

    def peak(s):
        return np.abs(s).max()

    smap = prepare_map(data, peak, core_dims="Frequency", positions_per_block=7, cores=1)
    assert smap.reader is not None and smap.reader.n_extra == 4  # 4 DC steps per file row
    assert smap.reader.rows.how == "mapped"  # a contiguous source: what worker processes map themselves
    block = smap.reader.for_positions(5, 12).read(5, 12)  # starts and ends inside rows
    np.testing.assert_array_equal(block, np.asarray(data.values).reshape(-1, 16)[5:12])
    assert prepare_map(data.isel(X=slice(1, 4)), peak, core_dims="Frequency", cores=1).reader is None
    assert prepare_map(data * 2, peak, core_dims="Frequency", cores=1).reader is None
    stored = lazyusid.map_spectra(
        data, peak, core_dims="Frequency", positions_per_block=7, cores=1, store=path, progress=False
    )
    np.testing.assert_array_equal(stored.values, np.abs(data.values).max(axis=-1))


def test_loopback_counter_sees_bytes_sent_between_local_sockets():
    """Benchmark 6 measures relayed input with it: 4 MiB sent over 127.0.0.1 show up on `lo`."""
    import socket
    import threading

    from benchmarks.common import loopback_rx_bytes

    payload = b"x" * (4 * 2**20)
    with socket.create_server(("127.0.0.1", 0)) as server:
        before = loopback_rx_bytes()

        def send():
            with socket.create_connection(server.getsockname()) as conn:
                conn.sendall(payload)

        sender = threading.Thread(target=send)
        sender.start()
        received = 0
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(2**20):
                received += len(chunk)
        sender.join()
        moved = loopback_rx_bytes() - before
    assert received == len(payload)
    assert moved >= len(payload)


@pytest.mark.long
def test_command_line_cluster_has_two_single_threaded_workers_and_stops_them(tmp_path):
    with cluster.CommandLineCluster(str(tmp_path / "cluster")) as c:
        procs = list(c.procs)
        nthreads = c.client.nthreads()
        assert sorted(nthreads.values()) == [1, 1]
        # the workers import this checkout's benchmarks package (PYTHONPATH)
        import benchmarks

        where = c.client.submit(lambda: __import__("benchmarks.functions").__file__, pure=False).result()
        assert where == benchmarks.__file__
        pids = c.client.run(os.getpid)
    assert len(procs) == 3 and all(p.poll() is not None for p in procs)  # scheduler + 2 workers, all gone
    assert all(
        not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        for pid in pids.values()
    )


@pytest.mark.long
def test_user_cluster_stored_run_is_right_and_measured(cfg):
    rows = _rows(cluster.run, cfg)
    assert rows["results equal (both runs; a serial loop on sampled positions)"].passed
    moved = rows["bytes moved between processes during the stored run / input bytes"]
    assert moved.value.endswith(")") and "%" in moved.value and moved.passed is not None
    assert rows["time on the user's cluster / lazyusid's local pool (cores=2)"].passed is not None


def test_derived_inputs_stored_equal_da_store(cfg):
    rows = _rows(derived.run, cfg)
    assert rows["stored results equal da.store's"].passed
    for label in ("data * 1", "data.isel(X=slice(1, None))"):
        row = rows[f"`{label}` stored / da.store(map_blocks(f)) of the same blocks"]
        assert row.passed is not None and "stored values equal: True" in row.detail


@pytest.mark.long
def test_startup_rows_are_measured(cfg):
    from benchmarks import startup

    rows = _rows(startup.run, cfg)
    for measure in (
        "small job stored: lazyusid − serial loop (ms)",
        "cores=2 / cores=1 on the small job",
        "fresh process end to end, peak finder, cores=2 / cores=1",
    ):
        assert rows[measure].passed is not None and rows[measure].value


def test_cpu_seconds_counts_a_child_that_exited_meanwhile():
    """What a per-call worker used is counted once it has exited (pyUSID's workers, a restarted worker)."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    before = cpu_seconds()
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert cpu_seconds() - before >= 0.5
