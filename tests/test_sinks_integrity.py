"""A refusal changes no file; an interrupted override leaves no old values; damaged zarr stores are named.

Real files, real stores, a real SIGKILL of a child process; references are
plain NumPy loops.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr
from test_integrity_hdf5 import SHO, sho_guess  # pycroscopy's sho32 record, and a guess returning one

import lazyusid
from lazyusid.errors import StoreConflictError
from lazyusid.sinks.base import MARKERS

RUN = {"cores": 1, "progress": False}
N_Y, N_X = 5, 7


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def listing(directory) -> set[str]:
    """Every path under ``directory`` (files and directories), relative to it."""
    return {
        os.path.relpath(os.path.join(d, n), directory) for d, ds, fs in os.walk(directory) for n in ds + fs
    }


@pytest.fixture
def scan(tmp_path) -> str:
    path = tmp_path / "scan.h5"
    lazyusid.datasets.make_be_pfm(path, n_x=N_X, n_y=N_Y, n_freq=12, overwrite=True)
    return os.fspath(path)


def store_path(kind: str, scan: str, tmp_path) -> str:
    return {"in-file": scan, "other-file": os.fspath(tmp_path / "results.h5")}.get(
        kind, os.fspath(tmp_path / "r.zarr")
    )


def amplitude(spectrum):
    return np.abs(spectrum).max()


def amplitude_and_y(spectrum):
    return {"amp": np.abs(spectrum).max(), "Y": 1.0}


def amplitude_pair(spectrum):
    return np.abs(spectrum).max(), np.abs(spectrum).min()


def nothing_per_position(spectrum):
    return np.zeros(0)


def first_three(spectrum):
    return np.abs(spectrum)[:3]


# ---------------------------------------------------------------------------
# 7. every check runs before the first byte is written

#: (what, function, outputs, targets it is refused for, what the message names)
REFUSALS = [
    ("dash", amplitude, {"a-b": "f8"}, ("in-file", "other-file"), r"'a-b'.*'-'"),
    ("slash", amplitude, {"a/b": "f8"}, ("in-file", "other-file", "zarr"), r"'a/b'.*'/'"),
    ("dot", amplitude, {".": "f8"}, ("in-file", "other-file", "zarr"), r"'\.'"),
    ("nul", amplitude, {"a\x00b": "f8"}, ("in-file", "other-file", "zarr"), r"'a\\x00b'"),
    ("dunder", amplitude, {"__x": "f8"}, ("zarr",), r"'__x'.*'__'"),
    ("flags", amplitude, {MARKERS: "f8"}, ("in-file", "other-file", "zarr"), MARKERS),
    ("ancillary", amplitude, {"Spectroscopic_Values": "f8"}, ("in-file", "other-file"), "ancillary"),
    ("two-ancillaries", amplitude_pair, ["a", "Position_Indices_a"], ("in-file", "other-file"), "ancillary"),
    ("coordinate", amplitude_and_y, None, ("in-file", "other-file", "zarr"), r"'Y'.*coordinate"),
    ("output-dim", first_three, {"v": {"dims": ["Y"]}}, ("in-file", "other-file", "zarr"), r"'Y'"),
    ("empty", nothing_per_position, None, ("in-file", "other-file"), r"no values"),
    ("datetime", amplitude, {"t": "M8[ns]"}, ("in-file", "other-file", "zarr"), r"'t'.*datetime64"),
    ("opaque", amplitude, {"v": "V8"}, ("in-file", "other-file"), r"'v'.*\|V8"),
    ("longdouble", amplitude, {"v": "g"}, ("zarr",), r"'v'.*float128"),
]


@pytest.mark.parametrize("kind", ["in-file", "other-file", "zarr"])
@pytest.mark.parametrize(
    ("what", "func", "outputs", "kinds", "match"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_a_refused_call_changes_no_file(what, func, outputs, kinds, match, kind, scan, tmp_path):
    if kind not in kinds:
        pytest.skip(f"{what!r} is storable in {kind}")
    data = lazyusid.open_usid(scan)
    store = store_path(kind, scan, tmp_path)
    before, files = sha256(scan), listing(tmp_path)
    with pytest.raises((ValueError, TypeError), match=match) as info:
        lazyusid.map_spectra(data, func, outputs=outputs, store=store, **RUN)
    assert "positions" not in str(info.value) or "saved" not in str(info.value)  # refused, not interrupted
    assert sha256(scan) == before
    assert listing(tmp_path) == files


def test_a_refused_call_after_a_stored_result_changes_nothing_either(scan):
    """Into a source that already holds a results group: the refusal still writes nothing."""
    data = lazyusid.open_usid(scan)
    lazyusid.map_spectra(data, amplitude, store=scan, **RUN)
    before = sha256(scan)
    with pytest.raises(ValueError, match="'a-b'"):
        lazyusid.map_spectra(data, amplitude, outputs={"a-b": "f8"}, store=scan, **RUN)
    assert sha256(scan) == before


def test_a_parameter_hdf5_cannot_hold_is_not_written_as_an_attribute(scan):
    data = lazyusid.open_usid(scan)

    def scaled(spectrum, label):
        return np.abs(spectrum).max()

    stored = lazyusid.map_spectra(data, scaled, params={"label": "a\x00b"}, store=scan, **RUN)
    np.testing.assert_array_equal(stored.values, np.abs(data.values).max(axis=-1))
    path, group = stored.attrs["usid_store"].rsplit(":", 1)
    with h5py.File(path, "r") as f:
        assert "label" not in f[group].attrs


# ---------------------------------------------------------------------------
# 5. an interrupted override (SIGKILL) leaves no old values flagged


class Shift:
    """How :func:`shifted` behaves in this process; an object, so it is not part of the identity."""

    def __init__(self):
        self.offset = float(os.environ.get("SHIFT_OFFSET", "0"))
        self.log = os.environ.get("SHIFT_LOG") or None
        self.gate = os.environ.get("SHIFT_GATE") or None
        self.gate_after = int(os.environ.get("SHIFT_GATE_AFTER", "0"))
        self.calls = 0


SHIFT = Shift()


def shifted(spectrum):
    SHIFT.calls += 1
    if SHIFT.log:
        with open(SHIFT.log, "a") as f:
            f.write("call\n")
    if SHIFT.gate and SHIFT.calls > SHIFT.gate_after:
        while not os.path.exists(SHIFT.gate):
            time.sleep(0.005)
    return np.abs(spectrum).max() + SHIFT.offset


OVERRIDE_RUN = """
import sys
sys.path.insert(0, sys.argv[1])
import lazyusid
from test_sinks_integrity import shifted

data = lazyusid.open_usid(sys.argv[2])
lazyusid.map_spectra(data, shifted, store=sys.argv[3], override=True, cores=1, positions_per_block=7,
                     progress=False)
print("finished", flush=True)
"""


def test_an_override_killed_halfway_then_rerun_holds_only_new_values(scan, tmp_path, monkeypatch):
    data = lazyusid.open_usid(scan)
    store = os.fspath(tmp_path / "r.zarr")
    old = lazyusid.map_spectra(data, shifted, store=store, positions_per_block=7, **RUN)
    np.testing.assert_array_equal(old.values, np.abs(data.values).max(axis=-1))  # offset 0: the old values

    log, gate = tmp_path / "calls.log", tmp_path / "gate"
    env = dict(
        os.environ, SHIFT_OFFSET="1000", SHIFT_LOG=str(log), SHIFT_GATE=str(gate), SHIFT_GATE_AFTER="15"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(Path(lazyusid.__file__).parents[1]), env.get("PYTHONPATH", "")])
    tests = str(Path(__file__).parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", OVERRIDE_RUN, tests, scan, store],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and log.read_text().count("\n") >= 16):  # held in its third block
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    monkeypatch.setattr(SHIFT, "offset", 1000.0)  # the new function, as the killed run had it
    expected = np.array([[shifted(s) for s in row] for row in data.values])  # a plain NumPy loop
    group = zarr.open_group(store, mode="r")
    flags = np.asarray(group[MARKERS][...]).astype(bool)
    on_disk = np.asarray(group["shifted"][...])
    bad = np.argwhere(flags & (on_disk != expected))
    assert bad.size == 0, f"{len(bad)} rows flagged after the kill hold old values, e.g. {bad[:5].tolist()}"
    assert 0 < flags.sum() < flags.size  # killed halfway: the blocks finished before the gate are flagged

    monkeypatch.setattr(SHIFT, "calls", 0)
    rerun = lazyusid.map_spectra(data, shifted, store=store, positions_per_block=7, **RUN)
    assert SHIFT.calls == 1 + int(flags.size - flags.sum())  # inference, then what was not flagged
    np.testing.assert_array_equal(rerun.values, expected)
    np.testing.assert_array_equal(xr.open_zarr(store, consolidated=False)[rerun.name].values, expected)


# ---------------------------------------------------------------------------
# 9. deleted or damaged zarr stores


def test_an_output_name_zarr_cannot_hold_is_refused_before_computing(scan, tmp_path, monkeypatch):
    data = lazyusid.open_usid(scan)
    store = os.fspath(tmp_path / "r.zarr")
    monkeypatch.setattr(SHIFT, "calls", 0)
    with pytest.raises(ValueError, match=r"'a/b'"):
        lazyusid.map_spectra(data, shifted, outputs=["a/b"], store=store, **RUN)
    assert SHIFT.calls == 1  # only the inference: nothing computed
    assert not os.path.exists(store)


def test_a_zarr_store_deleted_while_blocks_finish_is_not_recreated(scan, tmp_path, monkeypatch):
    """Deleted right after a block task stored its values, before this process flags them."""
    from lazyusid.sinks.zarr_region import ZarrRegion

    data = lazyusid.open_usid(scan)
    store = os.fspath(tmp_path / "r.zarr")
    write, writes = ZarrRegion.__call__, []

    def write_then_delete(self, a, b, outs):
        write(self, a, b, outs)
        writes.append((a, b))
        if len(writes) == 2:
            shutil.rmtree(self.path)

    monkeypatch.setattr(ZarrRegion, "__call__", write_then_delete)
    with pytest.raises(StoreConflictError, match=rf"{store}.* deleted"):
        lazyusid.map_spectra(data, amplitude, store=store, positions_per_block=7, **RUN)
    assert not os.path.exists(store)  # nothing recreated: no metadata-less store left behind
    monkeypatch.setattr(ZarrRegion, "__call__", write)
    again = lazyusid.map_spectra(data, amplitude, store=store, positions_per_block=7, **RUN)
    np.testing.assert_array_equal(again.values, np.abs(data.values).max(axis=-1))


def test_a_zarr_region_never_writes_into_a_deleted_store(scan, tmp_path):
    from lazyusid.sinks.zarr_region import ZarrRegion

    data = lazyusid.open_usid(scan)
    store = os.fspath(tmp_path / "r.zarr")
    stored = lazyusid.map_spectra(data, amplitude, store=store, positions_per_block=7, **RUN)
    region = ZarrRegion(store, _shape(stored), 1)
    shutil.rmtree(store)
    with pytest.raises(StoreConflictError, match=rf"{store}"):
        region(0, 7, [np.zeros(7, "f4")])
    assert not os.path.exists(store)
    lazyusid.map_spectra(data, amplitude, store=store, positions_per_block=7, **RUN)
    os.remove(os.path.join(store, "amplitude", "zarr.json"))
    files = listing(store)
    with pytest.raises(StoreConflictError, match=rf"{store}.*amplitude"):
        region(0, 7, [np.zeros(7, "f4")])
    assert listing(store) == files


def _shape(stored):
    from lazyusid.core.outputs import Output
    from lazyusid.sinks.base import ResultShape

    out = Output("amplitude", (), np.dtype("f4"))
    coords = {k: v.variable for k, v in stored.coords.items()}
    return ResultShape(("Y", "X"), (N_Y, N_X), (), (), (out,), coords, 7)


def _rewrite_metadata(store: str, array: str, change) -> None:
    path = os.path.join(store, array, "zarr.json")
    with open(path) as f:
        meta = json.load(f)
    change(meta)
    with open(path, "w") as f:
        json.dump(meta, f)


DAMAGE = {
    "no array metadata": lambda store: os.remove(os.path.join(store, "amplitude", "zarr.json")),
    "no flags metadata": lambda store: os.remove(os.path.join(store, MARKERS, "zarr.json")),
    "other dtype": lambda store: _rewrite_metadata(
        store, "amplitude", lambda m: m.update(data_type="float64")
    ),
    "other dims": lambda store: _rewrite_metadata(
        store, "amplitude", lambda m: m.update(dimension_names=["X", "Y"])
    ),
    "sharded": lambda store: _rewrite_metadata(
        store,
        "amplitude",
        lambda m: m.update(
            codecs=[
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": [1, N_X],
                        "codecs": m["codecs"],
                        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                    },
                }
            ]
        ),
    ),
}


def _files(store: str) -> dict[str, str]:
    return {
        p: sha256(os.path.join(store, p)) for p in listing(store) if os.path.isfile(os.path.join(store, p))
    }


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_zarr_store_holding_flags_is_refused_then_override_rebuilds_it(damage, scan, tmp_path):
    data = lazyusid.open_usid(scan)
    store = os.fspath(tmp_path / "r.zarr")
    lazyusid.map_spectra(data, amplitude, store=store, positions_per_block=7, **RUN)
    DAMAGE[damage](store)
    files = _files(store)
    for _ in range(2):  # every later call says the same
        with pytest.raises(StoreConflictError, match=rf"{store}.*override=True"):
            lazyusid.map_spectra(data, amplitude, store=store, positions_per_block=7, **RUN)
    assert _files(store) == files
    rebuilt = lazyusid.map_spectra(data, amplitude, store=store, override=True, positions_per_block=7, **RUN)
    assert rebuilt.attrs["usid_rows_computed"] == N_Y * N_X
    np.testing.assert_array_equal(rebuilt.values, np.abs(data.values).max(axis=-1))
    again = lazyusid.map_spectra(data, amplitude, store=store, positions_per_block=7, **RUN)
    assert again.attrs["usid_rows_computed"] == 0


def test_a_damaged_zarr_store_with_nothing_flagged_is_rebuilt(scan, tmp_path):
    data = lazyusid.open_usid(scan)
    store = os.fspath(tmp_path / "r.zarr")
    lazyusid.map_spectra(data, amplitude, store=store, positions_per_block=7, **RUN)
    group = zarr.open_group(store, mode="r+")
    group[MARKERS][...] = 0
    group.attrs["last_pixel"] = 0
    os.remove(os.path.join(store, "amplitude", "zarr.json"))
    stored = lazyusid.map_spectra(data, amplitude, store=store, positions_per_block=7, **RUN)
    assert stored.attrs["usid_rows_computed"] == N_Y * N_X
    np.testing.assert_array_equal(stored.values, np.abs(data.values).max(axis=-1))


# ---------------------------------------------------------------------------
# 8. a record output comes back as a Dataset of its fields


@pytest.mark.parametrize("kind", ["in-file", "other-file"])
def test_a_stored_record_output_returns_a_dataset_of_its_fields(kind, scan, tmp_path):
    data = lazyusid.open_usid(scan)
    store = store_path(kind, scan, tmp_path)
    stored = lazyusid.map_spectra(
        data, sho_guess, outputs={"fit": {"dtype": SHO, "units": "V"}}, store=store, **RUN
    )
    expected = np.array([[sho_guess(s) for s in row] for row in data.values])  # a plain NumPy loop
    assert isinstance(stored, xr.Dataset)
    assert list(stored.data_vars) == list(SHO.names)
    for name in SHO.names:
        field = stored[name]
        assert field.dtype == np.float32 and field.attrs["units"] == "V"
        assert "usid_dataset" not in field.attrs and field.attrs["usid_field"] == name
        assert field.attrs["usid_record"] == stored.attrs["usid_store"] + "/fit"
        np.testing.assert_array_equal(field.values, expected[name])
    assert stored.attrs["usid_token"] and stored.attrs["usid_rows_computed"] == N_Y * N_X
    again = lazyusid.map_spectra(
        data, sho_guess, outputs={"fit": {"dtype": SHO, "units": "V"}}, store=store, **RUN
    )
    assert again.attrs["usid_rows_computed"] == 0 and list(again.data_vars) == list(SHO.names)


def sho_and_peak(spectrum):
    return {"fit": sho_guess(spectrum), "peak": np.abs(spectrum).max()}


def test_a_record_output_among_others_gives_one_variable_per_field(scan, tmp_path):
    data = lazyusid.open_usid(scan)
    stored = lazyusid.map_spectra(data, sho_and_peak, store=os.fspath(tmp_path / "results.h5"), **RUN)
    assert list(stored.data_vars) == [f"fit.{n}" for n in SHO.names] + ["peak"]
    np.testing.assert_array_equal(stored["fit.R2"].values, np.abs(data.values).min(axis=-1))
    np.testing.assert_array_equal(stored["peak"].values, np.abs(data.values).max(axis=-1))
