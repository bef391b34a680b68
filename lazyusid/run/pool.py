"""lazyusid's session pool of single-threaded worker processes: started in the background, once, and reused.

:func:`start_pool` starts a :class:`distributed.LocalCluster` in a thread
of its own and returns at once, so that the start (0.4–0.7 s on a quiet
2-core machine, several seconds under load) and the workers' imports of
the function's module overlap whatever the caller does meanwhile: opening
the target, computing the identity, building the graph. :func:`shared_client`
waits for it. The time a start took (cluster and imports) is measured once
per session: :func:`startup_seconds` is what the scheduler's choice counts
against the estimated work.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time

import dask

from .mainguard import refuse_unguarded_main

#: seconds the start of worker processes (cluster and imports) is assumed to take before it was measured.
#: With 2 s, benchmark 8's fresh-process peak finder once took 10.5 s with `cores=2` against 6.3 s with
#: `cores=1` (a first start of 2 workers importing lazyusid.tutorial took 2.7-3.8 s here, issue 14 note).
STARTUP_SECONDS = 3.0
#: distributed's settings for lazyusid's own workers. A worker that dies in the function is retried
#: twice, not three times (each death restarts a process). The workers run one function at a time and
#: nobody reads their profiles or dashboards, so what wakes their event loop beside the task is slowed
#: down: the statistical profiler (a thread sampling every 10 ms) is off, the event-loop tick (20 ms),
#: the memory monitor (100 ms) and the system monitor (500 ms) run every second or five. Measured on
#: the peak finder, 48x48 on 2 workers, 4 interleaved pairs (/tmp script, issue 14 note): process-tree
#: CPU over the serial loop's +36 % (median; +23 to +58 %) with distributed's defaults, +20 % (+10 to
#: +68 %) with these; idle CPU 0.075 -> 0.015 CPU-s per second.
WORKER_SETTINGS = {
    "distributed.scheduler.allowed-failures": 2,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
}
#: modules every block task needs in a worker (imported with the pool, not by the first task)
TASK_MODULES = ("lazyusid.graph",)

_lock = threading.Lock()
_pools: dict[int, Pool] = {}
#: the last measured start-up of a pool in this session (seconds), or None
_measured: list[float] = []


class Pool:
    """A pool of ``cores`` worker processes being started (or started) in a background thread."""

    def __init__(self, cores: int, modules: tuple[str, ...]):
        self.cores = cores
        self.modules = set(TASK_MODULES) | set(modules)
        self.started_at = time.perf_counter()
        self.client = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._start, daemon=True, name=f"lazyusid-start-pool-{cores}")
        self._thread.start()

    def _start(self) -> None:
        from distributed import Client, LocalCluster

        try:
            with dask.config.set(WORKER_SETTINGS):
                cluster = LocalCluster(
                    n_workers=self.cores,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # a free port: None still binds 8787 and warns
                    silence_logs=logging.CRITICAL,
                )
            self.client = Client(cluster, set_as_default=False)
            self.client.run(_import, sorted(self.modules))
            _measured[:] = [time.perf_counter() - self.started_at]
        except BaseException as exc:  # handed to the thread that waits
            self.error = exc
        finally:
            self.ready.set()

    def pending_seconds(self) -> float:
        """Seconds until this pool is expected to be ready (0 when it is)."""
        if self.ready.is_set():
            return 0.0
        return max(0.0, startup_seconds() - (time.perf_counter() - self.started_at))

    def preload(self, module: str) -> None:
        """Have the workers import ``module`` (in the background once the pool is up)."""
        if module in self.modules:
            return
        self.modules.add(module)
        if self.ready.is_set() and self.client is not None:
            threading.Thread(
                target=self._run_import, args=([module],), daemon=True, name="lazyusid-preload"
            ).start()

    def _run_import(self, modules: list[str]) -> None:
        try:
            self.client.run(_import, modules)
        except Exception:  # the tasks import what they need anyway
            pass

    def wait(self):
        """The pool's ``distributed.Client``, once started."""
        self.ready.wait()
        if self.error is not None:
            if isinstance(self.error, RuntimeError):
                raise RuntimeError(
                    f"could not start {self.cores} worker processes ({self.error}). In a script, put the code "
                    'that computes under `if __name__ == "__main__":` (worker processes import the script), '
                    "or pass cores=1 to run in-process."
                ) from self.error
            raise self.error
        return self.client

    @property
    def running(self) -> bool:
        return not self.ready.is_set() or (self.client is not None and self.client.status == "running")


def _import(modules) -> None:
    """Import ``modules`` in a worker (modules that cannot be imported there are left to the tasks)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def measured_startup_seconds() -> float | None:
    """The start-up (cluster and imports) of the last pool started in this session, or None before the first."""
    return _measured[0] if _measured else None


def startup_seconds() -> float:
    """The start-up of a pool: as measured last in this session, else :data:`STARTUP_SECONDS`."""
    return _measured[0] if _measured else STARTUP_SECONDS


def importable(module: str | None) -> bool:
    """Whether worker processes can import ``module`` by name (not a script's ``__main__``)."""
    return bool(module) and module not in ("__main__", "__mp_main__", "builtins") and "<" not in module


def start_pool(cores: int, module: str | None = None) -> Pool:
    """The session's pool of ``cores`` worker processes, started now in the background if not yet."""
    modules = (module,) if importable(module) else ()
    refuse_unguarded_main(cores, start_method())  # before any process starts
    _forget_unreal_main_file()
    with _lock:
        pool = _pools.get(cores)
        if pool is None or not pool.running or pool.error is not None:
            pool = _pools[cores] = Pool(cores, modules)
            return pool
    for m in modules:
        pool.preload(m)
    return pool


def _forget_unreal_main_file() -> None:
    """Drop ``__main__.__file__`` when it names no file (``python - < script`` sets ``"<stdin>"``).

    Spawned processes run the parent's main file again (as ``__mp_main__``);
    with ``"<stdin>"`` they fail to start, every one of them.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and path.startswith("<") and getattr(main, "__spec__", None) is None:
        del main.__file__


def wait_for_starting() -> bool:
    """Wait until no pool is being started; whether one was.

    A worker process being spawned holds, for a moment, copies of this
    process's open files (HDF5 opens them without close-on-exec), and so
    their HDF5 file locks: an open that the lock refused is worth one retry
    once the spawning is over.
    """
    with _lock:
        starting = [p for p in _pools.values() if not p.ready.is_set()]
    for pool in starting:
        pool.ready.wait(120)
    return bool(starting)


def start_method() -> str:
    """How distributed starts worker processes (its default, ``spawn``, imports the main script)."""
    import distributed  # noqa: F401 - loads distributed's configuration defaults

    return str(dask.config.get("distributed.worker.multiprocessing-method", "spawn"))


def pending_seconds(cores: int) -> float:
    """Seconds until a pool of ``cores`` workers could compute: 0 if up, the rest of its start otherwise."""
    with _lock:
        pool = _pools.get(cores)
    if pool is None or not pool.running or pool.error is not None:
        return startup_seconds()
    return pool.pending_seconds()


def shared_client(cores: int, module: str | None = None):
    """The session's client of ``cores`` single-threaded worker processes (started on first use, then waited for)."""
    return start_pool(cores, module).wait()


def forget(cores: int) -> None:
    """Drop the pool of ``cores`` workers after an interruption killed its workers (closed in the background)."""
    with _lock:
        pool = _pools.pop(cores, None)
    if pool is not None:
        threading.Thread(target=_close, args=(pool,), daemon=True, name="lazyusid-close-pool").start()


def _close(pool: Pool) -> None:
    pool.ready.wait(60)
    if pool.client is not None:
        close_client(pool.client)


def close_client(client) -> None:
    """Close a client and its cluster, best effort (at exit, after a Ctrl-C)."""
    cluster = client.cluster
    try:
        client.close(timeout=5)
        if cluster is not None:
            cluster.close(timeout=5)
    except Exception:  # pragma: no cover - best effort, at exit or after a Ctrl-C
        pass


def shutdown() -> None:
    """Close the worker processes of every pool lazyusid started."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        _close(pool)
