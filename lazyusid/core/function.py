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

import inspect
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import OutputDtypeError, SpectralFunctionError
from .casting import VERDICTS, Unfit, fill_value, fit, value_text
from .describe import coords_text, describe, locate, short

#: units of an output that declares none: arbitrary units, as pyUSID writes them
DEFAULT_UNITS = "a. u."
#: what a function may do at a position where it raises: stop the run, or give the fill value there
ON_ERROR = ("raise", "skip")
#: errors kept per block (and per stored result) with ``on_error="skip"``
MAX_ERRORS = 20
#: name of the per-position failure flags (mask) of a result computed with ``on_error="skip"``
FAILED = "failed_positions"
#: declared units meaning "the input's units" (its ``attrs["units"]``), resolved when the outputs are inferred
SAME_UNITS = "same"


@dataclass(frozen=True)
class Output:
    """One named output of a function: the shape and dtype it has per spectrum.

    Parameters
    ----------
    name : str
    shape : tuple of int
        ``()`` for a scalar per spectrum.
    dtype : numpy dtype
    dims : tuple of str, optional
        Names of the new dimensions (default ``f"{name}_dim_{i}"``).
    units : str
        Units of the values, stored with them (the USID ``units`` attribute;
        default ``"a. u."``, arbitrary units). ``"same"`` (:data:`SAME_UNITS`)
        stands for the input's units until :func:`infer_outputs` replaces it
        with them.
    inferred_at : int, optional
        The position whose value the dtype was inferred from (``None``:
        declared). Only for messages: not part of equality or identity.
    fill_value : scalar, optional
        What positions not computed (outside a ``roi=``, failed with
        ``on_error="skip"``, not yet computed) hold; default NaN for floats,
        0 otherwise (:func:`~lazyusid.core.casting.fill_value`). It must fit
        the dtype, e.g. ``-1`` for an integer count.
    """

    name: str
    shape: tuple[int, ...] = ()
    dtype: np.dtype = field(default=np.dtype("float64"))
    dims: tuple[str, ...] | None = None
    units: str = DEFAULT_UNITS
    inferred_at: int | None = field(default=None, compare=False, repr=False)
    fill_value: object = None

    def __post_init__(self):
        if not isinstance(self.units, str):
            raise TypeError(f"output {self.name!r}: units must be a str, got {self.units!r}")
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        dims = self.dims or tuple(f"{self.name}_dim_{i}" for i in range(len(self.shape)))
        if len(dims) != len(self.shape):
            raise ValueError(f"output {self.name!r}: {len(dims)} dims {dims} for shape {self.shape}")
        object.__setattr__(self, "dims", tuple(dims))
        if self.fill_value is not None:
            fill = np.asarray(self.fill_value)
            if (
                fill.shape != ()
                or not np.can_cast(fill, self.dtype, "same_kind")
                or (self.dtype.kind in "iub" and np.asarray(fill, self.dtype) != fill)
            ):
                raise TypeError(
                    f"output {self.name!r}: fill_value {self.fill_value!r} does not fit its dtype {self.dtype}; "
                    "give a scalar of that dtype"
                )

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def fill(self):
        """What a value not computed reads as: the declared ``fill_value``, else :func:`fill_value` of the dtype."""
        return fill_value(self.dtype) if self.fill_value is None else self.dtype.type(self.fill_value)

    def to_dict(self) -> dict:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.str, "dims": list(self.dims)}
        if self.units != DEFAULT_UNITS:  # stored with the values: other units, another stored result
            out["units"] = self.units
        if self.fill_value is not None:
            out["fill_value"] = self.fill.item()
        return out


OutputsLike = None | Sequence[str] | Mapping[str, object]


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
                self._vectorized(block, outs, first, loop_shape, loop_dims, self.params)
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
        """The function on each spectrum of ``block``, into ``outs`` from row ``row`` on."""
        params = self.params if params is None else params
        func = self.func
        verdicts = VERDICTS
        for i in range(block.shape[0]):
            try:
                parts = self.split(func(block[i], **params))
                for out, part, o in zip(outs, parts, self.outputs):
                    if np.shape(part) != o.shape:  # assignment would broadcast a wrong shape silently
                        raise ValueError(f"output {o.name!r} has shape {np.shape(part)}, expected {o.shape}")
                    # a cached verdict per (value dtype or Python type, output dtype); anything but
                    # "fits" takes the slow path, which converts, checks by value, or refuses
                    dtype = getattr(part, "dtype", None)
                    fits = verdicts.get((type(part) if dtype is None else dtype, o.dtype))
                    if fits is not True and not (fits.__class__ is range and part in fits):
                        part = fit(part, o)
                    out[row + i] = part
            except Unfit as unfit:
                raise self._unfit_error(unfit, first + i, None, loop_shape, loop_dims) from None
            except Exception as exc:
                raise self._error(exc, first + i, None, loop_shape, loop_dims) from exc

    def _unfit_error(self, unfit: Unfit, start, stop, loop_shape, loop_dims) -> OutputDtypeError:
        where, coords = locate(start, stop, loop_shape, loop_dims)
        o = unfit.output
        origin = (
            "declared" if o.inferred_at is None else f"inferred from the value at position {o.inferred_at}"
        )
        if unfit.value is None:
            head = f"{self.name} returned None for output {o.name!r} at {where}"
            fix = "Return a number for every position (np.nan marks a missing value)."
        else:
            head = f"{self.name} returned a value that output {o.name!r} cannot hold, at {where}"
            fix = (
                "Make the function return numbers."
                if unfit.suggest is None
                else f"Declare the output's dtype: outputs={_declaration(self.outputs, o, unfit.suggest)}."
            )
        message = (
            f"{head}: output {o.name!r} is {o.dtype}, {origin}; it got {unfit.what}. {fix} "
            f"(params {short(self.params)})"
        )
        return OutputDtypeError(message, position=start, coords=coords)

    def _error(self, exc, start, stop, loop_shape, loop_dims) -> SpectralFunctionError:
        where, coords = locate(start, stop, loop_shape, loop_dims)
        tb = "".join(traceback.format_exception(exc)).rstrip()
        message = (
            f"{self.name} failed at {where} with params {short(self.params)}: "
            f"{type(exc).__name__}: {exc}\n\nOriginal traceback:\n{tb}"
        )
        return SpectralFunctionError(message, position=start, coords=coords)


def infer_outputs(
    func,
    sample: np.ndarray,
    params: Mapping,
    outputs: OutputsLike,
    vectorized: bool,
    *,
    position: int = 0,
    coords: Mapping | None = None,
    input_units: str | None = None,
):
    """Run ``func`` on a real sample and describe its outputs.

    ``sample`` is one spectrum (per-spectrum) or a block of a few spectra
    (vectorised), taken at flat ``position`` (N-D indices ``coords``), which
    a failure names. Returns ``(outputs, single)``.

    An output declared with ``units="same"`` (:data:`SAME_UNITS`) gets
    ``input_units``, the units of the data (``data.attrs["units"]``, as
    :func:`lazyusid.open_usid` sets them): the outputs returned, and so the
    stored result and its token, hold the real units. Data without units
    (``input_units=None``, e.g. a NumPy array) have arbitrary units, and so
    has such an output: ``"a. u."``.
    """
    same = DEFAULT_UNITS if input_units is None else str(input_units)
    name = getattr(func, "__name__", repr(func))
    coords = dict(coords or {})
    where = f"position {position}" + coords_text(coords)
    try:
        result = func(sample, **params)
    except Exception as exc:
        raise SpectralFunctionError(
            f"{name} failed at {where} while lazyusid inferred its outputs, with params "
            f"{short(params)}: {type(exc).__name__}: {exc}. Fix the function, or check it with "
            "lazyusid.apply_at(data, func, position).",
            position=position,
            coords=coords,
        ) from exc
    declared: dict[str, object] = {}
    if isinstance(outputs, str):
        outputs = [outputs]
    if isinstance(outputs, Mapping):
        declared = dict(outputs)
        names = list(outputs)
    elif outputs is not None:
        names = list(outputs)
    else:
        names = None

    if isinstance(result, Mapping):
        single = False
        names = names or list(result)
        values = [result[k] for k in names]
    elif isinstance(result, tuple):
        single = False
        names = names or [f"output_{i}" for i in range(len(result))]
        if len(names) != len(result):
            raise ValueError(f"outputs names {names} but the function returned {len(result)} values")
        values = list(result)
    else:
        single = names is None or len(names) == 1
        if not single:
            raise ValueError(f"outputs names {names} but the function returned one value")
        names = names or [getattr(func, "__name__", "result").strip("<>") or "result"]
        values = [result]
    result_outputs = []
    for output, value in zip(names, values):
        if value is None:
            raise OutputDtypeError(
                f"{name} returned None for output {output!r} at {where} while lazyusid inferred its "
                "outputs; return a number for every position (np.nan marks a missing value).",
                position=position,
                coords=coords,
            )
        value = np.asarray(value)
        shape = value.shape[1:] if vectorized else value.shape
        spec = declared.get(output)
        if isinstance(spec, Output):
            result_outputs.append(replace(spec, units=same) if spec.units == SAME_UNITS else spec)
            continue
        dtype, dims, units, inferred_at, fill = value.dtype, None, DEFAULT_UNITS, position, None
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"dtype", "shape", "dims", "units", "fill_value"}
            if unknown:
                raise TypeError(
                    f"output {output!r}: unknown keys {sorted(unknown)}; an output is declared with "
                    "dtype, shape, dims, units and fill_value"
                )
            fill = spec.get("fill_value")
            if "dtype" in spec:
                dtype, inferred_at = spec["dtype"], None
            shape = tuple(spec.get("shape", shape))
            dims = spec.get("dims")
            units = spec.get("units", units)
            if units == SAME_UNITS:
                units = same
        elif spec is not None:
            dtype, inferred_at = spec, None
        if np.dtype(dtype).kind in "OUS":
            raise OutputDtypeError(
                f"output {output!r} has dtype {np.dtype(dtype)}; return numbers (or declare a numeric dtype). "
                f"{name} returned {value_text(value)} at {where}.",
                position=position,
                coords=coords,
            )
        result_outputs.append(
            Output(output, shape, dtype, dims, units, inferred_at=inferred_at, fill_value=fill)
        )
    outs = tuple(result_outputs)
    for value, o in zip(
        values, outs
    ):  # a declared dtype must hold the first value too: refused before any write
        try:
            fit(value, o, rows=vectorized)
        except Unfit as unfit:
            checked = SpectralFunction(func, params, outs, vectorized=vectorized, single=single)
            error = checked._unfit_error(unfit, position, None, (), ())
            error.coords = dict(coords or {})
            raise error from None
    return outs, single


def takes_position(func) -> bool:
    """Whether ``func`` has a parameter named ``position`` (lazyusid then passes the N-D index)."""
    try:
        return "position" in inspect.signature(func).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def _declaration(outputs: tuple[Output, ...], fixed: Output, dtype: np.dtype) -> str:
    """``{'amp': 'float64', ...}``: every output, so that none is dropped, ``fixed`` with ``dtype``."""
    items = []
    for o in outputs:
        name = np.dtype(dtype if o is fixed else o.dtype).name
        spec = {"dtype": name}
        if o.units != DEFAULT_UNITS:
            spec["units"] = o.units
        if o.dims != Output(o.name, o.shape).dims:
            spec["dims"] = o.dims
        items.append(f"{o.name!r}: {spec if len(spec) > 1 else repr(name)}")
    return "{" + ", ".join(items) + "}"
