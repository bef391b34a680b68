"""The identity of a computation: a sha256 token over a canonical encoding.

Two computations share a token only if they would produce the same numbers:
the same tool, the same function (module, qualified name and a hash of its
code), the same parameters (``1``, ``1.0`` and ``True`` differ; NumPy arrays
and scalars by dtype, shape and bytes, so ``np.float64(1.0)`` is not ``1.0``),
the same declared outputs and core dimensions, and the same source. Nothing here uses Python's ``hash()`` (salted per
process) or pickle (not canonical), so tokens are stable across processes
and sessions (docs/design.md, decision 7).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import struct
import sys
import threading
import types
from collections.abc import Mapping

import numpy as np

from ..errors import LazyUSIDError

#: bump when the meaning of stored results changes; part of every token.
#: 2: NumPy scalars count by dtype (format 1 gave ``np.float64(1.0)`` and ``1.0`` one token)
RESULT_FORMAT_VERSION = 2

#: arrays larger than this appear in the readable parameters by digest only
_READABLE_ARRAY_ITEMS = 64

#: ids of the callables being encoded on this thread, to stop at cycles (recursive functions)
_encoding = threading.local()


class UnhashableParameterError(LazyUSIDError, TypeError):
    """A parameter has no canonical encoding, so results cannot be identified."""


def digest(value) -> str:
    """The sha256 hex digest of the canonical encoding of ``value``.

    Examples
    --------
    >>> digest(1) == digest(1.0)
    False
    >>> digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    True
    """
    h = hashlib.sha256()
    _encode(value, h.update, path="value")
    return h.hexdigest()


def function_identity(func) -> dict:
    """Module, qualified name and code digest of a callable, as plain data.

    The code digest covers the bytecode, constants (recursively, for nested
    functions and lambdas), names, default arguments, closure values and the
    globals the code uses: helper functions by their own code (recursively),
    modules by name and version, data by value, other objects by class only.
    Functions of an installed package (one with a ``__version__``) are
    covered by their code and the package version instead of their globals.
    Editing the function body or a helper changes the digest; renaming a
    local variable alone does too (conservative: it may recompute, never
    reuses wrongly). Not covered: methods of classes other than the one
    called, and objects reached only through attributes of a global.

    Examples
    --------
    >>> def scale(s, k=2):
    ...     return s * k
    >>> function_identity(scale) == function_identity(scale)
    True
    >>> function_identity(scale)["qualname"]
    'scale'
    """
    h = hashlib.sha256()
    _encode_callable(func, h.update)
    target = func.func if isinstance(func, functools.partial) else func
    return {
        "module": getattr(target, "__module__", None) or type(target).__module__,
        "qualname": getattr(target, "__qualname__", None) or type(target).__qualname__,
        "code_sha256": h.hexdigest(),
    }


def computation_token(
    *,
    tool: str,
    function,
    source: Mapping,
    inputs: Mapping | None = None,
) -> tuple[str, dict]:
    """The token of mapping ``function`` (a :class:`~lazyusid.core.function.SpectralFunction`) over ``source``.

    Parameters
    ----------
    tool : str
        The tool (process) name.
    function : SpectralFunction
    source : mapping
        Plain data describing the input: file, dataset path, shape, dtype,
        loop and core dimensions.
    inputs : mapping, optional
        Plain data describing each per-position input, by parameter name.

    Returns
    -------
    token : str
        64 hex characters.
    identity : dict
        The plain-data description the token was computed from (JSON-able),
        stored next to the results for people to read.
    """
    identity = {
        "format_version": RESULT_FORMAT_VERSION,
        "tool": tool,
        "function": function_identity(function.func),
        "vectorized": bool(function.vectorized),
        "outputs": [o.to_dict() for o in function.outputs],
        "source": dict(source),
    }
    if inputs:  # absent otherwise: the tokens of results without them stay what they were
        identity["inputs"] = dict(inputs)
    if getattr(function, "on_error", "raise") != "raise":
        identity["on_error"] = function.on_error
    h = hashlib.sha256()
    _encode(identity, h.update, path="identity")
    _encode(dict(function.params), h.update, path="params")
    return h.hexdigest(), {**identity, "params": readable(function.params)}


def readable(value):
    """A JSON-able rendering of parameters (small arrays as lists, large ones by digest)."""
    if isinstance(value, Mapping):
        return {str(k): readable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [readable(v) for v in value]
    if isinstance(value, np.ndarray | np.generic) and not isinstance(value, np.bool_):
        arr = np.asarray(value)
        if arr.size <= _READABLE_ARRAY_ITEMS and arr.dtype.kind in "biuf":
            return {"dtype": arr.dtype.str, "shape": list(arr.shape), "values": arr.tolist()}
        return {"dtype": arr.dtype.str, "shape": list(arr.shape), "sha256": digest(arr)}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return {"bytes_sha256": hashlib.sha256(value).hexdigest()}
    return repr(value)


def to_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _tag(update, tag: bytes, payload: bytes = b"") -> None:
    update(tag + struct.pack("<Q", len(payload)) + payload)


def _encode(value, update, *, path: str) -> None:
    """Feed a type-tagged, length-prefixed encoding of ``value`` to ``update``."""
    if value is None:
        _tag(update, b"N")
    elif isinstance(value, (np.ndarray, np.generic)):
        # before the builtins: np.float64 is a float, np.str_ a str, np.bool_ equals True, yet each
        # computes (or promotes) differently, so NumPy scalars count by dtype too
        arr = np.asarray(value)
        if arr.dtype.kind == "O":
            raise UnhashableParameterError(
                f"{path}: object arrays have no canonical encoding; use a numeric dtype"
            )
        kind = b"A" if isinstance(value, np.ndarray) else b"G"
        _tag(update, kind, f"{_dtype_text(arr.dtype)}{arr.shape}".encode())
        _tag(update, b"D", np.ascontiguousarray(arr).tobytes())
    elif isinstance(value, bool):
        _tag(update, b"B", b"1" if value else b"0")
    elif isinstance(value, int):
        _tag(update, b"I", str(value).encode())
    elif isinstance(value, float):
        _tag(update, b"F", struct.pack("<d", value))
    elif isinstance(value, complex):
        _tag(update, b"C", struct.pack("<dd", value.real, value.imag))
    elif isinstance(value, str):
        _tag(update, b"S", value.encode("utf-8"))
    elif isinstance(value, (bytes, bytearray)):
        _tag(update, b"Y", bytes(value))
    elif isinstance(value, (list, tuple)):
        _tag(update, b"L" if isinstance(value, list) else b"T", str(len(value)).encode())
        for i, item in enumerate(value):
            _encode(item, update, path=f"{path}[{i}]")
    elif isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            h = hashlib.sha256()
            _encode(key, h.update, path=f"{path} key")
            items.append((h.digest(), key, item))
        _tag(update, b"M", str(len(items)).encode())
        for key_digest, key, item in sorted(items, key=lambda t: t[0]):
            update(key_digest)
            _encode(item, update, path=f"{path}[{key!r}]")
    elif isinstance(value, (set, frozenset)):
        digests = sorted(digest(v) for v in value)
        _tag(update, b"E", "".join(digests).encode())
    elif isinstance(value, np.dtype):
        _tag(update, b"d", _dtype_text(value).encode())
    elif isinstance(value, type):
        _tag(update, b"c", _class_name(value).encode())
    elif isinstance(value, types.CodeType):
        _encode_code(value, update)
    elif callable(value):
        _encode_callable(value, update)
    elif isinstance(value, slice):
        _tag(update, b"Z")
        _encode((value.start, value.stop, value.step), update, path=path)
    else:
        raise UnhashableParameterError(
            f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which lazyusid cannot "
            "identify reproducibly; pass numbers, strings, booleans, None, NumPy arrays, or lists, tuples "
            "and dicts of those"
        )


def _dtype_text(dtype: np.dtype) -> str:
    """``'<f8'``; structured dtypes with their fields (``dtype.str`` is only ``'|V16'``)."""
    return dtype.str if dtype.fields is None else str(dtype.descr)


def _encode_code(code: types.CodeType, update) -> None:
    _tag(update, b"K", code.co_code)
    _encode(code.co_names, update, path="code names")
    _encode(code.co_varnames, update, path="code varnames")
    _tag(update, b"k", str(len(code.co_consts)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _encode_code(const, update)
        elif const is Ellipsis:
            _tag(update, b".")
        else:
            _encode(const, update, path="code constant")


def _encode_callable(func, update) -> None:
    stack = _encoding.__dict__.setdefault("ids", [])
    if id(func) in stack:  # a recursive function, or an object that refers to itself
        _tag(update, b"R", str(len(stack) - stack.index(id(func))).encode())
        return
    stack.append(id(func))
    try:
        _encode_callable_once(func, update)
    finally:
        stack.pop()


def _encode_callable_once(func, update) -> None:
    if isinstance(func, functools.partial):
        _tag(update, b"P")
        _encode_callable(func.func, update)
        _encode(list(func.args), update, path="partial args")
        _encode(dict(func.keywords), update, path="partial keywords")
        return
    if inspect.ismethod(func):
        _tag(update, b"m")
        _encode_callable(func.__func__, update)
        _encode_object_state(func.__self__, update)
        return
    name = f"{getattr(func, '__module__', None)}.{getattr(func, '__qualname__', type(func).__qualname__)}"
    code = getattr(func, "__code__", None)
    if isinstance(code, types.CodeType):
        _tag(update, b"U", name.encode())
        _encode_code(code, update)
        # a library's function: its code and the library's version; its sentinel defaults
        # (numpy's _NoValue) and its globals are the library's business
        library = _library(getattr(func, "__module__", None))
        encode = functools.partial(_encode_value_or_state, opaque=True) if library else _encode
        encode(func.__defaults__ or (), update, path=f"defaults of {name}")
        encode(dict(func.__kwdefaults__ or {}), update, path=f"keyword defaults of {name}")
        for cell in func.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # a variable not assigned yet
                _tag(update, b"n")
                continue
            encode(contents, update, path=f"closure of {name}")
        if library:
            _tag(update, b"v", library.encode())
            return
        namespace = getattr(func, "__globals__", {})
        for key in sorted(set(_global_names(code)) & namespace.keys()):
            _tag(update, b"g", key.encode())
            _encode_global(namespace[key], update, path=f"global {key!r} of {name}")
        return
    if isinstance(func, (types.BuiltinFunctionType, np.ufunc)):  # C code: name and library version
        owner = getattr(func, "__self__", None)
        if owner is not None and not isinstance(owner, types.ModuleType):  # a bound method, e.g. arr.dot
            _tag(update, b"X", f"{_class_name(type(owner))}.{func.__name__}".encode())
            _encode_value_or_state(owner, update, path=f"owner of {func.__name__}")
            return
        module = getattr(func, "__module__", None) or "numpy"
        _tag(update, b"X", f"{module}.{func.__name__}@{_library(module)}".encode())
        return
    if isinstance(func, type):
        _tag(update, b"c", _class_name(func).encode())
        return
    # a callable object: its class's __call__ (when written in Python) and its state
    _tag(update, b"O", _class_name(type(func)).encode())
    call = type(func).__call__
    if isinstance(getattr(call, "__code__", None), types.CodeType):
        _encode_callable(call, update)
    _encode_object_state(func, update)


def _global_names(code: types.CodeType):
    """Names a code object (and the functions nested in it) may look up as globals."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


def _encode_global(value, update, *, path: str) -> None:
    """A global a function uses: modules by name and version, helpers by their code, data by value.

    Anything else (an open file, a logger) is identified by its class only:
    a global has to be encodable only as far as it can be.
    """
    if isinstance(value, types.ModuleType):
        _tag(update, b"u", f"{value.__name__}@{_library(value.__name__)}".encode())
        return
    _encode_value_or_state(value, update, path=path, opaque=True)


def _encode_value_or_state(obj, update, *, path: str, opaque: bool = False) -> None:
    """``obj`` by value when it has a canonical encoding, else by its class and state (or class only)."""
    h = hashlib.sha256()
    try:
        _encode(obj, h.update, path=path)
    except UnhashableParameterError:
        if not opaque:
            _encode_object_state(obj, update)
            return
        _tag(update, b"q", _class_name(type(obj)).encode())
    else:
        _tag(update, b"V", h.digest())


def _library(module: str | None) -> str:
    """``"name@version"`` of the installed package a module belongs to; ``""`` for the user's own code."""
    top = (module or "").split(".")[0]
    version = getattr(sys.modules.get(top), "__version__", None) if top and top != "__main__" else None
    return f"{top}@{version}" if isinstance(version, str) else ""


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}@{_library(cls.__module__)}"


def _encode_object_state(obj, update) -> None:
    state = dict(getattr(obj, "__dict__", None) or {})
    for cls in type(obj).__mro__:
        slots = getattr(cls, "__slots__", ())
        for slot in [slots] if isinstance(slots, str) else slots:
            if slot.startswith("__") and not slot.endswith("__"):
                slot = f"_{cls.__name__.lstrip('_')}{slot}"  # name mangling
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                state[slot] = getattr(obj, slot)
    if not state and not hasattr(obj, "__dict__"):
        _tag(update, b"t", _class_name(type(obj)).encode())
    else:
        _encode(state, update, path=f"state of {type(obj).__qualname__}")
