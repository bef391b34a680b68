"""Progress bars for block computations (tqdm: terminal and notebook)."""

from __future__ import annotations

import threading

from tqdm.auto import tqdm

_lock = threading.Lock()
_bars: dict[str, tqdm] = {}


def tick(key: str, total: int, desc: str, done: int = 1) -> None:
    """Count ``done`` finished blocks of the computation ``key`` (``total`` in all).

    ``done=0`` when a block starts shows the bar from the start of the run.
    """
    with _lock:
        bar = _bars.get(key)
        if bar is None or bar.n >= total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=desc, unit="block", dynamic_ncols=True, delay=1.0)
            _bars[key] = bar
        bar.update(done)
        if bar.n >= total:
            bar.close()
            del _bars[key]


def close(key: str) -> None:
    """Close the bar of ``key`` early (the computation stopped)."""
    with _lock:
        bar = _bars.pop(key, None)
        if bar is not None:
            bar.close()
