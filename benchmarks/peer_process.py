"""The peers benchmark's side of its tool processes (``benchmarks/peer_tools.py`` is the tools' side).

A :class:`ToolProcess` is one tool's long-lived process in its own process
group: JSON commands on its stdin, ``RESULT`` lines back, frozen (SIGSTOP)
between its own calls. :func:`fresh_run` times one tool end to end in a
fresh interpreter.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil

from .common import TreeSampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


class ToolProcess:
    """One tool's long-lived process (its own process group): commands on stdin, ``RESULT`` lines back."""

    def __init__(self, tool: str, workloads: list[str], warm_path: str, tmp: str):
        self.tool = tool
        self.error: str | None = None
        self.lines: queue.Queue = queue.Queue()
        self.log = open(os.path.join(tmp, f"{tool}.log"), "w")  # closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.peer_tools", "serve", tool, warm_path, tmp, "--workloads", ",".join(workloads)],
            cwd=REPO, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                self.lines.put(json.loads(line[len("RESULT ") :]))
        self.lines.put(None)

    def reply(self, timeout_s: float) -> dict:
        try:
            out = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            self.kill()
            return {"error": f"no answer within {timeout_s:.0f} s (killed)"}
        if out is None:
            return {"error": f"the process exited ({self.proc.poll()}); see {self.log.name}"}
        return out

    def signal_tree(self, sig: int) -> None:
        """``sig`` to the tool's process group, and to any descendant that left it."""
        try:
            os.killpg(self.proc.pid, sig)
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                if os.getpgid(child.pid) != self.proc.pid:
                    child.send_signal(sig)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass

    def call(self, cmd: dict, timeout_s: float) -> dict:
        """Resume, run one timed call while sampling the tree's PSS, freeze again."""
        if self.error:
            return {"error": self.error}
        self.signal_tree(signal.SIGCONT)
        try:
            with TreeSampler(self.proc.pid, interval_s=0.05, pss=True) as sampler:
                self.proc.stdin.write(json.dumps(cmd) + "\n")
                self.proc.stdin.flush()
                out = self.reply(timeout_s)
        except (OSError, psutil.NoSuchProcess) as exc:
            out = {"error": f"the process is gone ({exc})"}
        self.signal_tree(signal.SIGSTOP)
        out["pss"] = sampler.peak
        return out

    def kill(self) -> None:
        self.signal_tree(signal.SIGKILL)

    def close(self, wait: bool = True) -> None:
        """Ask the tool to close its pool and exit (``wait``: wait for it, killing it after 30 s)."""
        if not self.proc.stdin.closed:
            self.signal_tree(signal.SIGCONT)
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
            except OSError:
                pass
        if not wait:
            return
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        self.log.close()


def fresh_run(tool: str, src: str, tmp: str) -> dict:
    """Workload A end to end in a fresh interpreter: seconds until the result is written, then exit."""
    if tool == "pyusid":  # it writes into the file
        shutil.copyfile(src, os.path.join(tmp, "fresh_pyusid.h5"))
        src = os.path.join(tmp, "fresh_pyusid.h5")
    out = os.path.join(tmp, f"fresh_{tool}.npy")
    cmd = [sys.executable, "-m", "benchmarks.peer_tools", "once", tool, "A", src, out]
    with open(os.path.join(tmp, f"fresh_{tool}.log"), "w") as err:
        tic = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
        timer = threading.Timer(1800, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        done = next((time.perf_counter() - tic for line in proc.stdout if line.startswith("DONE")), None)
        proc.wait()
        timer.cancel()
        exited = time.perf_counter() - tic
    if done is None:
        return {"error": f"failed ({proc.returncode}); see {err.name}"}
    return {"seconds": done, "exit_s": exited - done, "out": out, "checked": True}
