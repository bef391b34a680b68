"""Where a computation's graph runs: in this thread, on threads, on worker processes, or on a user's cluster.

Per-spectrum Python functions hold the GIL, so they run on worker
processes: lazyusid's session :class:`distributed.LocalCluster` of
single-threaded workers (started once, reused), or the user's
``Client`` (``client=``, or the default client when one is active, e.g.
dask-jobqueue's). Vectorised NumPy functions release the GIL and run on
threads, or on the user's client. Jobs estimated to take less than
:data:`INLINE_SECONDS` run in this thread, and so do jobs that worker
processes would not finish clearly sooner once their start is counted
(:data:`START_MARGIN` times the start-up measured in this session,
:func:`lazyusid.run.pool.startup_seconds`; nothing once the pool is up).
Choosing worker processes starts them, in the background
(:mod:`lazyusid.run.pool`). The choice is a value (:class:`Scheduler`)
made before anything runs, shown with the plan, and it is what runs
(docs/design.md, decision 4).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass

import dask

from ..core.plan import parse_cores
from . import pool
from .pool import shared_client

#: per-spectrum jobs whose estimated run time is below this run in this thread
INLINE_SECONDS = 1.0
#: worker processes still to start are chosen only when they would save this many times their start:
#: both the one-call estimate and the start vary by tens of percent from run to run, and a wrong
#: "processes" costs the whole start, a wrong "this thread" at most half of it (benchmark 8's fresh rows)
START_MARGIN = 1.5

_lock = threading.Lock()
#: clients of the users' schedulers lazyusid connected to, by address
_pool: dict = {}
#: the users' clients given to choose_scheduler, by scheduler address
_user_clients: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def default_cores() -> int:
    """All cores but one, leaving one for the client (but two on a two-core machine).

    On two cores the client process mostly waits for results, so both cores
    are given to workers.
    """
    n = os.cpu_count() or 1
    return n if n <= 2 else n - 1


@dataclass(frozen=True)
class Scheduler:
    """Where the blocks of a computation run.

    Attributes
    ----------
    kind : str
        ``"sync"`` (this thread), ``"threads"`` (this process),
        ``"processes"`` (lazyusid's worker processes) or ``"client"``
        (the user's cluster, at ``address``).
    workers : int
        Blocks that run at the same time.
    reason : str
        Why, in words.
    """

    kind: str
    workers: int
    reason: str
    address: str | None = None

    def __str__(self) -> str:
        return self.reason

    @property
    def distributed(self) -> bool:
        """Whether a ``distributed`` scheduler runs the graph (lazyusid's processes or the user's client)."""
        return self.kind in ("processes", "client")

    def client(self):
        """The ``distributed.Client`` of a distributed scheduler (lazyusid's pool is started on first use)."""
        if self.kind == "processes":
            return shared_client(self.workers)
        if self.kind == "client":
            return client_at(self.address)
        raise ValueError(f"a {self.kind!r} scheduler has no client")

    def get(self, dsk, keys, **kwargs):
        """Compute ``keys`` of graph ``dsk`` here (a dask scheduler ``get``)."""
        if self.distributed:
            return self.client().get(dsk, keys, **kwargs)
        if self.kind == "threads":
            return dask.threaded.get(dsk, keys, num_workers=self.workers, **kwargs)
        return dask.get(dsk, keys, **kwargs)


def choose_scheduler(
    *,
    vectorized: bool,
    estimated_seconds: float,
    cores: int | None,
    client=None,
    in_process: str | None = None,
    module: str | None = None,
) -> Scheduler:
    """Pick where the blocks run (see the module's description); start lazyusid's worker processes if they will.

    Parameters
    ----------
    vectorized : bool
    estimated_seconds : float
        Estimated run time of a per-spectrum job in one thread.
    cores : int, optional
        Parallel workers (default: :func:`default_cores`, or the threads of the user's cluster).
    client : distributed.Client, optional
        The user's cluster; default: the active default client, if any.
    in_process : str, optional
        Why the blocks must run in this process (e.g. they read a file this process writes), or None.
    module : str, optional
        The function's module: lazyusid's workers import it while they start.

    Raises
    ------
    lazyusid.UnguardedMainError
        When worker processes would be started from a script's top level
        outside ``if __name__ == "__main__":`` (before any process starts).
    """
    cores = parse_cores(cores)
    if client is None:
        client = _default_client()
    if in_process is not None:
        n = cores or default_cores()
        if n == 1:
            return Scheduler("sync", 1, f"this thread ({in_process})")
        return Scheduler("threads", n, f"{n} threads in this process ({in_process})")
    if client is not None:
        address = client.scheduler.address
        _user_clients[address] = client
        n = cores or _client_threads(client)
        return Scheduler("client", n, f"the distributed Client at {address}", address)
    machine = os.cpu_count() or 1
    if cores is not None and cores > machine:
        warnings.warn(
            f"cores={cores} is more than this machine's {machine} cores; using {machine}. Pass client= to "
            "compute on a cluster.",
            stacklevel=3,
        )
        cores = machine
    n = cores or default_cores()
    if vectorized:
        if n == 1:
            return Scheduler("sync", 1, "this thread (vectorised function, cores=1)")
        return Scheduler("threads", n, f"{n} threads (vectorised function)")
    if n == 1:
        return Scheduler("sync", 1, "this thread (cores=1)")
    if estimated_seconds < INLINE_SECONDS:
        return Scheduler("sync", 1, f"this thread (small job: ~{estimated_seconds:.2g} s estimated)")
    pending = pool.pending_seconds(n)
    if estimated_seconds * (1 - 1 / n) < START_MARGIN * pending:  # n workers might not finish sooner
        return Scheduler(
            "sync",
            1,
            f"this thread (~{estimated_seconds:.2g} s estimated: {n} worker processes would save less than "
            f"{START_MARGIN:g}× their ~{pending:.2g} s start)",
        )
    pool.start_pool(n, module)  # in the background: the caller plans and prepares meanwhile
    return Scheduler("processes", n, f"{n} worker processes")


def _default_client():
    if "distributed" not in sys.modules:  # nobody started a client: no need to import distributed (~0.3 s)
        return None
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    return client if client.status == "running" else None


def _client_threads(client) -> int:
    """Worker threads of a user's cluster (the machine's default when no worker has joined yet)."""
    try:
        threads = sum(client.nthreads().values())
    except Exception:
        threads = 0
    return threads or default_cores()


def client_at(address: str):
    """The user's client of the scheduler at ``address`` (or a new one, kept until :func:`shutdown`)."""
    client = _user_clients.get(address)
    if client is not None and client.status == "running":
        return client
    from distributed import Client

    with _lock:
        client = _pool.get(address)
        if client is None or client.status != "running":
            client = Client(address, set_as_default=False)
            _pool[address] = client
        return client


def forget(scheduler: Scheduler) -> None:
    """Drop lazyusid's pool of ``scheduler`` after an interruption killed its workers (closed in the background)."""
    if scheduler.kind == "processes":
        pool.forget(scheduler.workers)


@atexit.register
def shutdown() -> None:
    """Close the worker processes lazyusid started (also called at exit)."""
    pool.shutdown()
    with _lock:
        clients = list(_pool.values())
        _pool.clear()
    for client in clients:
        pool.close_client(client)
