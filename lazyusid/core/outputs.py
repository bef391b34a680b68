"""What a function returns, per spectrum: :class:`Output` declarations, and inferring them from a real call.

Anything not declared (names, dtypes, shapes) is inferred by running the
function once on the first real spectrum. Every value must later fit its
output's dtype without loss (docs/design.md, decision 9); :func:`unfit_error`
names the position and the declaration that fixes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import OutputDtypeError, SpectralFunctionError
from .casting import Unfit, fill_value, fit, value_text
from .describe import coords_text, short

#: units of an output that declares none: arbitrary units, as pyUSID writes them
DEFAULT_UNITS = "a. u."
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


OutputsLike = None | Sequence[str] | Mapping[str, object]


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
    timer=None,
):
    """Run ``func`` on a real sample and describe its outputs.

    ``sample`` is one spectrum (per-spectrum) or a block of a few spectra
    (vectorised), taken at flat ``position`` (N-D indices ``coords``), which
    a failure names; ``timer`` (a context manager, e.g.
    :class:`~lazyusid.core.plan.CallTimer`) times the call of ``func`` alone.
    Returns ``(outputs, single)``.

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
        with timer if timer is not None else contextlib.nullcontext():
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
            fn = getattr(func, "__name__", type(func).__name__)
            where = f"position {position}" + coords_text(dict(coords or {}))
            raise unfit_error(fn, params, outs, unfit, where, position, dict(coords or {})) from None
    return outs, single


def unfit_error(
    name: str, params: Mapping, outputs, unfit: Unfit, where: str, start: int, coords: dict
) -> OutputDtypeError:
    """The error for a value output ``unfit.output`` cannot hold, at ``where``, with the declaration that fixes it."""
    o = unfit.output
    origin = "declared" if o.inferred_at is None else f"inferred from the value at position {o.inferred_at}"
    if unfit.value is None:
        head = f"{name} returned None for output {o.name!r} at {where}"
        fix = "Return a number for every position (np.nan marks a missing value)."
    else:
        head = f"{name} returned a value that output {o.name!r} cannot hold, at {where}"
        fix = (
            "Make the function return numbers."
            if unfit.suggest is None
            else f"Declare the output's dtype: outputs={declaration(outputs, o, unfit.suggest)}."
        )
    message = (
        f"{head}: output {o.name!r} is {o.dtype}, {origin}; it got {unfit.what}. {fix} "
        f"(params {short(params)})"
    )
    return OutputDtypeError(message, position=start, coords=coords)


def declaration(outputs: tuple[Output, ...], fixed: Output, dtype: np.dtype) -> str:
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
