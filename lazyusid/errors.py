"""Exceptions raised by lazyusid.

Every error derives from :class:`LazyUSIDError` and also from the builtin
exception that callers already catch (``ValueError``, ``KeyError``, ...).
"""

from __future__ import annotations


class LazyUSIDError(Exception):
    """Base class of every lazyusid error."""


class InvalidUSIDError(LazyUSIDError, ValueError):
    """A dataset is not a valid USID main dataset.

    The message names the dataset and the missing or inconsistent piece.
    """


class DatasetSelectionError(LazyUSIDError, KeyError):
    """The requested main dataset does not exist, or none was named among several."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class BudgetError(LazyUSIDError, ValueError):
    """A memory budget cannot hold even one position."""


class SpectralFunctionError(LazyUSIDError, RuntimeError):
    """The user's function failed (or returned something unusable) at a position.

    Attributes
    ----------
    position : int or None
        Flat index of the failing position (row of the flattened loop dimensions).
    coords : dict
        Its N-D index along each loop dimension.
    """

    def __init__(self, message: str, position: int | None = None, coords: dict | None = None):
        super().__init__(message)
        self.position = position
        self.coords = dict(coords or {})

    def __reduce__(self):  # keep attributes when sent back from a worker process
        return (type(self), (self.args[0], self.position, self.coords))


class WorkerCrashedError(SpectralFunctionError):
    """The user's function took its worker process down (killed, segfault, ``os._exit``) in a block.

    ``position`` is the block's first position; every worker that tried the block died.
    """


class ReadOnlyStoreError(LazyUSIDError, PermissionError):
    """Results cannot be written where they were asked for (a read-only file or directory)."""


class StoreBusyError(LazyUSIDError, BlockingIOError):
    """Another process holds the target open (HDF5 file lock, or a zarr store's lock file)."""


class StoreConflictError(LazyUSIDError, FileExistsError):
    """The target holds something else under the requested name: it is never overwritten."""


class OutputDtypeError(SpectralFunctionError, TypeError):
    """The function returned a value its output's dtype cannot hold without loss.

    A float after an output inferred as integer, a complex value for a real
    output, an integer out of the output's range, a string or ``None``: each
    would otherwise be stored cast (or as NaN). The message names the
    position, the output's dtype and where it came from, what was returned,
    and the ``outputs=`` declaration that fixes it.
    """


class DiskFullError(LazyUSIDError, OSError):
    """The target's file system is full (``errno.ENOSPC``); finished positions are kept, a rerun resumes.

    ``errno`` is ``ENOSPC``; ``str()`` is the message alone.
    """

    def __init__(self, message: str):
        import errno

        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self):
        return (type(self), (self.strerror,))


class UnguardedMainError(LazyUSIDError, RuntimeError):
    """Worker processes would be started from a script's top level, outside ``if __name__ == "__main__":``.

    Raised before any worker process starts and before anything is written;
    the message says how to fix it (the guard, ``cores=1``, or ``client=``).
    """
