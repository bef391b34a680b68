"""Smoke version of the peers benchmark (``python -m benchmarks --only peers``): tiny files, every installed tool.

Each tool runs in its own process as in the benchmark; its results must equal
the serial loop's. Timings are not asserted. Tools that are not installed
(CI installs the ``test`` extra; LiberTEM and HyperSpy are in ``bench``) skip
here and appear in the benchmark as "not installable" rows.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("psutil")

from benchmarks import peer_tools, peers
from benchmarks.common import be_file, tiny_config
from benchmarks.peer_process import ToolProcess

#: every tool in its own process, 4 workloads: ~1 minute; in the second test command (pytest -m long)
pytestmark = pytest.mark.long

#: the package each peer needs beyond lazyusid's own dependencies
NEEDS = {
    "pyusid": "pyUSID",
    "libertem": "libertem",
    "hyperspy-threads": "hyperspy",
    "hyperspy-cluster": "hyperspy",
}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    cfg = tiny_config(str(tmp_path_factory.mktemp("peers")))
    log: list[str] = []
    return peers.run(cfg, log.append), log


@pytest.mark.parametrize("tool", list(peers.LABELS))
def test_every_installed_tool_gives_the_serial_loops_results(rows, tool):
    if tool in NEEDS:
        pytest.importorskip(NEEDS[tool])
    rows, _ = rows
    label = peers.LABELS[tool]
    mine = [r for r in rows if r.measure == label and r.benchmark.startswith("peers ")]
    assert mine, f"no rows for {label}"
    ran = [r for r in mine if "result " in r.detail]
    assert ran, f"{label} did not run: {[r.value for r in mine]}"
    if tool != "h5py":  # it only reads
        assert all(("result exact" in r.detail or "result close" in r.detail) for r in ran), [
            r.detail for r in ran
        ]


def test_results_rows_pass_and_every_target_has_a_row(rows):
    rows, log = rows
    assert log
    checks = [r for r in rows if r.measure == "results equal to the serial loop's"]
    assert len(checks) == 5 and all(r.passed for r in checks)  # A, B, C, D, A in fresh processes
    for key, targets in peers.TARGETS.items():
        for tool in targets:
            prefix = "peers A fresh" if key == "A fresh" else f"peers {key}:"
            assert any(
                r.target and r.benchmark.startswith(prefix) and peers.LABELS[tool] in r.measure for r in rows
            )


def test_a_tool_that_cannot_start_answers_with_its_error(tmp_path):
    proc = ToolProcess("no-such-tool", ["A"], be_file(tiny_config(str(tmp_path)), (4, 4)), str(tmp_path))
    ready = proc.reply(timeout_s=300)
    proc.close()
    assert "failed to start" in ready["error"] and "no-such-tool" in ready["error"]


def test_a_failing_call_is_an_error_reply_and_the_tool_goes_on(tmp_path):
    cfg = tiny_config(str(tmp_path))
    path = be_file(cfg, (4, 4))
    proc = ToolProcess("serial", ["A"], path, str(tmp_path))
    try:
        assert "error" not in proc.reply(timeout_s=300)
        missing = proc.call({"workload": "A", "path": str(tmp_path / "missing.h5"), "out": "x.npy"}, 300)
        out = str(tmp_path / "a.npy")
        done = proc.call({"workload": "A", "path": path, "out": out}, 300)
    finally:
        proc.close()
    assert "missing.h5" in missing["error"]
    assert done["seconds"] > 0 and np.load(out).shape == (16,)


def test_quadratic_peak_is_the_vertex_of_a_parabola():
    x = np.arange(119.0)
    spectrum = (5.0 - 0.001 * (x - 60.3) ** 2).astype(np.complex64)
    assert abs(peer_tools.workload_function("B")[1](spectrum) - 5.0) < 1e-3
