"""The stored driver: compute the blocks still to do and hand each finished one to the sink, in this thread.

On a distributed scheduler (lazyusid's worker processes or the user's
cluster) the blocks are one graph, submitted at once; the scheduler runs
at most one block per worker thread (its root-task queuing) and reruns
elsewhere the blocks of a worker that is lost — each task reads its own
rows, so nothing is lost with it. Finished blocks are taken with
``distributed.as_completed``. On a local scheduler (this thread, or threads)
dask's own callbacks hand each block over as it finishes. Either way the
client thread is the only one that calls the sink (HDF5's single writer).

Ctrl-C or SIGTERM: the finished blocks are checkpointed, outstanding work
is cancelled, one line says what was saved, and ``KeyboardInterrupt`` is
raised.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence

import dask

from ..core.describe import locate
from ..errors import WorkerCrashedError
from ..graph import BlockCallback
from .progress import progress_bar
from .schedulers import forget

#: seconds to wait for the scheduler to cancel outstanding work after an interruption
CANCEL_TIMEOUT_S = 3.0
#: seconds to wait for lazyusid's pool to restart the workers a crashing function killed
RESTART_TIMEOUT_S = 30.0


def run_blocks(
    smap,
    ranges: Sequence[tuple[int, int]],
    on_block: Callable[[int, int, object], None],
    *,
    write: Callable | None = None,
    progress: bool = True,
) -> None:
    """Compute the blocks ``ranges`` (positions ``a:b``) of ``smap`` and call ``on_block(a, b, outs)`` for each.

    ``on_block`` runs in this thread, as blocks finish (in any order). With
    ``write`` the tasks store their outputs themselves and ``outs`` is what
    they return instead (see :func:`lazyusid.graph.run_block`).
    If a block fails, its error is raised once the blocks that finished
    before it were handed over; the rest are cancelled.
    """
    if not ranges:
        return
    tasks = smap.blocks(ranges, write=write)
    by_key = {t.key: r for t, r in zip(tasks, ranges)}
    bar = progress_bar(len(tasks), smap.function.name, disable=not progress)

    def finished(key, result) -> None:
        a, b = by_key[key]
        on_block(a, b, result)
        bar.update()

    try:
        with _sigterm_as_interrupt():
            if smap.scheduler.distributed:
                _run_distributed(smap, tasks, by_key, finished)
            elif smap.scheduler.kind == "sync":  # one block after another, in the order of the positions
                # a block that reads its own rows is a graph of three small nodes: nothing to optimise
                optimize = smap.reader is None
                for task in tasks:
                    (result,) = dask.compute(
                        task, scheduler=dask.get, optimize_graph=optimize
                    )  # a callable: a name makes dask import distributed
                    finished(task.key, result)
            else:
                with BlockCallback(finished):
                    dask.compute(*[dask.delayed(_nothing)(t) for t in tasks], scheduler=smap.scheduler.get)
    finally:
        bar.close()


def _nothing(_) -> None:
    """What a local run keeps of a block once it was handed over (so the block itself is released)."""
    return None


def _run_distributed(smap, tasks, by_key, finished) -> None:
    from distributed import KilledWorker, as_completed

    client = smap.scheduler.client()
    futures = client.compute(tasks)
    error: BaseException | None = None
    try:
        for future in as_completed(futures, loop=client.loop):
            try:
                result = future.result()
            except KilledWorker as exc:
                error = _crashed(smap, by_key[future.key], exc)
                break
            except Exception as exc:
                error = exc
                break
            finished(future.key, result)
            future.release()
    except KeyboardInterrupt:
        _cancel(client, futures)
        forget(smap.scheduler)  # Ctrl-C in a terminal reaches the worker processes too
        raise
    except BaseException:  # the sink refused a block: nothing wrong with the workers
        _cancel(client, futures)
        raise
    if error is not None:
        _cancel(client, futures)
        if isinstance(error, WorkerCrashedError):
            _await_restarts(smap.scheduler, client)
        raise error


def _cancel(client, futures) -> None:
    done = threading.Event()

    def cancel() -> None:
        with contextlib.suppress(Exception):
            client.cancel(futures, force=True)
        done.set()

    threading.Thread(target=cancel, daemon=True, name="lazyusid-cancel").start()
    done.wait(CANCEL_TIMEOUT_S)


def _await_restarts(scheduler, client) -> None:
    """Wait (at most :data:`RESTART_TIMEOUT_S`) until lazyusid's pool has all its workers again.

    Its nannies live in this process and restart a dead worker at once. A
    process being spawned holds, until it has started, copies of this
    process's open files, the target among them (HDF5 opens it without
    close-on-exec), and so its HDF5 lock: an open of the target right after
    the error would be refused. A user's cluster restarts its workers elsewhere.
    """
    if scheduler.kind != "processes":
        return
    with contextlib.suppress(Exception):  # the error is what matters; a pool that did not recover is redone
        client.wait_for_workers(scheduler.workers, timeout=RESTART_TIMEOUT_S)


def _crashed(smap, block: tuple[int, int], exc: BaseException) -> WorkerCrashedError:
    a, b = block
    where, coords = locate(a, b, smap.loop_shape, smap.loop_dims)
    return WorkerCrashedError(
        f"{smap.function.name} crashed its worker process (killed, segfault or os._exit) in {where}, on "
        f"every worker that tried it ({exc}). Find the position with lazyusid.apply_at(data, func, "
        "position) in a subprocess, or wrap the crashing call.",
        position=a,
        coords=coords,
    )


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread meanwhile (a checkpoint, then stop)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def say_interrupted(saved: int, total: int, target: str) -> None:
    """The one line printed when a stored run is interrupted."""
    print(
        f"interrupted: {saved} of {total} positions saved in {target}; run the same call again to resume",
        file=sys.stderr,
        flush=True,
    )
