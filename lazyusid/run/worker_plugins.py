"""Worker plugins of lazyusid's own pool (a module of its own: it imports distributed, which the pool loads late)."""

from __future__ import annotations

import signal

from distributed import WorkerPlugin


class IgnoreInterrupts(WorkerPlugin):
    """The worker processes of lazyusid's own pool ignore SIGINT.

    A terminal's Ctrl-C reaches every process of its group: the client
    checkpoints, says so in one line and closes the pool, while each worker
    process interrupted by the same signal printed its own ~30-line
    ``KeyboardInterrupt`` traceback after that line. Registered on the
    pool's client, so workers the nanny restarts ignore it too.
    """

    idempotent = True

    def setup(self, worker) -> None:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the process's main thread: leave the default
            pass
