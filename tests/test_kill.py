"""Checkpoints survive real SIGKILLs; resume computes only what is missing; a second writer is refused.

The computation is :func:`kill_target.features` (three outputs) over a small
synthetic BE file, run by ``tests/kill_target.py`` in a process that leads
its own session, so ``os.killpg`` also kills the worker processes of a
``cores=2`` run. The process is forked from one that has imported lazyusid
already (``tests/zygote.py``), so kills land in the run rather than in
the 1.7 s of imports. References come from a plain NumPy loop.

1. Kills at random moments. Each trial uses a fresh target and kills after
   a delay drawn uniformly from the duration of an uninterrupted run of the
   same kind (opening, checks and group creation included). After each kill, with
   plain h5py or zarr: the target opens and every dataset and chunk in it
   reads; the source main dataset is byte-identical; every row flagged in
   ``completed_positions`` holds exactly (bit for bit) the reference
   values; ``last_pixel`` never exceeds the number of leading flagged rows.
   Then the same call in the test process evaluates the function once to
   infer the outputs plus once per unflagged row, and leaves a complete
   result, bit-identical to the reference. Delays come from a seeded RNG;
   the seed is printed and named in every failure (``LAZYUSID_KILL_SEED``
   draws the same delays again; where a delay lands still varies).
2. Resume after a failure or a kill evaluates exactly the missing rows.
3. A second writer (and, for HDF5, a reader) fails at once with a clear
   error while the first writer finishes a correct result.
4. What a kill leaves behind (temporary files, chunks, groups) is removed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import kill_target
import numpy as np
import pytest
import zarr
from zygote import Child, Zygote

import lazyusid
from lazyusid import SpectralFunctionError
from lazyusid.sinks.base import MARKERS
from lazyusid.sinks.hdf5 import _BUILDING

SCRIPT = Path(__file__).with_name("kill_target.py")
TARGETS = ("in-file", "other-file", "zarr")
N_Y, N_X = 16, 16
N_ROWS = N_Y * N_X
POSITIONS_PER_BLOCK = 8
#: what a run imports, imported once by the zygote before any fork
PRELOAD = ["h5py", "zarr", "kill_target", "lazyusid.compute", "lazyusid.graph", "lazyusid.sinks.hdf5",
           "lazyusid.sinks.zarr"]  # fmt: skip
#: sleep per spectrum in the subprocess: a cores=1 run of 256 spectra computes ~0.6 s, in 32 blocks
SLEEP_MS = {1: 2.5, 2: 5.0}
#: generous limit for a subprocess that should finish (a hang fails the test instead of blocking it)
TIMEOUT_S = 300
KILL_SEED = int(os.environ.get("LAZYUSID_KILL_SEED") or random.SystemRandom().randrange(2**32))


@dataclass(frozen=True)
class Source:
    """The pristine source file, its main dataset's digest and the NumPy-loop results (rows × values)."""

    path: Path
    digest: str
    expected: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Source:
    path = tmp_path_factory.mktemp("kill-source") / "scan.h5"
    lazyusid.datasets.make_be_pfm(path, n_x=N_X, n_y=N_Y, overwrite=True)
    with h5py.File(path, "r") as f:
        raw = f[kill_target.SOURCE_DATASET][()]
    values = raw.reshape(N_Y, N_X, -1)
    expected = {k: v.reshape(N_ROWS, -1) for k, v in kill_target.reference(values).items()}
    return Source(path, _sha256(path), expected)


def _sha256(path: Path) -> str:
    """Digest of the source main dataset's bytes (read with plain h5py)."""
    with h5py.File(path, "r") as f:
        return hashlib.sha256(f[kill_target.SOURCE_DATASET][()].tobytes()).hexdigest()


def make_target(kind: str, src: Source, where: Path) -> tuple[Path, Path]:
    """``(source, target)`` for one run: in-file targets get their own copy of the source."""
    where.mkdir(parents=True, exist_ok=True)
    if kind == "in-file":
        path = where / "scan.h5"
        shutil.copyfile(src.path, path)
        return path, path
    return src.path, where / ("results.zarr" if kind == "zarr" else "results.h5")


# -- running and killing ---------------------------------------------------------------------------------


def start(
    source: Path,
    target: Path,
    *,
    cores: int = 1,
    output: Path,
    checkpoint_interval: float = 0,
    skip: bool = False,
    **env,
) -> Child:
    """Start a run of ``kill_target.py`` in a new session (its own process group); stdout and stderr go to ``output``.

    The run is forked from a process that has imported lazyusid already (:mod:`zygote`), so a kill
    lands in the run, not in the imports. ``checkpoint_interval`` (seconds, HDF5 only) 0 flags every block
    as it is written, the strictest case; the default of lazyusid (1 s) flags the blocks written meanwhile
    together. ``skip`` runs :func:`kill_target.fragile` with ``on_error="skip"``.
    """
    environ = dict(os.environ, **{f"KILL_TARGET_{k.upper()}": str(v) for k, v in env.items()})
    environ["DASK_LAZYUSID__CHECKPOINT_INTERVAL"] = str(checkpoint_interval)
    args = [
        str(source),
        str(target),
        "--cores",
        str(cores),
        "--positions-per-block",
        str(POSITIONS_PER_BLOCK),
    ]
    args += ["--skip"] if skip else []
    run = {"call": "kill_target:forked_main", "args": args}
    return zygote().start(run, env=environ, cwd=output.parent, output=output)


@functools.cache
def zygote() -> Zygote:
    """The process runs are forked from (started once per test process, with the first run)."""
    return Zygote(PRELOAD)


def kill_group(proc: Child | subprocess.Popen) -> None:
    """SIGKILL every process of ``proc``'s group (it leads its own session), and reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # orphaned workers die a little later; none of them writes the target
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)


def run_uninterrupted(source: Path, target: Path, *, cores: int, output: Path, **env) -> float:
    """Run to completion; return the seconds from start until the result was stored (its "done" line)."""
    zygote()  # started before the clock: its imports are not part of a run
    tic = time.perf_counter()
    proc = start(source, target, cores=cores, output=output, sleep_ms=SLEEP_MS[cores], **env)
    try:
        while proc.poll() is None and b"done " not in output.read_bytes():
            time.sleep(0.005)
        seconds = time.perf_counter() - tic
        rc = proc.wait(timeout=TIMEOUT_S)
    finally:
        kill_group(proc)
    assert rc == 0, f"uninterrupted run failed:\n{output.read_text()}"
    return seconds


def wait_for_calls(log: Path, n: int, proc: subprocess.Popen, output: Path) -> None:
    """Wait until the function was called ``n`` times (lines in ``log``), or fail if the process ended."""
    deadline = time.monotonic() + TIMEOUT_S
    while not (log.exists() and log.read_bytes().count(b"\n") >= n):
        assert proc.poll() is None, f"process ended before {n} calls:\n{output.read_text()}"
        assert time.monotonic() < deadline, f"no {n} calls after {TIMEOUT_S} s:\n{output.read_text()}"
        time.sleep(0.005)


# -- reading a target with plain h5py / zarr -----------------------------------------------------------


@dataclass
class Stored:
    """What a target holds, read without lazyusid."""

    groups: list[str]
    flags: np.ndarray | None = None
    last_pixel: int | None = None
    values: dict[str, np.ndarray] | None = None  # output name -> (rows, values per row)
    token: str | None = None


def read_target(kind: str, target: Path, src: Source) -> Stored | None:
    """Read everything in the target (a damaged dataset or chunk raises) and check the source's digest.

    Returns None if the target does not exist (a kill before it was linked or renamed into place).
    """
    if not target.exists():
        assert kind != "in-file"
        return None
    if kind == "zarr":
        group = zarr.open_group(target, mode="r", zarr_format=3)
        attrs = dict(group.attrs)
        stored = Stored(["/"], token=attrs.get("lazyusid_token"), last_pixel=attrs.get("last_pixel"))
        arrays = {name: np.asarray(arr[...]) for name, arr in group.arrays()}  # every chunk decodes
        stored.flags = arrays[MARKERS].reshape(-1)
        stored.values = {k: arrays[k].reshape(N_ROWS, -1) for k in kill_target.OUTPUTS}
        assert _sha256(src.path) == src.digest
        return stored
    with h5py.File(target, "r") as f:  # no repair tools: plain h5py must open it
        kill_target.read_everything(f)
        if kind == "in-file":
            assert hashlib.sha256(f[kill_target.SOURCE_DATASET][()].tobytes()).hexdigest() == src.digest
        parent = f["/Measurement_000/Channel_000" if kind == "in-file" else "/"]
        names = sorted(k for k in parent if k.startswith("Raw_Data-features_"))
        stored = Stored(names)
        if not names:
            return stored
        assert len(names) == 1, f"several results groups after one interrupted run: {names}"
        grp = parent[names[0]]
        stored.token = grp.attrs.get("lazyusid_token")
        stored.last_pixel = grp.attrs.get("last_pixel")
        if MARKERS in grp:
            stored.flags = grp[MARKERS][()]
        stored.values = {k: grp[k][()] for k in kill_target.OUTPUTS if k in grp}
    if kind != "in-file":
        assert _sha256(src.path) == src.digest
    return stored


def check_consistent(stored: Stored | None, src: Source) -> int:
    """No flag without its data: flagged rows are bit-identical to the NumPy loop. Returns how many."""
    if stored is None or stored.flags is None:
        return 0
    flags = stored.flags
    assert flags.shape == (N_ROWS,) and flags.dtype == np.uint8
    assert set(np.unique(flags)) <= {0, 1}, f"flags other than 0/1: {np.unique(flags)}"
    done = flags == 1
    if done.any():
        assert stored.token is not None, "rows flagged in a results group without a token"
        for name, want in src.expected.items():
            got = stored.values.get(name)
            assert got is not None, f"rows flagged but no dataset {name!r}"
            assert got.dtype == want.dtype and got.shape == want.shape
            bad = np.flatnonzero(
                done & np.any(got.view(np.uint8).reshape(N_ROWS, -1) != _bytes(want), axis=1)
            )
            assert bad.size == 0, f"{name}: {bad.size} flagged rows hold wrong values, e.g. rows {bad[:10]}"
    leading = int(np.argmin(done)) if not done.all() else N_ROWS
    if stored.last_pixel is not None:
        assert 0 <= int(stored.last_pixel) <= leading, (
            f"last_pixel {stored.last_pixel} > {leading} leading rows"
        )
    return int(done.sum())


def _bytes(values: np.ndarray) -> np.ndarray:
    return values.view(np.uint8).reshape(values.shape[0], -1)


def check_complete(kind: str, source: Path, target: Path, src: Source, result) -> None:
    """The returned result and the stored one equal the NumPy loop bit for bit, and every row is flagged."""
    for name, want in src.expected.items():
        got = np.asarray(result[name].values).reshape(N_ROWS, -1)
        assert got.dtype == want.dtype and np.array_equal(_bytes(got), _bytes(want)), name
    stored = read_target(kind, target, src)
    assert stored is not None and stored.flags is not None
    assert check_consistent(stored, src) == N_ROWS
    assert stored.last_pixel == N_ROWS
    assert stored.token == result.attrs["usid_token"]
    if kind != "zarr":
        assert result.attrs["usid_store"].endswith("/" + stored.groups[0])
    litter = [p.name for p in target.parent.iterdir() if p.name.endswith(".lazyusid-partial")]
    if kind == "zarr":
        litter += [str(p) for p in target.rglob("*.partial")]
    assert not litter, f"temporary files left after a complete run: {litter}"


# -- 1. kills at random moments ---------------------------------------------------------------------------

_durations: dict[tuple[str, int], float] = {}


def uninterrupted_seconds(kind: str, cores: int, src: Source, where: Path) -> float:
    """Duration of an uninterrupted subprocess run into a fresh target (measured once per module)."""
    key = (kind, cores)
    if key not in _durations:
        source, target = make_target(kind, src, where / f"uninterrupted-{kind}-{cores}")
        log = target.parent / "calls.log"
        seconds = run_uninterrupted(source, target, cores=cores, output=target.parent / "output.txt", log=log)
        pids = set(log.read_text().split())
        if cores > 1:  # the spectra were computed in worker processes
            assert len(pids) > 2, f"cores={cores} ran in {len(pids)} processes"
        kill_target.STATE.calls = 0
        check_complete(kind, source, target, src, kill_target.run(source, target))
        assert kill_target.STATE.calls == 1  # complete: returned without computing
        _durations[key] = seconds
    return _durations[key]


def kill_trials(kind: str, src: Source, where: Path, cores_per_trial: list[int]) -> None:
    """Kill a fresh run of ``kind`` once per trial; check the target after each kill and after resuming."""
    rng = random.Random(f"{KILL_SEED}-{kind}-{len(cores_per_trial)}")
    print(f"LAZYUSID_KILL_SEED={KILL_SEED} target={kind}")
    history = []
    for i, cores in enumerate(cores_per_trial):
        span = uninterrupted_seconds(kind, cores, src, where)
        delay = rng.uniform(0, span)
        source, target = make_target(kind, src, where / f"trial-{i:03d}")
        output = target.parent / "output.txt"
        interval = (0, 0.3)[i % 2]  # every block, and several blocks per checkpoint
        proc = start(
            source, target, cores=cores, output=output, sleep_ms=SLEEP_MS[cores], checkpoint_interval=interval
        )
        try:
            status = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            kill_group(proc)
        history.append(
            f"trial {i}: cores={cores} delay={delay:.3f} s of {span:.3f} s killed={status is None}"
        )
        try:
            assert status in (None, 0), f"the run failed on its own (exit status {status})"
            flagged = check_consistent(read_target(kind, target, src), src)
            history[-1] += f" flagged={flagged}"
            kill_target.STATE.calls = 0
            result = kill_target.run(source, target)
            assert kill_target.STATE.calls == 1 + N_ROWS - flagged  # inference, then the missing rows
            check_complete(kind, source, target, src, result)
        except Exception as exc:
            raise AssertionError(
                f"kill trial {i} into {kind} failed (LAZYUSID_KILL_SEED={KILL_SEED}):\n"
                + "\n".join(history)
                + f"\n--- output of the killed run ---\n{output.read_text(errors='replace')}"
            ) from exc
        print(history[-1])


@pytest.mark.parametrize("kind", TARGETS)
def test_kill_at_random_moments(kind, source, tmp_path):
    """15 kills per target (45 in all), in-process: a ``cores=2`` run costs ~20 s more (see the long test)."""
    kill_trials(kind, source, tmp_path, [1] * 15)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("kind", TARGETS)
def test_kill_at_random_moments_many(kind, source, tmp_path):
    """50 kills per target, one in five with worker processes (each such run starts its own cluster).

    Deselected by default (``-m "not long"`` in pyproject.toml): ``pytest -m long`` runs it, as ``.ci/run``
    does. Also ``slow``, so that ``pytest -m "not slow"`` (which replaces the default ``-m``) leaves it out.
    """
    kill_trials(kind, source, tmp_path, [1, 1, 1, 1, 2] * 10)


# -- 2. resume computes only the missing positions ----------------------------------------------------------


def _missing_rows(kind: str, target: Path, src: Source) -> int:
    stored = read_target(kind, target, src)
    return N_ROWS - check_consistent(stored, src)


@pytest.mark.parametrize("kind", TARGETS)
def test_resume_after_failure_evaluates_only_missing_positions(kind, source, tmp_path, monkeypatch):
    src, target = make_target(kind, source, tmp_path)
    monkeypatch.setattr(kill_target.STATE, "fail_after", 150)
    monkeypatch.setattr(kill_target.STATE, "calls", 0)
    with pytest.raises(SpectralFunctionError, match="failure switch"):
        kill_target.run(src, target)
    missing = _missing_rows(kind, target, source)
    assert 0 < missing < N_ROWS - 100  # the blocks finished before the failure were kept

    kill_target.STATE.fail_after = None  # not a parameter: the same computation
    kill_target.STATE.calls = 0
    result = kill_target.run(src, target)
    # one call on the first spectrum infers the outputs, then one per missing row
    assert kill_target.STATE.calls == 1 + missing
    check_complete(kind, src, target, source, result)

    kill_target.STATE.calls = 0
    kill_target.run(src, target)  # complete: only the inference call
    assert kill_target.STATE.calls == 1


@pytest.mark.parametrize("kind", TARGETS)
def test_resume_after_kill_evaluates_only_missing_positions(kind, source, tmp_path, monkeypatch):
    src, target = make_target(kind, source, tmp_path)
    log, gate, output = tmp_path / "calls.log", tmp_path / "gate", tmp_path / "output.txt"
    proc = start(src, target, output=output, log=log, gate=gate, gate_after=100)
    try:
        wait_for_calls(log, 101, proc, output)  # held in its 13th block
    finally:
        kill_group(proc)
    missing = _missing_rows(kind, target, source)
    assert 0 < missing < N_ROWS

    monkeypatch.setattr(kill_target.STATE, "calls", 0)
    result = kill_target.run(src, target)
    assert kill_target.STATE.calls == 1 + missing  # inference, then the missing rows only
    check_complete(kind, src, target, source, result)


# -- 3. two writers, and a reader, at once --------------------------------------------------------------

READER = """
import sys, lazyusid
lazyusid.open_usid(sys.argv[1], dataset=sys.argv[2] if len(sys.argv) > 2 else None)
"""


@pytest.mark.parametrize("kind", TARGETS)
def test_second_writer_is_refused_while_first_finishes(kind, source, tmp_path):
    src, target = make_target(kind, source, tmp_path)
    log, gate, output = tmp_path / "calls.log", tmp_path / "gate", tmp_path / "a.txt"
    first = start(src, target, output=output, log=log, gate=gate, gate_after=20)
    try:
        wait_for_calls(log, 21, first, output)  # first writer holds the target, in its third block
        second = subprocess.run(
            [sys.executable, str(SCRIPT), str(src), str(target)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            cwd=tmp_path,
        )
        readers = []
        if kind != "zarr":  # HDF5's file lock keeps readers out too: they must fail at once, not hang
            dataset = kill_target.SOURCE_DATASET if kind == "in-file" else "/Raw_Data-features_000/amplitude"
            readers.append(
                subprocess.run(
                    [sys.executable, "-c", READER, str(target), dataset],
                    capture_output=True,
                    text=True,
                    timeout=TIMEOUT_S,
                    cwd=tmp_path,
                )
            )
        else:  # zarr readers do not wait either, and see only whole, correct rows
            check_consistent(read_target(kind, target, source), source)
        gate.touch()
        assert first.wait(timeout=TIMEOUT_S) == 0, output.read_text()
    finally:
        gate.touch()
        kill_group(first)
    assert second.returncode != 0, second.stdout
    assert all(r.returncode != 0 for r in readers), [r.stdout for r in readers]
    assert check_consistent(read_target(kind, target, source), source) == N_ROWS  # the first one finished
    kill_target.STATE.calls = 0
    check_complete(kind, src, target, source, kill_target.run(src, target))
    assert kill_target.STATE.calls == 1  # nothing left to compute
    for who, text in [("the second writer", second.stderr)] + [("a reader", r.stderr) for r in readers]:
        assert "StoreBusyError" in text and "another process" in text, f"{who} got no clear error:\n{text}"


# -- 4. what a kill leaves behind is removed by the next run ----------------------------------------------


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_new_file_linked_but_not_cleaned_up_is_removed(source, tmp_path):
    """A run killed between linking its new file into place and removing the temporary name."""
    target = tmp_path / "results.h5"
    with h5py.File(target, "w"):
        pass  # what a new target holds when it is linked into place: an empty root group
    os.link(target, f"{target}.{_dead_pid()}.lazyusid-partial")
    check_complete("other-file", source.path, target, source, kill_target.run(source.path, target))


@pytest.mark.parametrize("kind", ["other-file", "zarr"])
def test_new_target_never_linked_is_removed(kind, source, tmp_path):
    """A run killed while it built a new target under its temporary name."""
    src, target = make_target(kind, source, tmp_path)
    stale = Path(f"{target}.{_dead_pid()}.lazyusid-partial")
    if kind == "zarr":
        (stale / "c").mkdir(parents=True)
        (stale / "zarr.json").write_text("{")
    else:
        stale.write_bytes(b"\0" * 96)  # killed before its first flush
    check_complete(kind, src, target, source, kill_target.run(src, target))


def test_zarr_chunk_being_written_is_removed(source, tmp_path, monkeypatch):
    """zarr writes a chunk to ``*.partial`` and renames it: a kill in between leaves the temporary file."""
    src, target = make_target("zarr", source, tmp_path)
    monkeypatch.setattr(kill_target.STATE, "fail_after", 100)
    monkeypatch.setattr(kill_target.STATE, "calls", 0)
    with pytest.raises(SpectralFunctionError, match="failure switch"):
        kill_target.run(src, target)
    chunk = next(p for p in (target / "amplitude" / "c").rglob("*") if p.is_file())
    chunk.with_suffix(".0123456789abcdef.partial").write_bytes(chunk.read_bytes()[:10])
    kill_target.STATE.fail_after = None
    check_complete("zarr", src, target, source, kill_target.run(src, target))


@pytest.mark.parametrize("kind", ["in-file", "other-file"])
def test_results_group_being_built_is_removed(kind, source, tmp_path):
    """A run killed while it built its results group, before moving it to its name."""
    src, target = make_target(kind, source, tmp_path)
    parent = "/Measurement_000/Channel_000" if kind == "in-file" else "/"
    with h5py.File(target, "a") as f:
        building = f.require_group(parent).create_group(_BUILDING)
        building.create_dataset("amplitude", shape=(N_ROWS, 119), dtype="f4")
        building.attrs["tool"] = "features"
    check_complete(kind, src, target, source, kill_target.run(src, target))
    with h5py.File(target, "r") as f:
        assert sorted(k for k in f[parent] if "features" in k or "lazyusid" in k) == ["Raw_Data-features_000"]


def test_a_whole_results_group_left_being_built_by_an_older_version_is_not_taken_for_data(source, tmp_path):
    """Versions before 2026-12 built results groups in place under ``_BUILDING``: a kill left USID main datasets.

    ``open_usid`` of the file must still find its one data main dataset (not ask for ``dataset=``), and
    the next run removes the leftover.
    """
    src, target = make_target("in-file", source, tmp_path)
    check_complete("in-file", src, target, source, kill_target.run(src, target))
    parent = "/Measurement_000/Channel_000"
    with h5py.File(target, "a") as f:
        f[parent].move("Raw_Data-features_000", _BUILDING)
    data = lazyusid.open_usid(src)
    assert data.attrs["usid_dataset"] == kill_target.SOURCE_DATASET
    assert lazyusid.usid.files.list_main(src) == [kill_target.SOURCE_DATASET]
    check_complete("in-file", src, target, source, kill_target.run(src, target))
    with h5py.File(target, "r") as f:
        assert _BUILDING not in f[parent]
