"""Python runs forked from one process that has already imported everything they use.

A fresh interpreter spends ~1.7 s importing lazyusid, dask, xarray, h5py and
zarr before it runs a line of the user's code. This process imports them
once (``python zygote.py MODULE ...``, started by :class:`Zygote`) and then
forks a child per run: each child leads its own session (``os.killpg``
kills it and its worker processes, as it killed the interpreter), takes the
run's environment (re-read by dask as at import), working directory, and
stdout/stderr file, and runs what it was asked to, as the interpreter would:

* ``{"call": "module:function", "args": [...]}``: ``function(args)``, its
  return value the exit status (the kill runs: a kill at a random moment of
  a fresh interpreter mostly lands in the imports, where there is nothing to
  test; here it lands in the run);
* ``{"script": path}``: the file as ``__main__`` (``python path``: its
  directory first on ``sys.path``; worker processes spawned by it import it
  as ``__mp_main__``, as they import a script);
* ``{"stdin": code}``: the code as ``__main__`` read from the standard input
  (``python -``: no file, ``''`` first on ``sys.path``).

A child is a real process, killed with a real SIGKILL; only the imports
before it were done once. Uncaught exceptions print their traceback and
exit 1, ``sys.exit`` gives its status, and the ``atexit`` functions run.

Protocol on stdin/stdout, one JSON object or line each: a request
``{"id", "env", "cwd", "output", and one of the above}`` is answered
``started ID PID``; ``exit PID STATUS`` follows when the child ends (STATUS
as ``Popen.returncode``: negative for a signal).
"""

from __future__ import annotations

import importlib
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


def _run(request: dict) -> int:
    """What the request names, run as the interpreter would run it; its exit status."""
    import runpy
    import types

    if "call" in request:
        module, _, name = request["call"].partition(":")
        return getattr(importlib.import_module(module), name)(request["args"]) or 0
    if "script" in request:
        path = os.path.abspath(request["script"])
        sys.argv[:] = [request["script"]]
        sys.path[0] = os.path.dirname(path)
        runpy.run_path(path, run_name="__main__")
        return 0
    sys.argv[:] = ["-"]
    sys.path[0] = ""
    main = types.ModuleType("__main__")
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    exec(compile(request["stdin"], "<stdin>", "exec"), main.__dict__)
    return 0


def _child(request: dict) -> None:
    """In the forked child: become the run ``request`` names, then exit with its status (never returns)."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd, name in ((1, "output"), (2, "errors" if request.get("errors") else "output")):
            out = os.open(request[name], os.O_WRONLY | os.O_APPEND)
            os.dup2(out, fd)
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

        dask.config.refresh()  # the run's DASK_* settings, as a fresh interpreter reads them at import
        try:
            code = _run(request)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()  # as the interpreter would at exit (the run's worker pool)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(preload: list[str]) -> None:
    for module in preload:  # everything the runs import, imported once before any fork
        importlib.import_module(module)
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

    def __init__(self, preload: list[str], env: dict | None = None):
        """Start the process, which imports the modules ``preload`` (and runs with ``env``, or ours)."""
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent,
            env=env,
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

    def start(self, run: dict, *, env: dict, cwd: Path, output: Path, errors: Path | None = None) -> Child:
        """Fork a child that runs ``run`` (``call`` and ``args``, ``script`` or ``stdin``: see the module).

        ``output`` receives its stdout, and its stderr unless ``errors`` is given.
        """
        request = {"id": next(self.ids), **run, "env": env, "cwd": str(cwd), "output": str(output)}
        request["errors"] = str(errors) if errors else None
        for path in (output, errors) if errors else (output,):
            Path(path).write_bytes(b"")  # before the fork: it exists (empty) once the run has started
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
                    raise subprocess.TimeoutExpired(f"zygote child {self.pid}", timeout)
                self.zygote.lock.wait(left)
            return self.zygote.codes[self.pid]


if __name__ == "__main__":  # worker processes of a cores=2 kill run import this file as __mp_main__
    serve(sys.argv[1:])
