"""What a file says is not trusted: lazyusid writes only into plain datasets inside the target file.

A results group's token holds no secret, so whoever writes a file can plant
a partial group that lazyusid would resume. These tests plant one the way
an attacker would (after a real computation, so the token is the engine's
own), redirect its storage elsewhere, and check that lazyusid refuses it
and that no file changes: neither the victim nor the source.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import xarray as xr

import lazyusid
from lazyusid.errors import StoreConflictError

RUN = {"cores": 1, "progress": False}
GROUP = "/Measurement_000/Channel_000"
RESULTS = GROUP + "/Raw_Data-amplitude_000"


def amplitude(spectrum):
    return np.abs(spectrum).max()


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def scan(tmp_path) -> str:
    path = tmp_path / "scan.h5"
    lazyusid.datasets.make_be_pfm(path, n_x=7, n_y=5, n_freq=12, overwrite=True)
    return os.fspath(path)


def _clear_flags(grp: h5py.Group) -> None:
    grp[lazyusid.sinks.base.MARKERS][:] = 0
    grp.attrs["last_pixel"] = 0


def _replace(grp: h5py.Group, name: str, make) -> None:
    """Replace dataset ``name`` of ``grp`` by ``make(grp, name, shape, dtype)``, keeping its attributes."""
    old = grp[name]
    attrs, shape, dtype = dict(old.attrs), old.shape, old.dtype
    del grp[name]
    make(grp, name, shape, dtype)
    new = grp[name]
    for key, value in attrs.items():
        new.attrs[key] = value


def _external(victim):
    def make(grp, name, shape, dtype):
        grp.create_dataset(name, shape=shape, dtype=dtype, external=[(victim, 0, h5py.h5f.UNLIMITED)])

    return make


def _virtual(victim):
    def make(grp, name, shape, dtype):
        with h5py.File(victim, "w") as v:
            v.create_dataset("x", data=np.arange(np.prod(shape), dtype=dtype).reshape(shape))
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(victim, "x", shape=shape)
        grp.create_virtual_dataset(name, layout, fillvalue=0)

    return make


def _external_link(victim):
    def make(grp, name, shape, dtype):
        with h5py.File(victim, "w") as v:
            v.create_dataset("x", data=np.arange(np.prod(shape), dtype=dtype).reshape(shape))
        grp[name] = h5py.ExternalLink(victim, "x")

    return make


def _hard_link_to_another(victim):
    """``victim`` unused: the planted name is a second name of a dataset of another result."""

    def make(grp, name, shape, dtype):
        grp[name] = grp.file[GROUP + "/innocent/" + name]  # copied before: someone else's data

    return make


PLANTS = {
    "external": _external,
    "virtual": _virtual,
    "external-link": _external_link,
    "hard-link": _hard_link_to_another,
}


@pytest.mark.parametrize("what", ["output", "completed_positions"])
@pytest.mark.parametrize("plant", list(PLANTS))
def test_a_planted_group_with_storage_elsewhere_is_refused_and_no_file_changes(plant, what, scan, tmp_path):
    data = lazyusid.open_usid(scan)
    lazyusid.map_spectra(data, amplitude, store=scan, **RUN)  # the engine's own token, then planted
    victim = os.fspath(tmp_path / ("victim.h5" if plant != "external" else "victim.txt"))
    if plant == "external":
        with open(victim, "wb") as f:
            f.write(b"precious bytes " * 64)
    name = "amplitude" if what == "output" else lazyusid.sinks.base.MARKERS
    with h5py.File(scan, "r+") as f:
        grp = f[RESULTS]
        f.copy(grp, GROUP + "/innocent")  # another group, holding data of the same shape and dtype
        _replace(grp, name, PLANTS[plant](victim))
        if plant != "hard-link" or what == "output":
            _clear_flags(grp)
    before = {p: sha256(p) for p in (scan, victim) if os.path.exists(p)}
    with pytest.raises(StoreConflictError, match=rf"Raw_Data-amplitude_000/{name}'.* not stored plainly"):
        lazyusid.map_spectra(data, amplitude, store=scan, **RUN)
    with pytest.raises(StoreConflictError, match="not stored plainly"):  # resume= names it: the same
        lazyusid.map_spectra(data, amplitude, store=scan, resume="Raw_Data-amplitude_000", **RUN)
    assert {p: sha256(p) for p in before} == before


def test_a_planted_group_in_another_results_file_is_refused(scan, tmp_path):
    data = lazyusid.open_usid(scan)
    results = os.fspath(tmp_path / "results.h5")
    lazyusid.map_spectra(data, amplitude, store=results, **RUN)
    victim = os.fspath(tmp_path / "victim.txt")
    with open(victim, "wb") as f:
        f.write(b"precious bytes " * 64)
    with h5py.File(results, "r+") as f:
        grp = f["/Raw_Data-amplitude_000"]
        _replace(grp, "amplitude", _external(victim))
        _clear_flags(grp)
    before = {p: sha256(p) for p in (scan, victim, results)}
    with pytest.raises(StoreConflictError, match="external storage"):
        lazyusid.map_spectra(data, amplitude, store=results, **RUN)
    assert {p: sha256(p) for p in before} == before


def test_a_plain_partial_group_still_resumes(scan):
    """The check refuses only what is not plain: lazyusid's own partial groups (chunked) resume."""
    data = lazyusid.open_usid(scan)
    lazyusid.map_spectra(data, amplitude, store=scan, **RUN)
    with h5py.File(scan, "r+") as f:
        _clear_flags(f[RESULTS])
    stored = lazyusid.map_spectra(data, amplitude, store=scan, **RUN)
    assert stored.attrs["usid_rows_computed"] == 35
    assert stored.attrs["usid_store"].endswith("Raw_Data-amplitude_000")
    np.testing.assert_array_equal(stored.values, np.abs(data.values).max(axis=-1))


# ---------------------------------------------------------------------------
# compound (record) outputs: pycroscopy's layout, one main dataset with a compound dtype

#: pycroscopy's ``sho32``
SHO = np.dtype({"names": ["Amplitude", "Frequency", "Quality Factor", "Phase", "R2"], "formats": ["f4"] * 5})


def sho_guess(spectrum):
    """A record per spectrum, as a numpy structured scalar (np.void)."""
    amplitude = np.abs(spectrum)
    peak = int(np.argmax(amplitude))
    quality = amplitude[peak] / (amplitude.mean() + 1e-3)
    record = np.array((amplitude[peak], peak, quality, np.angle(spectrum[peak]), amplitude.min()), dtype=SHO)
    return record[()]


@pytest.mark.parametrize("where", ["source", "other-file"])
def test_record_outputs_store_as_one_compound_main_dataset(where, scan, tmp_path, pyusid):
    data = lazyusid.open_usid(scan)
    store = scan if where == "source" else os.fspath(tmp_path / "results.h5")
    outputs = {"fit": {"dtype": SHO, "units": "V"}}
    stored = lazyusid.map_spectra(data, sho_guess, outputs=outputs, store=store, **RUN)
    expected = np.array([[sho_guess(s) for s in row] for row in data.values])  # a plain NumPy loop
    assert expected.dtype == SHO
    assert isinstance(stored, xr.Dataset) and list(stored.data_vars) == list(SHO.names)  # its fields
    for name in SHO.names:
        np.testing.assert_array_equal(stored[name].values, expected[name])

    path, group = stored.attrs["usid_store"].rsplit(":", 1)
    with h5py.File(path, "r") as f:
        dset = f[group + "/fit"]
        assert dset.dtype == SHO and dset.shape == (35, 1)
        assert pyusid.hdf_utils.check_if_main(dset)
        for name in SHO.names:
            np.testing.assert_array_equal(dset[:, 0][name], expected[name].reshape(-1))

    fields = lazyusid.open_usid(path, group + "/fit")  # a Dataset of the fields, ready to plot
    assert isinstance(fields, xr.Dataset)
    assert list(fields.data_vars) == list(SHO.names)
    for name in SHO.names:
        assert fields[name].dtype == np.float32 and fields[name].attrs["units"] == "V"
        np.testing.assert_array_equal(fields[name].squeeze("Value", drop=True).values, expected[name])
    fields["Amplitude"].squeeze("Value").plot()

    again = lazyusid.map_spectra(data, sho_guess, outputs=outputs, store=store, **RUN)
    assert again.attrs["usid_rows_computed"] == 0


def test_the_backend_opens_record_fields_as_variables(scan, tmp_path):
    data = lazyusid.open_usid(scan)
    store = os.fspath(tmp_path / "results.h5")
    lazyusid.map_spectra(data, sho_guess, outputs={"fit": SHO}, store=store, **RUN)
    ds = xr.open_dataset(store, engine="usid")
    assert [k for k in ds.data_vars] == [f"fit.{name}" for name in SHO.names]
    np.testing.assert_array_equal(
        ds["fit.R2"].values.reshape(-1), np.abs(data.values).min(axis=-1).reshape(-1)
    )


def first(values):
    return values[0] * 2


def test_computations_on_two_fields_are_not_duplicates(scan, tmp_path):
    """A field names its records by usid_record, not usid_dataset: Amplitude and Phase stay apart."""
    data = lazyusid.open_usid(scan)
    store = os.fspath(tmp_path / "results.h5")
    stored = lazyusid.map_spectra(data, sho_guess, outputs={"fit": SHO}, store=store, **RUN)
    path, group = stored.attrs["usid_store"].rsplit(":", 1)
    fields = lazyusid.open_usid(path, group + "/fit")
    target = os.fspath(tmp_path / "more.h5")
    for name in ("Amplitude", "Phase"):
        doubled = lazyusid.map_spectra(fields[name], first, store=target, **RUN)
        np.testing.assert_array_equal(doubled.values, fields[name].values[..., 0] * 2)
        assert doubled.attrs["usid_rows_computed"] == 35


# ---------------------------------------------------------------------------
# group= that is not a group; a source busy in another process


@pytest.mark.parametrize(
    ("group", "culprit", "what"),
    [
        (GROUP + "/Raw_Data", GROUP + "/Raw_Data", "a dataset"),
        (GROUP + "/Raw_Data/deeper", GROUP + "/Raw_Data", "a dataset"),
        ("/outside/run", "/outside", "an external link"),
    ],
)
def test_group_that_is_not_a_group_of_the_file_is_refused_before_writing(
    group, culprit, what, scan, tmp_path
):
    data = lazyusid.open_usid(scan)
    other = os.fspath(tmp_path / "other.h5")
    with h5py.File(other, "w") as f:
        f.create_group("run")
    with h5py.File(scan, "r+") as f:
        f["outside"] = h5py.ExternalLink(other, "/")
    before = {p: sha256(p) for p in (scan, other)}
    with pytest.raises(StoreConflictError, match=rf"group='{group}'.*'{culprit}' is {what}") as info:
        lazyusid.map_spectra(data, amplitude, store=scan, group=group, **RUN)
    assert isinstance(info.value, FileExistsError)
    assert {p: sha256(p) for p in before} == before


def test_a_source_open_for_writing_elsewhere_is_busy_and_named(scan):
    from lazyusid.errors import StoreBusyError

    data = lazyusid.open_usid(scan)
    code = "import h5py, sys; f = h5py.File(sys.argv[1], 'r+'); print('open', flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, scan], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreBusyError, match=rf"{scan}.* open .*in another process"):
            lazyusid.map_spectra(data, amplitude, store=scan, **RUN)
    finally:
        holder.communicate("")


# ---------------------------------------------------------------------------
# a full disk: a clear error, the file closed, the process alive, a rerun resumes

FULL_DISK_SCRIPT = """
import os
import sys
import h5py
import numpy as np
import lazyusid

if os.environ.get("UNALLOCATED"):  # results groups built before the skeleton allocated their space (2026-12)
    import lazyusid.sinks.hdf5_group
    lazyusid.sinks.hdf5_group.allocated = lambda: h5py.h5p.create(h5py.h5p.DATASET_CREATE)

def wide(spectrum):
    return np.repeat(np.abs(spectrum).astype("f8"), 32)  # 4 KiB per position

data = lazyusid.open_usid(sys.argv[1])
try:
    stored = lazyusid.map_spectra(data, wide, store=sys.argv[2], positions_per_block=64, cores=1, progress=False)
except lazyusid.LazyUSIDError as exc:
    assert isinstance(exc, OSError), type(exc).__mro__
    print("ERROR", type(exc).__name__, exc, flush=True)
else:
    expected = np.repeat(np.abs(data.values).astype("f8"), 32, axis=-1)
    np.testing.assert_array_equal(stored.values, expected)
    print("DONE", stored.attrs["usid_rows_computed"], flush=True)
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root); unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", os.fspath(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", os.fspath(mount)], check=False)


def _run(script_args, env):
    return subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, *script_args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_results_larger_than_the_free_space_are_refused_before_computing(small_disk, tmp_path):
    """The skeleton allocates every chunk (tests/test_hdf5_allocation.py): a full disk shows before the work."""
    source = os.fspath(tmp_path / "scan.h5")
    lazyusid.datasets.make_be_pfm(source, n_x=32, n_y=32, n_freq=16, overwrite=True)
    target = os.fspath(small_disk / "results.h5")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(lazyusid.__file__))}
    first = _run([source, target], env)
    assert first.returncode == 0, (first.returncode, first.stderr[-3000:])
    assert re.search(
        r"ERROR DiskFullError No space left on device while writing \S+results\.h5:/: preparing its results "
        r"group \(its datasets take 4\.0 MiB\), before computing anything; free space and run again",
        first.stdout,
    ), first.stdout + first.stderr[-3000:]
    assert os.listdir(small_disk) == []  # no file, and no temporary file, left behind
    subprocess.run(["mount", "-o", "remount,size=16m", os.fspath(small_disk)], check=True)
    again = _run([source, target], env)
    assert "DONE 1024" in again.stdout, again.stdout + again.stderr[-3000:]


def test_a_full_disk_is_a_clear_error_the_process_survives_and_a_rerun_resumes(small_disk, tmp_path):
    """Into a results group whose space is allocated as it is written (groups built before 2026-12)."""
    source = os.fspath(tmp_path / "scan.h5")
    lazyusid.datasets.make_be_pfm(source, n_x=32, n_y=32, n_freq=16, overwrite=True)
    target = os.fspath(small_disk / "results.h5")
    env = {**os.environ, "DASK_LAZYUSID__CHECKPOINT_INTERVAL": "0", "UNALLOCATED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(lazyusid.__file__)), env.get("PYTHONPATH", "")]
    )
    before = sha256(source)

    first = _run([source, target], env)
    assert first.returncode == 0, (first.returncode, first.stderr[-3000:])  # no segfault (139) at exit
    assert "Can't decrement id ref count" not in first.stderr, first.stderr[-3000:]
    found = re.search(
        r"ERROR DiskFullError No space left on device while writing (\S+) at positions (\d+):(\d+); "
        r"(\d+) positions are saved; free space and run again to resume",
        first.stdout,
    )
    assert found, first.stdout + first.stderr[-3000:]
    assert found.group(1).startswith(target)
    saved = int(found.group(4))
    assert 0 <= saved < 1024 and int(found.group(2)) < int(found.group(3)) <= 1024
    assert sha256(source) == before
    with h5py.File(target, "r") as f:  # still readable; the flags on disk are at least those reported
        (name,) = f
        flagged = int(f[name]["completed_positions"][()].sum())
    assert flagged >= saved

    subprocess.run(["mount", "-o", "remount,size=16m", os.fspath(small_disk)], check=True)  # free space
    second = _run([source, target], env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"DONE {1024 - flagged}" in second.stdout, second.stdout + second.stderr[-3000:]


def test_a_disk_full_before_the_group_is_built_is_a_clear_error(small_disk, tmp_path):
    source = os.fspath(tmp_path / "scan.h5")
    lazyusid.datasets.make_be_pfm(source, n_x=32, n_y=32, n_freq=16, overwrite=True)
    target = os.fspath(small_disk / "results.h5")
    with h5py.File(target, "w"):
        pass
    with open(small_disk / "filler", "wb", buffering=0) as filler:  # leave no byte free
        with contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(lazyusid.__file__))}
    run = _run([source, target], env)
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:])
    assert re.search(
        r"ERROR DiskFullError No space left on device while writing .*results\.h5:/: preparing its results group",
        run.stdout,
    ), run.stdout + run.stderr[-3000:]
    assert "free space and run again" in run.stdout
    os.remove(small_disk / "filler")
    subprocess.run(["mount", "-o", "remount,size=16m", os.fspath(small_disk)], check=True)
    again = _run([source, target], env)
    assert "DONE 1024" in again.stdout, again.stdout + again.stderr[-3000:]
