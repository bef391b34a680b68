"""Where blocks run: in-process, on threads, or in worker processes.

Per-spectrum Python functions hold the GIL, so they run in worker
processes of a :class:`distributed.LocalCluster` that is started once per
session and reused (DESIGN.md, decision 4). Vectorised NumPy functions
release the GIL and run on threads. Small jobs run in-process.

The dask graph itself runs on whatever scheduler computes it; each block
task hands its function evaluation to the process pool when the plan says
so, unless it already runs inside a distributed worker (the user's own
``Client``, e.g. from dask-jobqueue), where it evaluates in place.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from dataclasses import dataclass

import numpy as np

#: per-spectrum jobs whose estimated run time is below this run in-process
INLINE_SECONDS = 1.0
#: arrays at least this large are scattered to a worker rather than sent inside the task
SCATTER_BYTES = 2**20

_lock = threading.Lock()
_pool: dict = {}


def default_cores() -> int:
    """All cores but one, leaving one for the client (but two on a two-core machine).

    On two cores the client process mostly waits for results, so both cores
    are given to workers.
    """
    n = os.cpu_count() or 1
    return n if n <= 2 else n - 1


@dataclass(frozen=True)
class Executor:
    """How block tasks evaluate the function.

    ``"inline"`` in the task itself; ``"processes"`` on lazyusid's shared
    process pool; ``"client"`` on the workers of the user's ``Client``,
    whose scheduler is at ``address``. A task that already runs on a
    distributed worker always evaluates in place.
    """

    kind: str = "inline"
    cores: int = 1
    address: str | None = None

    def run(self, fn, *args, **kwargs):
        if self.kind == "inline" or _in_distributed_worker():
            return fn(*args, **kwargs)
        return self._client().submit(fn, *args, **kwargs, pure=False).result()

    def put(self, block):
        """Where tasks find ``block``: the array itself in process, else a future of it on a worker.

        A large block is scattered to a worker (directly, for lazyusid's own
        local workers): inside a task it would also wait in the scheduler, and
        the caller keeps no copy once it drops its own reference (measured on
        a chunked 2 GiB source, benchmark 3: the client process grew 324 MiB
        with blocks inside tasks, 207 MiB scattered).
        """
        if self.kind == "inline" or _in_distributed_worker():
            return block
        if not isinstance(block, np.ndarray) or block.nbytes < SCATTER_BYTES:
            return block
        return self._client().scatter(block, direct=self.kind == "processes" or None, hash=False)

    def _client(self):
        return shared_client(self.cores) if self.kind == "processes" else client_at(self.address)


#: the users' clients given to choose_executor, by scheduler address
_user_clients: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


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


def _in_distributed_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def shared_client(cores: int):
    """The session's process-pool client with ``cores`` workers, started on first use."""
    from distributed import Client, LocalCluster

    with _lock:
        client = _pool.get(cores)
        if client is None or client.status != "running":
            try:
                cluster = LocalCluster(
                    n_workers=cores,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # a free port: None still binds 8787 and warns
                    silence_logs=logging.CRITICAL,
                )
            except RuntimeError as exc:
                raise RuntimeError(
                    f"could not start {cores} worker processes ({exc}). In a script, put the code that "
                    'computes under `if __name__ == "__main__":` (worker processes import the script), '
                    "or pass cores=1 to run in-process."
                ) from exc
            client = Client(cluster, set_as_default=False)
            _pool[cores] = client
        return client


@atexit.register
def shutdown() -> None:
    """Close the worker processes lazyusid started (also called at exit)."""
    with _lock:
        for client in _pool.values():
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
        _pool.clear()


def _client_threads(client) -> int:
    """Worker threads of a user's cluster (the machine's default when no worker has joined yet)."""
    try:
        threads = sum(client.nthreads().values())
    except Exception:
        threads = 0
    return threads or default_cores()


def choose_executor(
    *, vectorized: bool, estimated_seconds: float, cores: int | None, client
) -> tuple[Executor, str]:
    """Pick the executor and the scheduler to recommend; explain the choice in the second item."""
    if cores is None:
        cores = default_cores() if client is None else _client_threads(client)
    cores = int(cores)
    if cores < 1:
        raise ValueError(f"cores must be at least 1, got {cores}")
    if client is not None:
        address = client.scheduler.address
        _user_clients[address] = client
        return Executor("client", cores, address), "the given distributed Client"
    if vectorized:
        return Executor("inline", cores), "threads (vectorised function)"
    if cores == 1 or estimated_seconds < INLINE_SECONDS:
        return Executor("inline", 1), "in-process (small job)" if cores > 1 else "in-process (cores=1)"
    return Executor("processes", cores), f"{cores} worker processes"
