"""Does a value fit its output's dtype? Checked for every value a function returns (docs/design.md, decision 9).

A float after an output inferred as integer, a complex value for a real
output, an integer out of range, a string or ``None`` would otherwise be
stored cast (or as NaN). :func:`fit` returns the value ready to store or
raises :class:`Unfit`, which :mod:`lazyusid.core.function` turns into an error
naming the position and the fix.
"""

from __future__ import annotations

import functools

import numpy as np

#: (value dtype, or Python type of a value without one; output dtype) → True when the value always
#: fits, a ``range`` a Python int must be in; other verdicts ("range": NumPy integers checked by
#: value, "convert", "refuse") take the slow path of _fit
VERDICTS: dict = {}
_PYTHON_DTYPES = {bool: np.dtype(bool), float: np.dtype(float), complex: np.dtype(complex)}


class Unfit(Exception):
    """A value an output cannot hold: what came, the dtype that would hold it, and the row (vectorised)."""

    def __init__(self, output, value, what: str, suggest, row: int | None = None):
        super().__init__(what)
        self.output, self.value, self.what, self.suggest, self.row = output, value, what, suggest, row


def _judge(value, out: np.dtype):
    """The verdict for ``value`` into ``out``: True (fits), "range" (integers: by value), "convert", "refuse"."""
    if value is None or isinstance(value, (str, bytes)):
        return "refuse"
    if out.fields is not None:  # a compound output: NumPy assigns (and checks) field by field
        return True
    dtype = getattr(value, "dtype", None)
    if not isinstance(dtype, np.dtype):
        if isinstance(value, int) and not isinstance(value, bool):  # any size: checked by value,
            if out.kind in "iu" and type(value) is int:  # in the loop: `value in range(...)`, O(1)
                return range(int(_bounds(out).min), int(_bounds(out).max) + 1)
            if out.kind in "iu":  # an int subclass: `in range` would iterate
                return "range"
            return True if out.kind in "fc" else "refuse"
        dtype = next((d for t, d in _PYTHON_DTYPES.items() if isinstance(value, t)), None)
        if dtype is None:
            return "convert"  # a list, a tuple: as an array, then judged by its dtype
    if np.can_cast(dtype, out, "safe"):
        return True
    if dtype.kind in "iu" and out.kind in "iu":
        return "range"
    if out.kind not in "iub" and np.can_cast(dtype, out, "same_kind"):
        return True  # float64 into float32: rounding to the declared precision is asked for
    return "refuse"


def fit(value, output, *, rows: bool = False):
    """``value`` ready to store in ``output`` (lists as arrays), or :class:`Unfit`.

    ``rows``: ``value`` holds a block (positions first); an integer out of
    range names its row.
    """
    out = output.dtype
    dtype = getattr(value, "dtype", None)
    key = (type(value) if dtype is None else dtype, out)
    try:
        verdict = VERDICTS.get(key)
    except TypeError:  # a foreign, unhashable dtype
        verdict, key = None, None
    if verdict is None:
        verdict = _judge(value, out)
        if key is not None:  # a verdict depends on the key only: values are checked below
            VERDICTS[key] = verdict
    if verdict is True:
        return value
    if verdict == "convert":
        return fit(np.asarray(value), output, rows=rows)
    if verdict == "range" or isinstance(verdict, range):
        info = _bounds(out)
        if isinstance(value, (int, np.integer)):  # a scalar: compared as a Python int, exactly
            if info.min <= int(value) <= info.max:
                return value
            bad, row = int(value), None
            kind = "an int" if isinstance(value, int) else _article(value.dtype)
            what = f"{kind} ({bad!r}), outside the range of {out} ({info.min} to {info.max})"
        else:
            arr = np.asarray(value)
            outside = (arr < info.min) | (arr > info.max)
            if not outside.any():
                return value
            flat = int(np.argmax(outside.reshape(-1)))
            bad = arr.reshape(-1)[flat].item()
            row = int(np.unravel_index(flat, arr.shape)[0]) if rows and arr.ndim else None
            what = f"{_article(arr.dtype)} ({bad!r}), outside the range of {out} ({info.min} to {info.max})"
        holds = next((d for d in ("int64", "uint64") if np.iinfo(d).min <= bad <= np.iinfo(d).max), "float64")
        raise Unfit(output, bad, what, np.dtype(holds), row)
    if value is None:
        raise Unfit(output, None, "None", None)
    if isinstance(value, (str, bytes)) or (isinstance(dtype, np.dtype) and dtype.kind in "OUSV"):
        what = f"a {type(value).__name__} ({value_text(value)})"
        raise Unfit(output, value, what, None)
    vdtype = _PYTHON_DTYPES.get(type(value), dtype)
    what = f"{_article(vdtype)} ({value_text(value)})"
    try:
        suggest = np.result_type(vdtype, out)
    except TypeError:
        suggest = None
    raise Unfit(output, value, what, suggest)


@functools.cache
def _bounds(dtype: np.dtype) -> np.iinfo:
    return np.iinfo(dtype)


def _article(dtype: np.dtype) -> str:
    name = str(dtype)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def value_text(value) -> str:
    if isinstance(value, np.ndarray) and value.ndim:
        return np.array2string(value, threshold=6, edgeitems=2)
    if isinstance(value, np.ndarray | np.generic):
        return repr(value.item())
    return repr(value)


def fill_value(dtype: np.dtype):
    """What a value not computed reads as: NaN for floats (also in each float field of a record), else 0.

    Examples
    --------
    >>> fill_value(np.dtype([("Amplitude", "f4"), ("n", "i2")]))
    np.void((nan, 0), dtype=[('Amplitude', '<f4'), ('n', '<i2')])
    """
    dtype = np.dtype(dtype)
    if dtype.names is None:
        return np.nan if dtype.kind in "fc" else 0
    fill = np.zeros((), dtype)
    for name in dtype.names:
        fill[name] = fill_value(dtype.fields[name][0])
    return fill[()]
