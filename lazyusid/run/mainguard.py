"""Refuse to start worker processes from a script's unguarded top level, before any process starts.

Worker processes started with ``spawn`` or ``forkserver`` (distributed's
default is ``spawn``) import the main script of the process that starts
them, as ``__mp_main__``. A computation called at the top level of a
script, outside ``if __name__ == "__main__":``, then runs again in every
worker, which tries to start workers of its own: hundreds of lines of
tracebacks and no result. :func:`refuse_unguarded_main` recognises that
situation from the call stack and raises one clear error instead, before
any process starts or any byte is written.

Interactive sessions, notebooks, ``python -c`` and ``python - < script``
have no main *file* to import, so they need no guard and are never refused.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
from types import FrameType

from ..errors import UnguardedMainError

#: start methods whose new processes import the parent's main module
IMPORTING_METHODS = ("spawn", "forkserver")


def refuse_unguarded_main(workers: int, start_method: str) -> None:
    """Raise :class:`~lazyusid.UnguardedMainError` if worker processes started now would rerun the caller.

    Parameters
    ----------
    workers : int
        Worker processes about to be started (for the message).
    start_method : str
        How they start (``"spawn"``, ``"forkserver"`` or ``"fork"``); ``"fork"`` imports nothing.
    """
    if start_method not in IMPORTING_METHODS:
        return
    frame = unguarded_main_frame(sys._getframe(1))
    if frame is None:
        return
    where = f"{frame.f_code.co_filename}, line {frame.f_lineno}"
    if frame.f_globals.get("__name__") == "__mp_main__":
        what = (
            f"this code runs while a worker process imports the main script ({where}): the script calls "
            "lazyusid at its top level"
        )
    else:
        what = (
            f'this code runs at the top level of the script {where}, not under `if __name__ == "__main__":`'
        )
    raise UnguardedMainError(
        f"lazyusid would start {workers} worker processes, but {what}. Worker processes are started with "
        f"{start_method!r}: each imports the script, which would run the same computation again in every "
        'worker. Put the code that computes under `if __name__ == "__main__":` (functions the workers '
        "need may stay at the top level), or pass cores=1 to compute in this process, or client= to "
        "compute on your own cluster. Nothing was computed or written."
    )


def unguarded_main_frame(frame: FrameType | None) -> FrameType | None:
    """The frame (from ``frame`` outwards) running a main script's top level outside its ``__main__`` guard.

    A frame counts when it executes module-level code (``<module>``) of
    either ``__mp_main__`` (a spawned child importing its parent's script:
    never guarded) or ``__main__`` loaded from a file that this line of it
    is not under ``if __name__ == "__main__":``. A source that cannot be
    read or parsed counts as guarded (no false alarm).
    """
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            name = frame.f_globals.get("__name__")
            if name == "__mp_main__":
                return frame
            if (
                name == "__main__"
                and _is_script(frame)
                and not _guarded(frame.f_code.co_filename, frame.f_lineno)
            ):
                return frame
        frame = frame.f_back
    return None


def _is_script(frame: FrameType) -> bool:
    """Whether the frame runs the main module's own file (not ``-c``, stdin, or code exec'd from a string)."""
    path = frame.f_globals.get("__file__")
    if not isinstance(path, str) or not os.path.isfile(path):
        return False
    try:
        return os.path.samefile(path, frame.f_code.co_filename)
    except OSError:
        return False


def _guarded(path: str, line: int) -> bool:
    """Whether ``line`` of the script ``path`` is inside an ``if __name__ == "__main__":`` block."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return True
    spans = _guarded_spans(path, mtime)
    return spans is None or any(a <= line <= b for a, b in spans)


@functools.lru_cache(maxsize=16)
def _guarded_spans(path: str, mtime: int) -> tuple[tuple[int, int], ...] | None:
    """Line spans of a script's ``__main__``-guarded blocks (None when it cannot be parsed)."""
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _names_main(node.test):
            negated = any(isinstance(op, ast.NotEq) for op in getattr(node.test, "ops", ()))
            block = node.orelse if negated else node.body
            if block:
                spans.append((block[0].lineno, block[-1].end_lineno or block[-1].lineno))
    return tuple(spans)


def _names_main(test: ast.expr) -> bool:
    """Whether a condition compares ``__name__`` with ``"__main__"``."""
    nodes = list(ast.walk(test))
    has_name = any(isinstance(n, ast.Name) and n.id == "__name__" for n in nodes)
    has_main = any(isinstance(n, ast.Constant) and n.value == "__main__" for n in nodes)
    return has_name and has_main
