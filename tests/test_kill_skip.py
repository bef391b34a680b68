"""``on_error="skip"`` under real SIGKILLs: failure flags and stored errors stay consistent with the flags.

The computation is :func:`kill_target.fragile` (it raises at about a third of
the spectra, chosen by the spectrum itself) with ``on_error="skip"``, run by
``tests/kill_target.py --skip`` in its own process group and killed at a
random moment. After each kill, read with plain h5py / zarr: every flagged
row's values equal the NumPy loop (NaN where the function raised), its
``failed_positions`` flag equals the reference's, and every stored error
names a position where the function really raises. After resuming in this
process: every row is flagged, ``failed_positions`` equals the reference and
the stored errors are exactly the first ones by position.
"""

from __future__ import annotations

import json
import random
import subprocess

import h5py
import kill_target
import numpy as np
import pytest
import zarr
from test_kill import KILL_SEED, N_ROWS, N_X, N_Y, kill_group, make_target, source, start  # noqa: F401 - a fixture

from lazyusid.core.function import MAX_ERRORS
from lazyusid.sinks.base import ERRORS, FAILED, MARKERS

SLEEP_MS = 2.5
TRIALS = 3


def _reference(src) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(src.path, "r") as f:
        values = f[kill_target.SOURCE_DATASET][()]
    failed = kill_target.fails(values)
    peak = src.expected["peak"].reshape(-1).astype(np.float64)
    return failed, np.where(failed, np.nan, peak)


def _read(kind, target):
    """(flags, failed, peak values, errors) as stored, or None before the target exists."""
    if not target.exists():
        return None
    if kind == "zarr":
        group = zarr.open_group(target, mode="r", zarr_format=3)
        if FAILED not in group:
            return None
        errors = json.loads(group.attrs.get(ERRORS) or "[]")
        return (
            np.asarray(group[MARKERS][...]).reshape(-1),
            np.asarray(group[FAILED][...]).reshape(-1),
            np.asarray(group["peak"][...]).reshape(-1),
            errors,
        )
    with h5py.File(target, "r") as f:
        parent = f["/Measurement_000/Channel_000"]
        names = [k for k in parent if k.startswith("Raw_Data-fragile_")]
        if not names:
            return None
        grp = parent[names[0]]
        text = grp.attrs.get(ERRORS)
        errors = json.loads(text) if text is not None else []
        return grp[MARKERS][()], grp[FAILED][()].reshape(-1), grp["peak"][()].reshape(-1), errors


@pytest.mark.parametrize("kind", ["in-file", "zarr"])
def test_kill_with_skip_keeps_failures_consistent(kind, source, tmp_path):  # noqa: F811 - the fixture
    failed_ref, peak_ref = _reference(source)
    assert 0.1 < failed_ref.mean() < 0.6
    rng = random.Random(f"{KILL_SEED}-skip-{kind}")
    for trial in range(TRIALS):
        src, target = make_target(kind, source, tmp_path / f"trial-{trial}")
        output = target.parent / "output.txt"
        interval = (0, 0.3)[trial % 2]
        proc = start(src, target, output=output, checkpoint_interval=interval, skip=True, sleep_ms=SLEEP_MS)
        try:
            proc.wait(timeout=rng.uniform(0.05, 1.5))  # the run takes ~1.3 s (HDF5) to 2 s (zarr)
        except subprocess.TimeoutExpired:
            pass
        finally:
            kill_group(proc)
        where = (
            f"trial {trial} ({kind}, LAZYUSID_KILL_SEED={KILL_SEED}):\n{output.read_text(errors='replace')}"
        )
        stored = _read(kind, target)
        if stored is not None:
            flags, failed, peak, errors = stored
            done = np.repeat(flags.reshape(-1) == 1, 1)
            assert np.array_equal(failed[done], failed_ref[done]), where
            np.testing.assert_array_equal(peak[done], peak_ref[done], err_msg=where)
            assert all(failed_ref[e["position"]] for e in errors), where
        result = kill_target.run(src, target, skip=True)
        flags, failed, peak, errors = _read(kind, target)
        assert (flags == 1).all(), where
        assert np.array_equal(failed.astype(bool), failed_ref), where
        np.testing.assert_array_equal(peak, peak_ref, err_msg=where)
        first = np.flatnonzero(failed_ref)[:MAX_ERRORS].tolist()
        assert [e["position"] for e in errors] == first, where
        assert np.array_equal(result.usid.failed.values.reshape(-1), failed_ref)
        assert result.usid.errors[0]["type"] == "ValueError"
    assert N_ROWS == N_Y * N_X
