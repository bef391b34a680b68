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

import xarray as xr

from .compute import apply_at, map_spectra, plan_spectra
from .files import list_main, tree


class TextBlock(str):
    """A multi-line text that shows as itself (not quoted) in notebooks and the REPL."""

    def __repr__(self) -> str:
        return str(self)


class USIDAccessor:
    """``obj.usid``: map functions over every spectrum of this USID data."""

    def __init__(self, obj: xr.DataArray | xr.Dataset):
        self._obj = obj

    def map(self, func, **kwargs):
        """Call :func:`lazyusid.map_spectra` on this object (``store=`` to compute into a results group or zarr)."""
        return map_spectra(self._obj, func, **kwargs)

    def test(self, func, position=0, **kwargs):
        """Call :func:`lazyusid.apply_at`: run ``func`` on one position only."""
        return apply_at(self._obj, func, position, **kwargs)

    def plan(self, func, **kwargs):
        """Call :func:`lazyusid.plan_spectra`: the block plan, before anything runs."""
        return plan_spectra(self._obj, func, **kwargs)

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
