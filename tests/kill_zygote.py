"""Runs of ``kill_target.py`` forked from one process that has already imported everything they use.

A fresh ``python kill_target.py`` spends ~1.7 s importing lazyusid, dask,
xarray, h5py and zarr before it writes anything, so a kill at a random
moment of a fresh interpreter mostly lands in the imports, where there is
nothing to test. This process imports them once (``python kill_zygote.py``,
started by :class:`Zygote`) and then forks a child per run: each child leads
its own session (``os.killpg`` kills it and its worker processes, as it
killed the interpreter), sets the run's environment, working directory and
output file, and runs :func:`kill_target.main` exactly as the script does.
A child is a real process, killed with a real SIGKILL; only the imports
before it were done once.

Protocol on stdin/stdout, one JSON object or line each: a request
``{"id", "args", "env", "cwd", "output"}`` is answered ``started ID PID``;
``exit PID STATUS`` follows when the child ends (STATUS as ``Popen.returncode``:
negative for a signal).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def _reap(signum, frame) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        os.write(1, f"exit {pid} {code}\n".encode())


def _child(request: dict) -> None:
    """In the forked child: become the run ``request`` names, then exit with its status (never returns)."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        out = os.open(request["output"], os.O_WRONLY | os.O_APPEND)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import atexit

        import dask
        import kill_target

        dask.config.refresh()  # the run's DASK_* settings, as a fresh interpreter reads them at import
        kill_target.STATE.__init__()  # the run's KILL_TARGET_* settings
        try:
            code = kill_target.main(request["args"]) or 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        atexit._run_exitfuncs()  # as the interpreter would at exit (the run's worker pool)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import h5py  # noqa: F401 - everything a run imports, imported once before any fork
    import kill_target  # noqa: F401
    import zarr  # noqa: F401

    import lazyusid.compute
    import lazyusid.graph
    import lazyusid.sinks.hdf5
    import lazyusid.sinks.zarr  # noqa: F401

    signal.signal(signal.SIGCHLD, _reap)
    os.write(1, b"ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        os.write(1, f"started {request['id']} {pid}\n".encode())


class Zygote:
    """The forking process, and what it reported (started in :meth:`__init__`, ended with the test process)."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent,
            start_new_session=True,
        )
        ready = self.proc.stdout.readline()
        assert ready == b"ready\n", f"the zygote did not start: {ready!r}"
        self.lock = threading.Condition()
        self.pids: dict[int, int] = {}
        self.codes: dict[int, int] = {}
        self.ids = iter(range(1 << 62))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            kind, a, b = line.decode().split()
            with self.lock:
                if kind == "started":
                    self.pids[int(a)] = int(b)
                else:
                    self.codes[int(a)] = int(b)
                self.lock.notify_all()

    def start(self, args: list[str], *, env: dict, cwd: Path, output: Path) -> Child:
        """Fork a run of ``kill_target.main(args)``; ``output`` receives its stdout and stderr."""
        Path(output).write_bytes(b"")  # before the fork: it exists (empty) once the run has started
        request = {"id": next(self.ids), "args": args, "env": env, "cwd": str(cwd), "output": str(output)}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        with self.lock:
            assert self.lock.wait_for(lambda: request["id"] in self.pids, timeout=60), "no fork in 60 s"
            return Child(self, self.pids.pop(request["id"]))


class Child:
    """A forked run, with the ``pid``, ``poll`` and ``wait`` of :class:`subprocess.Popen`."""

    def __init__(self, zygote: Zygote, pid: int):
        self.zygote, self.pid = zygote, pid

    def poll(self) -> int | None:
        with self.zygote.lock:
            return self.zygote.codes.get(self.pid)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.zygote.lock:
            while self.pid not in self.zygote.codes:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"kill_target pid {self.pid}", timeout)
                self.zygote.lock.wait(left)
            return self.zygote.codes[self.pid]


if __name__ == "__main__":  # worker processes of a cores=2 run import this file as __mp_main__
    serve()
