"""A user function with its parameters and outputs, as one frozen value.

:class:`SpectralFunction` is what travels to worker processes: it holds the
callable, its parameters, whether it is per-spectrum or per-block, and the
declared (or inferred) outputs. :meth:`SpectralFunction.evaluate` runs it
over one block of spectra and reports failures with their position. Every
value must fit its output's dtype without loss (docs/design.md, decision 9):
``np.can_cast(value, dtype, "same_kind")``, integers by value, never a
silent cast.
"""

from __future__ import annotations

import functools
import inspect
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import OutputDtypeError, SpectralFunctionError
from .casting import VERDICTS, Unfit, fit
from .describe import describe, locate, short
from .outputs import Output, unfit_error

#: what a function may do at a position where it raises: stop the run, or give the fill value there
ON_ERROR = ("raise", "skip")
#: errors kept per block (and per stored result) with ``on_error="skip"``
MAX_ERRORS = 20
#: name of the per-position failure flags (mask) of a result computed with ``on_error="skip"``
FAILED = "failed_positions"


#: input bytes per call of a vectorised function: a block is handed to it in pieces of about this size, which
#: stay in the CPU's cache between its NumPy steps (docs/design.md, decision 4)
PIECE_BYTES = 1 << 20

#: Python scalar types, whose shape is () (checked without calling np.shape in the per-spectrum loop)
PY_SCALARS = frozenset({float, int, bool, complex})


@dataclass(frozen=True)
class SpectralFunction:
    """A function applied to every spectrum (or every block of spectra).

    Parameters
    ----------
    func : callable
        ``func(spectrum, **params)`` or, with ``vectorized=True``,
        ``func(block, **params)`` where ``block`` has the positions first.
    params : mapping
        Keyword arguments for ``func`` that are the same at every position.
    outputs : tuple of Output
        What ``func`` returns, in order.
    vectorized : bool
    single : bool
        Whether ``func`` returns one unnamed value (not a tuple or dict).
    on_error : {"raise", "skip"}
        At a position where ``func`` raises: stop (raise
        :class:`~lazyusid.SpectralFunctionError`), or give the outputs their
        fill value there and record the position as failed.
    """

    func: Callable
    params: Mapping
    outputs: tuple[Output, ...]
    vectorized: bool = False
    single: bool = True
    on_error: str = "raise"

    def __post_init__(self):
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")

    @property
    def name(self) -> str:
        return getattr(self.func, "__name__", type(self.func).__name__)

    @property
    def wants_position(self) -> bool:
        """Whether ``func`` takes a ``position`` keyword (the N-D index of its spectrum, or of the block's)."""
        return "position" not in self.params and takes_position(self.func)

    def split(self, result) -> list:
        """The outputs of one call, in order, checking their number."""
        if self.single:
            return [result]
        if isinstance(result, Mapping):
            missing = [o.name for o in self.outputs if o.name not in result]
            if missing:
                raise ValueError(f"returned dict lacks outputs {missing}; it has {list(result)}")
            return [result[o.name] for o in self.outputs]
        if not isinstance(result, (tuple, list)) or len(result) != len(self.outputs):
            raise ValueError(
                f"expected {len(self.outputs)} outputs {[o.name for o in self.outputs]}, got {describe(result)}"
            )
        return list(result)

    def evaluate(
        self, block: np.ndarray, *, first: int = 0, loop_shape=(), loop_dims=(), extras=None, mask=None
    ) -> tuple:
        """Run the function over a block of spectra ``(positions, *core)``.

        ``first`` is the flat index of the block's first position; with
        ``loop_shape`` and ``loop_dims`` it turns a failure into a message
        naming the position. ``extras`` holds the block's slice of each
        per-position input (an array with the positions first, or a dict of
        them for a Dataset); ``mask`` (bool per position) the positions to
        evaluate, the others keep their fill value. Returns the outputs; with
        ``on_error="skip"`` followed by ``failed`` (uint8 per position) and
        the first errors (dicts of position, index, type and message).
        """
        n = block.shape[0]
        plain = not extras and mask is None and self.on_error == "raise" and not self.wants_position
        if plain:
            outs = tuple(np.empty((n, *o.shape), dtype=o.dtype) for o in self.outputs)
            if self.vectorized:
                step = max(1, PIECE_BYTES // max(1, block[:1].nbytes))
                for start in range(0, max(n, 1), step):
                    piece = tuple(out[start : start + step] for out in outs)
                    self._vectorized(
                        block[start : start + step], piece, first + start, loop_shape, loop_dims, self.params
                    )
            else:
                self._per_spectrum(block, outs, first, loop_shape, loop_dims)
            return outs
        outs = self.filled(n)[: len(self.outputs)]
        where = np.arange(n) if mask is None else np.flatnonzero(mask)
        failed = np.zeros(n, np.uint8)
        errors: list[dict] = []
        if self.vectorized and where.size:
            try:
                self._vectorized_at(block, outs, where, first, loop_shape, loop_dims, extras)
                where = where[:0]
            except SpectralFunctionError:
                if self.on_error == "raise":
                    raise
                # find the positions that fail: one call per position
        for i in where.tolist():
            try:
                if self.vectorized:
                    self._vectorized_at(block, outs, np.array([i]), first, loop_shape, loop_dims, extras)
                else:
                    kwargs = self._kwargs(extras, i, first, loop_shape)
                    self._per_spectrum(block[i : i + 1], outs, first + i, loop_shape, loop_dims, kwargs, i)
            except SpectralFunctionError as exc:
                if self.on_error == "raise":
                    raise
                failed[i] = 1
                for out, o in zip(outs, self.outputs):
                    out[i] = o.fill
                if len(errors) < MAX_ERRORS:
                    cause = exc.__cause__ or exc
                    errors.append(
                        {
                            "position": first + i,
                            "index": exc.coords,
                            "type": type(cause).__name__,
                            "message": str(cause)[:500],
                        }
                    )
        return outs if self.on_error == "raise" else (*outs, failed, errors)

    def filled(self, n: int) -> tuple:
        """The outputs of ``n`` positions not evaluated: fill values (what :meth:`evaluate` returns)."""
        outs = tuple(np.full((n, *o.shape), o.fill, dtype=o.dtype) for o in self.outputs)
        return outs if self.on_error == "raise" else (*outs, np.zeros(n, np.uint8), [])

    def _kwargs(self, extras, i, first, loop_shape, rows=None) -> Mapping:
        """The keyword arguments at position ``i`` of the block (``rows``: of the positions ``rows``, vectorised)."""
        if not extras and not self.wants_position:
            return self.params
        kwargs = dict(self.params)
        at = i if rows is None else rows
        for key, value in (extras or {}).items():
            kwargs[key] = {k: v[at] for k, v in value.items()} if isinstance(value, dict) else value[at]
        if self.wants_position:
            index = np.unravel_index(first + at, loop_shape) if loop_shape else ()
            kwargs["position"] = (
                tuple(int(j) for j in index) if rows is None else tuple(np.asarray(j) for j in index)
            )
        return kwargs

    def _vectorized_at(self, block, outs, rows, first, loop_shape, loop_dims, extras) -> None:
        """The vectorised function on the positions ``rows`` of the block."""
        whole = rows.size == block.shape[0]
        part = tuple(np.empty((rows.size, *o.shape), dtype=o.dtype) for o in self.outputs)
        kwargs = self._kwargs(
            extras, None, first, loop_shape, rows=rows if not whole else np.arange(rows.size)
        )
        self._vectorized(
            block if whole else block[rows], part, first + int(rows[0]), loop_shape, loop_dims, kwargs
        )
        for out, values in zip(outs, part):
            out[rows] = values

    def _vectorized(self, block, outs, first, loop_shape, loop_dims, kwargs) -> None:
        n = block.shape[0]
        try:
            parts = self.split(self.func(block, **kwargs))
            for out, part, o in zip(outs, parts, self.outputs):
                part = np.asarray(part)
                if part.shape != out.shape:
                    raise ValueError(f"output {o.name!r} has shape {part.shape}, expected {out.shape}")
                if VERDICTS.get((part.dtype, o.dtype)) is not True:
                    fit(part, o, rows=True)
                out[...] = part
        except Unfit as unfit:
            at = first + unfit.row if unfit.row is not None else first
            stop = None if unfit.row is not None else first + n
            raise self._unfit_error(unfit, at, stop, loop_shape, loop_dims) from None
        except Exception as exc:
            raise self._error(exc, first, first + n if n > 1 else None, loop_shape, loop_dims) from exc

    def _per_spectrum(self, block, outs, first, loop_shape, loop_dims, params=None, row=0) -> None:
        """The function on each spectrum of ``block``, into ``outs`` from row ``row`` on.

        A scalar output takes a value of a class already found to fit it as it
        is (a Python float into float64) without the checks of :meth:`_store`:
        with a function of ~55 µs, these checks cost it ~7 %, as they run
        when the CPU's caches hold the function's code, not the loop's.
        """
        params = self.params if params is None else params
        call = functools.partial(self.func, **params) if params else self.func
        scalar = self.single and self.outputs[0].shape == ()
        out, fast = outs[0], set()
        i = 0
        try:
            for i in range(block.shape[0]):
                part = call(block[i])
                if part.__class__ in fast:
                    out[row + i] = part
                elif self._store(outs, part, row + i) and scalar:
                    fast.add(part.__class__)
        except Unfit as unfit:
            raise self._unfit_error(unfit, first + i, None, loop_shape, loop_dims) from None
        except Exception as exc:
            raise self._error(exc, first + i, None, loop_shape, loop_dims) from exc

    def _store(self, outs, result, at: int) -> bool:
        """Check one call's outputs and store them in row ``at``: whether its (last) value's class always fits."""
        known = False
        for out, part, o in zip(outs, self.split(result), self.outputs):
            python = part.__class__ in PY_SCALARS
            shape = () if python else getattr(part, "shape", None)
            if (np.shape(part) if shape is None else shape) != o.shape:  # would broadcast silently
                raise ValueError(f"output {o.name!r} has shape {np.shape(part)}, expected {o.shape}")
            # a cached verdict per (value dtype or Python type, output dtype); anything but
            # "fits" takes the slow path, which converts, checks by value, or refuses
            dtype = getattr(part, "dtype", None)
            fits = VERDICTS.get((type(part) if dtype is None else dtype, o.dtype))
            # a NumPy scalar class of these kinds has one dtype: its class decides, as a Python type does
            known = fits is True and (python or (isinstance(part, np.generic) and part.dtype.kind in "biufc"))
            if fits is not True and not (fits.__class__ is range and part in fits):
                part = fit(part, o)
            out[at] = part
        return known

    def _unfit_error(self, unfit: Unfit, start, stop, loop_shape, loop_dims) -> OutputDtypeError:
        where, coords = locate(start, stop, loop_shape, loop_dims)
        return unfit_error(self.name, self.params, self.outputs, unfit, where, start, coords)

    def _error(self, exc, start, stop, loop_shape, loop_dims) -> SpectralFunctionError:
        where, coords = locate(start, stop, loop_shape, loop_dims)
        tb = "".join(traceback.format_exception(exc)).rstrip()
        message = (
            f"{self.name} failed at {where} with params {short(self.params)}: "
            f"{type(exc).__name__}: {exc}\n\nOriginal traceback:\n{tb}"
        )
        return SpectralFunctionError(message, position=start, coords=coords)


def takes_position(func) -> bool:
    """Whether ``func`` has a parameter named ``position`` (lazyusid then passes the N-D index)."""
    try:
        return "position" in inspect.signature(func).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
