"""A SIGKILL before each write of a run: every state a kill can leave, not a random sample of them.

``tests/killwrite.c`` (compiled here, loaded with ``LD_PRELOAD``) kills the
run just before its N-th ``pwrite`` (HDF5's default driver writes only with
``pwrite``), for every N from 1 to the number of writes an uninterrupted run
makes: the target then holds exactly the first N - 1 writes. The run is
``tests/kill_target.py --skip`` (three outputs, ``failed_positions`` and the
error record, a checkpoint after every block) on 12 positions in 3 blocks.

After each kill, with plain h5py: the file opens and every object, attribute
and chunk in it reads; the source main dataset (in-file) or the file's other
dataset (existing file) is byte-identical; every flagged row holds the NumPy
loop's values and failure flags. Then a run in this process resumes it to
the complete result.

Found this way (2026-12), against the code before the fix: 17 of 61 write
points into a new file and 19 of 57 into the source file left it unreadable
(``addr overflow``, ``bad heap free list``): HDF5 writes changed metadata
before the superblock that records the file's end, so every allocation
after the skeleton's flush, and every flush of a group built in place, was
a window. What remains, and is asserted as such: a kill inside the one
flush that links a new results group into an *existing* group (the source's
channel group, or the root of an existing results file), between HDF5's
in-place writes of that group's local heap and symbol-table node, leaves
the group unreadable (:data:`LINK_WINDOW` write points; a few microseconds
once per new results group). HDF5 has no atomic way to add a link to an
old-style group; new files are built whole and linked into place, so they
have no such window.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import kill_target
import numpy as np
import pytest

SHIM = Path(__file__).with_name("killwrite.c")
SCRIPT = Path(__file__).with_name("kill_target.py")
N_Y, N_X = 3, 4
#: write points inside the flush that links a new results group into an existing group (see above)
LINK_WINDOW = {"new-file": 0, "existing-file": 2, "in-file": 2}

pytestmark = [pytest.mark.slow, pytest.mark.long]


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build tests/killwrite.c")
    out = tmp_path_factory.mktemp("shim") / "killwrite.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(SHIM), "-ldl"], check=True)
    return out


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source") / "scan.h5"
    import lazyusid

    lazyusid.datasets.make_be_pfm(path, n_x=N_X, n_y=N_Y, overwrite=True)
    return path


def digest(path: Path, dataset: str) -> str:
    with h5py.File(path, "r") as f:
        return hashlib.sha256(f[dataset][()].tobytes()).hexdigest()


def prepare(kind: str, scan: Path, where: Path) -> tuple[Path, Path]:
    """(source, target) of one run in its own directory."""
    where.mkdir(parents=True)
    source = where / "scan.h5"
    shutil.copyfile(scan, source)
    if kind == "in-file":
        return source, source
    target = where / "results.h5"
    if kind == "existing-file":
        with h5py.File(target, "w") as f:
            f.create_dataset("other", data=np.arange(100))
    return source, target


def run(shim: Path, source: Path, target: Path, kill_before: int, count: Path | None = None) -> int:
    env = dict(os.environ, LD_PRELOAD=str(shim), KILL_BEFORE_PWRITE=str(kill_before))
    env["DASK_LAZYUSID__CHECKPOINT_INTERVAL"] = "0"
    if count is not None:
        env["PWRITE_COUNT_FILE"] = str(count)
    args = [sys.executable, str(SCRIPT), str(source), str(target), "--positions-per-block", "4", "--skip"]
    done = subprocess.run(args, env=env, cwd=target.parent, capture_output=True, timeout=300)
    if kill_before == 0:
        assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.returncode


def reference(scan: Path) -> tuple[np.ndarray, np.ndarray]:
    """(peak per position, NaN where the function raises; where it raises)."""
    with h5py.File(scan, "r") as f:
        values = f[kill_target.SOURCE_DATASET][()]
    failed = kill_target.fails(values).reshape(-1)
    peak = kill_target.reference(values)["peak"].reshape(-1).astype(np.float64)
    return np.where(failed, np.nan, peak), failed


def check_after_kill(kind: str, source: Path, target: Path, scan_digest: str, ref) -> None:
    """Raise unless plain h5py reads all of the target and what is flagged is right."""
    if not target.exists():
        assert kind == "new-file", "the target disappeared"
        return
    with h5py.File(target, "r") as f:
        kill_target.read_everything(f)
        if kind == "existing-file":
            np.testing.assert_array_equal(f["other"][()], np.arange(100))
        parent = f["/Measurement_000/Channel_000" if kind == "in-file" else "/"]
        names = [k for k in parent if k.startswith("Raw_Data-fragile_")]
        assert len(names) <= 1, names
        if names:
            grp = parent[names[0]]
            flags = grp["completed_positions"][()].astype(bool)
            peak, failed = ref
            np.testing.assert_array_equal(grp["peak"][()].reshape(-1)[flags], peak[flags])
            np.testing.assert_array_equal(grp["failed_positions"][()].reshape(-1)[flags], failed[flags])
    if kind == "in-file":
        assert digest(source, kill_target.SOURCE_DATASET) == scan_digest


@pytest.mark.parametrize("kind", ["new-file", "existing-file", "in-file"])
def test_a_kill_before_any_write_leaves_a_readable_target_that_resumes(kind, shim, scan, tmp_path):
    source, target = prepare(kind, scan, tmp_path / "count")
    run(shim, source, target, 0, count=tmp_path / "count" / "writes")
    writes = int((tmp_path / "count" / "writes").read_text())
    assert writes > 20, writes
    scan_digest = digest(scan, kill_target.SOURCE_DATASET)
    ref = reference(scan)
    trials = [(n, *prepare(kind, scan, tmp_path / f"kill-{n:03d}")) for n in range(1, writes + 1)]
    with ThreadPoolExecutor(2) as pool:  # two runs at a time, one per core
        codes = list(pool.map(lambda t: run(shim, t[1], t[2], t[0]), trials))
    unreadable = []
    for (n, source, target), code in zip(trials, codes):
        assert code == -9, f"the run did not reach write {n} of {writes} (exit status {code})"
        try:
            check_after_kill(kind, source, target, scan_digest, ref)
        except (OSError, RuntimeError, KeyError) as exc:  # what h5py raises for a damaged file
            unreadable.append(f"kill before write {n}: {type(exc).__name__}: {exc}")
            continue
        result = kill_target.run(str(source), str(target), skip=True)  # resume in this process
        peak, failed = ref
        np.testing.assert_array_equal(result["peak"].values.reshape(-1), peak)
        np.testing.assert_array_equal(result.usid.failed.values.reshape(-1), failed)
        check_after_kill(kind, source, target, scan_digest, ref)
    assert len(unreadable) <= LINK_WINDOW[kind], f"{len(unreadable)} of {writes} kills:\n" + "\n".join(
        unreadable
    )
