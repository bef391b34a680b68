"""xarray backend: ``xr.open_dataset(path, engine="usid")``."""

from __future__ import annotations

import os
import warnings

import xarray as xr
from xarray.backends import BackendEntrypoint

from ..errors import DatasetSelectionError
from ..usid.files import in_results_group, invalid_candidates, list_main, no_main_message
from .open import open_usid


class USIDBackendEntrypoint(BackendEntrypoint):
    """Open every USID main dataset of an HDF5 file as a variable of one Dataset.

    Variables are named by the dataset's name (e.g. ``Raw_Data``), or by its
    HDF5 path without the leading ``/`` where names repeat. Data stay lazy;
    pass ``chunks={}`` for dask-backed variables with lazyusid's chunks
    (without it xarray wraps them in its own lazily loaded arrays).
    Results (main datasets inside ``<Main>-<Tool>_NNN`` groups) whose
    dimensions clash with the measurement's (e.g. a result of a slice) are
    left out with a warning. Other main datasets whose dimensions clash (same name, different size or
    values) cannot share a Dataset: open them one by one with
    :func:`lazyusid.open_usid`.
    """

    description = "Open USID (Universal Spectroscopy and Imaging Data) HDF5 files lazily"
    url = "https://pycroscopy.github.io/USID/"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "chunk_bytes")

    def open_dataset(self, filename_or_obj, *, drop_variables=None, chunk_bytes=None):
        path = os.fspath(filename_or_obj)
        drop = set(drop_variables or ())
        mains = list_main(path)
        if not mains:
            raise DatasetSelectionError(no_main_message(path, path))
        for name, why in invalid_candidates(path):
            warnings.warn(
                f"left out {name}, which looks like a USID main dataset but is not valid: {why}",
                stacklevel=2,
            )
        basenames = [m.rsplit("/", 1)[-1] for m in mains]
        arrays = {}
        for name, base in zip(mains, basenames):
            # the basename when unique (netCDF forbids "/" in names), else the full path
            key = base if basenames.count(base) == 1 else name.lstrip("/")
            if key in drop or name in drop:
                continue
            arr = open_usid(path, name, chunk_bytes=chunk_bytes)
            if isinstance(arr, xr.Dataset):  # records: one variable per field, "<name>.<field>"
                for field, var in arr.data_vars.items():  # named by usid_record, not usid_dataset
                    arrays[f"{key}.{field}"] = var.rename(f"{key}.{field}")
            else:
                arrays[key] = arr.rename(key)
        try:
            try:
                ds = _merge(arrays)
            except ValueError:
                results = [k for k, arr in arrays.items() if in_results_group(_dataset(arr))]
                if not results:
                    raise
                warnings.warn(
                    f"left out results {results} of {path!r}: their dimensions clash with the measurement's; "
                    "open them with lazyusid.open_usid(path, dataset=...)",
                    stacklevel=2,
                )
                arrays = {k: v for k, v in arrays.items() if k not in results}
                ds = _merge(arrays)
        except ValueError as exc:
            raise ValueError(
                f"the main datasets of {path!r} have clashing dimensions and cannot share one "
                f"xarray.Dataset ({exc}); open them one at a time with lazyusid.open_usid(path, dataset=...)"
            ) from exc
        for key, arr in arrays.items():
            ds[key].attrs = arr.attrs
            # names the source for the identity of results (kept by selections, dropped by computations)
            if "usid_dataset" in arr.attrs:
                ds[key].encoding["usid_source"] = f"{arr.attrs['usid_file']}:{arr.attrs['usid_dataset']}"
            for name, coord in arr.coords.items():  # combine_attrs="drop" dropped their units too
                ds[name].attrs = dict(coord.attrs)
        ds.attrs["usid_file"] = os.path.abspath(path)
        return ds

    def guess_can_open(self, filename_or_obj) -> bool:
        # USID files are plain .h5 files that h5netcdf also claims: open only when asked
        return False


def _dataset(arr: xr.DataArray) -> str:
    """HDF5 path of the main dataset a variable comes from (of its records, for a field)."""
    return arr.attrs.get("usid_dataset") or arr.attrs["usid_record"].rsplit(":", 1)[-1]


def _merge(arrays: dict) -> xr.Dataset:
    return xr.merge(list(arrays.values()), join="exact", combine_attrs="drop", compat="no_conflicts")
