"""A lazyusid computation to kill: run as a script by ``tests/test_kill.py``, imported by it too.

``python kill_target.py SOURCE TARGET [--cores N] [--positions-per-block N]`` maps
:func:`features` over the USID main dataset of ``SOURCE`` into ``TARGET`` (the
source file itself, another HDF5 file, or a ``.zarr`` store) with
:func:`lazyusid.map_spectra`, exactly as the tests do in-process, and exits 0
when the stored result is complete. A failure prints its traceback (type
and message) on stderr and exits 1.

How the function behaves is set by environment variables, read when the
module is imported, so worker processes (``--cores 2``) behave like the
client. They live in :data:`STATE`, not in the parameters: they do not
change the computation's identity, so a run slowed down here is resumed by
a fast run in the test process.

``KILL_TARGET_SLEEP_MS``
    Sleep this long in every call (makes a run last long enough to kill).
``KILL_TARGET_LOG``
    Append the calling process id to this file on every call (one line per call).
``KILL_TARGET_GATE`` and ``KILL_TARGET_GATE_AFTER``
    After that many calls in a process, wait until the gate file exists
    before computing (holds a run in the middle of its blocks).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import h5py
import numpy as np

#: the source main dataset (what :func:`lazyusid.datasets.make_be_pfm` writes)
SOURCE_DATASET = "/Measurement_000/Channel_000/Raw_Data"
#: the function's parameters: part of the computation's identity
PARAMS = {"scale": 3.0}
#: outputs of :func:`features`, in the order they are stored
OUTPUTS = ("peak", "amplitude", "phase")


class State:
    """How :func:`features` behaves in this process, and how often it was called.

    An object, not a dict: lazyusid identifies a function by its code and by
    the *data* its globals hold, but other objects by their class only, so
    switching these settings (or counting calls) never changes the identity
    of the computation.
    """

    def __init__(self):
        self.sleep_s = float(os.environ.get("KILL_TARGET_SLEEP_MS", "0")) / 1000
        self.log = os.environ.get("KILL_TARGET_LOG") or None
        self.gate = os.environ.get("KILL_TARGET_GATE") or None
        self.gate_after = int(os.environ.get("KILL_TARGET_GATE_AFTER", "0"))
        self.fail_after: int | None = None  # raise in every call after this many (set by tests in-process)
        self.calls = 0


STATE = State()


def features(spectrum: np.ndarray, scale: float = 1.0) -> dict:
    """Peak amplitude (scaled), the amplitude spectrum and the phase at the peak of one spectrum."""
    STATE.calls += 1
    if STATE.log:
        fd = os.open(STATE.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
    if STATE.fail_after is not None and STATE.calls > STATE.fail_after:
        raise RuntimeError(f"failure switch: call {STATE.calls} > {STATE.fail_after}")
    if STATE.gate and STATE.calls > STATE.gate_after:
        while not os.path.exists(STATE.gate):
            time.sleep(0.005)
    if STATE.sleep_s:
        time.sleep(STATE.sleep_s)
    amplitude = np.abs(spectrum)
    i = int(np.argmax(amplitude))
    return {"peak": amplitude[i] * scale, "amplitude": amplitude, "phase": np.angle(spectrum[i])}


def fragile(spectrum: np.ndarray, scale: float = 1.0) -> dict:
    """:func:`features`, but it raises at the spectra whose peak lies at a frequency index divisible by 3."""
    out = features(spectrum, scale)
    i = int(np.argmax(np.abs(spectrum)))
    if i % 3 == 0:
        raise ValueError(f"no fit: peak at frequency index {i}")
    return out


def fails(values: np.ndarray) -> np.ndarray:
    """Where :func:`fragile` raises, over the positions of ``values`` ``(..., Frequency)``."""
    return np.argmax(np.abs(values), axis=-1) % 3 == 0


def reference(values: np.ndarray, params: dict | None = None) -> dict[str, np.ndarray]:
    """:func:`features` over ``values`` ``(Y, X, Frequency)`` with a plain NumPy loop, outputs stacked."""
    params = PARAMS if params is None else params
    rows = [features(s, **params) for s in values.reshape(-1, values.shape[-1])]
    pos_shape = values.shape[:-1]
    return {
        k: np.stack([np.asarray(r[k]) for r in rows]).reshape(pos_shape + np.shape(rows[0][k]))
        for k in OUTPUTS
    }


def run(source: str, target: str, *, cores: int = 1, positions_per_block: int = 8, skip: bool = False):
    """The computation every test runs (in a subprocess or in-process): returns the stored result.

    ``skip``: :func:`fragile` with ``on_error="skip"`` instead of :func:`features`.
    """
    import lazyusid

    data = lazyusid.open_usid(source)
    return lazyusid.map_spectra(
        data,
        fragile if skip else features,
        store=target,
        params=PARAMS,
        cores=cores,
        positions_per_block=positions_per_block,
        progress=False,
        on_error="skip" if skip else "raise",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--positions-per-block", type=int, default=8)
    parser.add_argument("--skip", action="store_true", help="fragile() with on_error='skip'")
    args = parser.parse_args(argv)
    if args.cores > 1:  # up before the run, so that the run goes to it (not weighed against its start)
        import lazyusid.run.schedulers

        lazyusid.run.schedulers.shared_client(args.cores)
    result = run(
        args.source,
        args.target,
        cores=args.cores,
        positions_per_block=args.positions_per_block,
        skip=args.skip,
    )
    print(f"done {result.attrs['usid_store']}", flush=True)
    return 0


def read_everything(f: h5py.File) -> None:
    """Read every attribute and every dataset of ``f`` with plain h5py: raises where a kill left damage."""

    def read(name, obj):
        dict(obj.attrs)
        if isinstance(obj, h5py.Dataset):
            obj[()]

    f.visititems(read)


def forked_main(argv: list[str]) -> int:
    """:func:`main` in a child forked from ``tests/zygote.py``, which imported this module before the run's
    environment was set: :data:`STATE` is read from it again, as a fresh interpreter reads it."""
    STATE.__init__()
    return main(argv)


if __name__ == "__main__":
    # as a script this file is ``__main__``; import it as ``kill_target`` (its directory is on sys.path) so
    # the function's identity (module and name) is the same as in the tests and in worker processes
    import kill_target

    sys.exit(kill_target.main())
