"""Running a computation's graph: which scheduler (:mod:`.schedulers`), and the stored driver (:mod:`.driver`)."""

from .schedulers import Scheduler, choose_scheduler, default_cores, shared_client, shutdown

__all__ = ["Scheduler", "choose_scheduler", "default_cores", "shared_client", "shutdown"]
