"""How positions, values and parameters are named in lazyusid's messages."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def locate(start, stop=None, loop_shape=(), loop_dims=()) -> tuple[str, dict]:
    """``"position 13 (Y=2, X=1)"`` or ``"the block of positions 10:15 (...)"``, and the N-D indices."""
    coords = {}
    if loop_shape:
        coords = dict(zip(loop_dims, (int(i) for i in np.unravel_index(start, loop_shape))))
    where = f"position {start}" if stop is None else f"the block of positions {start}:{stop}"
    return where + coords_text(coords), coords


def coords_text(coords: Mapping) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in coords.items())})" if coords else ""


def describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def short(params: Mapping, limit: int = 300) -> str:
    """Parameters in one line: arrays as ``array(shape=…, dtype=…)``, long texts cut.

    Examples
    --------
    >>> short({"k": 2, "w": np.zeros((3, 4))})
    "{'k': 2, 'w': array(shape=(3, 4), dtype=float64)}"
    """
    text = "{" + ", ".join(f"{k!r}: {_value(v)}" for k, v in dict(params).items()) + "}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value(value) -> str:
    if isinstance(value, np.ndarray) or (hasattr(value, "dims") and hasattr(value, "shape")):
        kind = type(value).__name__ if not isinstance(value, np.ndarray) else "array"
        dims = f"dims={tuple(value.dims)}, " if hasattr(value, "dims") else ""
        return f"{kind}({dims}shape={tuple(value.shape)}, dtype={getattr(value, 'dtype', '?')})"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, Mapping):
        return short(value, limit=120)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
