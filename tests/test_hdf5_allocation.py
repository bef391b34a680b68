"""Once a results group's skeleton is on disk, computing into it allocates no file space.

Why it matters (found by a kill in CI: ``addr overflow, addr = 128168, size =
3808, eoa = 128136``): HDF5's flush writes the changed metadata (chunk
B-tree nodes, object headers) first and the superblock, which records the
file's end of allocation (EOA), last. A SIGKILL between them leaves metadata
on disk that points past the recorded EOA: plain h5py then cannot read that
chunk (or, for a group's link storage, anything below it), and only
``h5clear --increment`` repairs it. Measured with ``strace -e pwrite64`` on a
flush after writing three new chunks: three B-tree nodes, then the
superblock. So every byte a run writes after the skeleton must land in space
allocated when the skeleton was built: all chunks and the flags are allocated
then, the attributes a checkpoint rewrites keep their size. The checks here
read the file's bytes during the run (the superblock's EOA and the file's
size) from inside the mapped function, between checkpoints of every block.
"""

from __future__ import annotations

import os
import struct

import h5py
import numpy as np
import pytest

import lazyusid

N_Y, N_X = 6, 8
SEEN: list[tuple[int, int]] = []


def stored_eoa(path: str) -> int:
    """The end-of-allocation address the superblock (version 0 or 1, as h5py writes by default) records."""
    with open(path, "rb") as f:
        head = f.read(64)
    assert head[:8] == b"\x89HDF\r\n\x1a\n", "not an HDF5 file at offset 0"
    version = head[8]
    assert version in (0, 1), f"superblock version {version}: this check reads versions 0 and 1"
    offset = 24 + (4 if version == 1 else 0)  # base address, free-space address, then the EOA
    (eoa,) = struct.unpack_from("<Q", head, offset + 16)
    return eoa


def watched(target: str, fail: bool):
    """A per-spectrum function that records the target's stored EOA and size at each call."""

    def peak(spectrum):
        if os.path.exists(target):
            SEEN.append((stored_eoa(target), os.path.getsize(target)))
        amplitude = np.abs(spectrum)
        if fail and int(np.argmax(amplitude)) % 4 == 0:
            raise ValueError("no peak")  # some positions fail: on_error="skip" records them
        return {"amp": amplitude.max(), "spec": amplitude[:5]}

    return peak


@pytest.fixture
def scan(tmp_path) -> str:
    path = tmp_path / "scan.h5"
    lazyusid.datasets.make_be_pfm(path, n_x=N_X, n_y=N_Y, n_freq=16, overwrite=True)
    return os.fspath(path)


@pytest.mark.parametrize("kind", ["in-file", "other-file", "existing-file"])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_the_run_after_the_skeleton_allocates_nothing(kind, on_error, scan, tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_LAZYUSID__CHECKPOINT_INTERVAL", "0")  # a checkpoint after every block
    target = scan if kind == "in-file" else os.fspath(tmp_path / "results.h5")
    if kind == "existing-file":
        with h5py.File(target, "w") as f:
            f.create_dataset("other", data=np.arange(10))
    data = lazyusid.open_usid(scan)
    SEEN.clear()
    func = watched(target, fail=on_error == "skip")
    result = data.usid.map(
        func,
        store=target,
        on_error=on_error,
        positions_per_block=4,
        cores=1,
        progress=False,
    )
    during = SEEN[-N_Y * N_X :]  # one call per position; the one before infers the outputs (no skeleton yet)
    assert len(set(during)) == 1, f"the file grew while computing: (EOA, size) went {sorted(set(during))}"
    eoa, size = during[0]
    assert stored_eoa(target) == eoa and os.path.getsize(target) == size
    assert eoa <= size
    if on_error == "skip":
        assert result.usid.failed.values.any() and result.usid.errors
    with h5py.File(target, "r") as f:  # and plain h5py reads all of it
        f.visititems(lambda name, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)


def fragile_peak(spectrum):
    amplitude = np.abs(spectrum)
    if int(np.argmax(amplitude)) % 4 == 0:
        raise ValueError("no peak")
    return amplitude.max()


def test_a_cut_error_record_is_a_warning_not_a_failure(scan, tmp_path):
    """The error record is rewritten in place at checkpoints; a kill inside that write can cut its JSON."""
    target = os.fspath(tmp_path / "results.h5")
    data = lazyusid.open_usid(scan)
    result = data.usid.map(fragile_peak, store=target, on_error="skip", cores=1, progress=False)
    failed = result.usid.failed.values.copy()
    assert result.usid.errors
    with h5py.File(target, "r+") as f:
        (name,) = f
        text = f[name].attrs["lazyusid_errors"]
        f[name].attrs.modify("lazyusid_errors", text[: len(text) // 2])  # as a write stopped halfway
    with pytest.warns(UserWarning, match="error messages recorded in .* are damaged"):
        again = lazyusid.open_usid(scan).usid.map(
            fragile_peak, store=target, on_error="skip", cores=1, progress=False
        )
    assert again.attrs["usid_rows_computed"] == 0
    assert again.usid.errors == []
    np.testing.assert_array_equal(again.usid.failed.values, failed)
