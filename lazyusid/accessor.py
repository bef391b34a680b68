"""The ``.usid`` xarray accessor: a thin face over the engine, one line per method.

Examples
--------
>>> data = lazyusid.open_usid("scan.h5")                               # doctest: +SKIP
>>> data.usid.test(peak_amplitude, {"Y": 3, "X": 5})                     # doctest: +SKIP
>>> data.usid.plan(peak_amplitude)                                       # doctest: +SKIP
>>> amp = data.usid.map(peak_amplitude, store="scan.h5")                 # doctest: +SKIP
>>> amp.plot()                                                           # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable

import xarray as xr

from .compute import apply_at, map_spectra, plan_spectra
from .core.function import FAILED
from .lineage import lineage
from .usid.files import list_main, tree


class TextBlock(str):
    """A multi-line text that shows as itself (not quoted) in notebooks and the REPL."""

    def __repr__(self) -> str:
        return str(self)


def _on_this_object(func: Callable, summary: str) -> Callable:
    """A method calling ``func(obj, ...)``, with ``func``'s own signature (minus ``data``) and documentation.

    The engine options are defined once, on the engine's functions; ``help()``
    and tab completion show them here too.
    """

    @functools.wraps(func)
    def method(self, *args, **kwargs):
        return func(self._obj, *args, **kwargs)

    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = sig.replace(parameters=[self_param, *params[1:]])
    method.__doc__ = (
        f"{summary}\n\nCalls :func:`lazyusid.{func.__name__}` on this object.\n{func.__doc__ or ''}"
    )
    del method.__wrapped__  # inspect.signature would follow it to func's own signature
    return method


class USIDAccessor:
    """``obj.usid``: map functions over every spectrum of this USID data."""

    def __init__(self, obj: xr.DataArray | xr.Dataset):
        self._obj = obj

    map = _on_this_object(
        map_spectra,
        "Apply ``func`` to every spectrum: lazily, or with ``store=`` into a results group or zarr.",
    )
    test = _on_this_object(apply_at, "Run ``func`` on one position only, exactly as the full run would.")
    plan = _on_this_object(plan_spectra, "The block plan and scheduler, before anything runs.")

    @property
    def failed(self) -> xr.DataArray:
        """Where the function raised (``on_error="skip"``): a boolean mask over the positions, a valid ``roi=``."""
        obj = self._obj
        if FAILED not in obj.coords:
            raise ValueError(
                f"this result has no {FAILED!r}: it was not computed with on_error='skip' (or not by lazyusid)"
            )
        return obj.coords[FAILED].reset_coords(drop=True).astype(bool)

    @property
    def errors(self) -> list[dict]:
        """The first errors of a stored result computed with ``on_error="skip"``: position, index, type, message."""
        text = self._obj.attrs.get("usid_errors")
        return json.loads(text) if text else []

    def lineage(self) -> list[dict]:
        """The computations behind this stored result, newest first (:func:`lazyusid.lineage`)."""
        return lineage(self._obj)

    @property
    def file(self) -> str:
        """The HDF5 file this data was opened from."""
        path = self._attrs().get("usid_file")
        if path is None:
            raise ValueError("this object was not opened from a USID file (no 'usid_file' attribute)")
        return path

    def tree(self) -> TextBlock:
        """Call :func:`lazyusid.tree` on the file this data came from."""
        return TextBlock(tree(self.file))

    def main_datasets(self) -> list[str]:
        """Call :func:`lazyusid.list_main` on the file this data came from."""
        return list_main(self.file)

    def _attrs(self) -> dict:
        obj = self._obj
        if isinstance(obj, xr.Dataset) and not obj.attrs.get("usid_file") and len(obj.data_vars) == 1:
            obj = obj[next(iter(obj.data_vars))]
        return obj.attrs


xr.register_dataarray_accessor("usid")(USIDAccessor)
xr.register_dataset_accessor("usid")(USIDAccessor)
