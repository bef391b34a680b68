"""``lazyusid.Process``: pyUSID's ``Process`` class, on lazyusid's engine.

Port a pyUSID process by changing the import and replacing the hand-written
``_create_results_datasets`` / ``_write_results_chunk`` with a declaration
of the outputs::

    class PeakFinder(lazyusid.Process):
        outputs = {"Peak_Response": "float32"}

        def __init__(self, h5_main, **kwargs):
            super().__init__(h5_main, "Peak_Finding", **kwargs)

        @staticmethod
        def _map_function(spectrum, *args, **kwargs):
            ...

Everything else (memory budget, worker processes, checkpoints, resume,
duplicate detection) comes from :func:`lazyusid.map_spectra` with
``store=``; this class only translates pyUSID's vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import h5py
import xarray as xr

from .compute import apply_at, map_spectra, prepare_map
from .core.outputs import OutputsLike
from .inputs import as_dataarray, untouched_source
from .io.open import open_usid
from .sinks import order_for_store, prepare_store, target_file


class Process:
    """Apply a per-spectrum function to every position of a USID main dataset, pyUSID-style.

    Subclass it and define a static ``_map_function(spectrum, **parms)``
    (pyUSID's name; ``map_function`` also works), or a static
    ``unit_computation(block, **parms)`` that takes a block of spectra
    (positions first) and returns one value per position.

    Parameters
    ----------
    h5_main : h5py.Dataset, xarray.DataArray or str
        The USID main dataset (an h5py dataset as in pyUSID, a DataArray from
        :func:`lazyusid.open_usid`, or a file path with one main dataset).
    process_name : str, optional
        The tool name: results go in ``<Main>-<process_name>_NNN``
        (default: the class name).
    parms_dict : dict, optional
        Parameters: passed to the function as keyword arguments, written
        as attributes of the results group, and part of the result's identity.
    cores : int, optional
        Worker processes (default: all but one core).
    max_mem_mb : float, optional
        Memory budget in MiB (default: a quarter of the available memory).
    mem_multiplier : float
        Working memory of the function per spectrum, in spectra.
    lazy : bool
        Accepted for pyUSID compatibility (same position in the argument
        list) and ignored: lazyusid always reads lazily.
    h5_target_group : h5py.Group, str, optional
        Where results go (default: next to ``h5_main`` in its file). An
        h5py group, another HDF5 file path, or a ``.zarr`` path.
    verbose : bool
        Print what is found and done.

    Attributes
    ----------
    duplicate_groups : list
        Complete results of this very computation (same function code,
        parameters and source), oldest first: h5py groups when ``h5_main``
        is an h5py dataset, else paths.
    partial_groups : list
        Interrupted results of this computation, resumable.
    duplicate_h5_groups, partial_h5_groups : list
        pyUSID's names for the two lists above.
    result : xarray.DataArray or xarray.Dataset or None
        The stored result after :meth:`compute`, opened lazily.
    """

    #: declared outputs (see :func:`lazyusid.map_spectra`); inferred from one spectrum if None
    outputs: OutputsLike = None
    #: dimensions the function works along (default: the spectroscopic dimensions)
    core_dims: str | tuple | None = None

    def __init__(
        self,
        h5_main,
        process_name: str | None = None,
        parms_dict: Mapping | None = None,
        cores: int | None = None,
        max_mem_mb: float | None = None,
        mem_multiplier: float = 1.0,
        lazy: bool = False,
        h5_target_group=None,
        verbose: bool = False,
        *,
        client=None,
        progress: bool = True,
    ):
        if parms_dict is not None and not isinstance(parms_dict, Mapping):
            raise TypeError(f"parms_dict must be a dict, got {type(parms_dict).__name__}")
        self.h5_main = h5_main
        self.process_name = process_name or type(self).__name__
        self.parms_dict = dict(parms_dict or {})
        self.verbose = verbose
        self.result: xr.DataArray | xr.Dataset | None = None
        self.h5_results_grp = None
        self._resume: str | None = None

        self._original = _as_data(h5_main)
        data, core_dims = as_dataarray(self._original, self.core_dims)
        self.data, pos_dims, extra_dims = order_for_store(data, core_dims)
        if h5_target_group is None:
            h5_target_group = self.data.attrs.get("usid_file")
            if h5_target_group is None:
                raise ValueError(
                    "this data has no source file: pass h5_target_group= (an HDF5 or .zarr path)"
                )
        self._store = h5_target_group
        func, vectorized = self._function()
        #: the engine options of every call (:meth:`compute` is one call of lazyusid.map_spectra)
        self._options = dict(
            core_dims=core_dims,
            params=self.parms_dict,
            outputs=self.outputs,
            vectorized=vectorized,
            budget=None if max_mem_mb is None else int(max_mem_mb * 2**20),
            mem_multiplier=mem_multiplier,
            cores=cores,
            client=client,
            progress=progress,
        )
        # what compute() would run, to find stored results of it now (pyUSID's duplicate_h5_groups)
        self._map = prepare_map(
            self.data,
            func,
            writes_to=target_file(h5_target_group),
            source=untouched_source(self._original),
            **self._options,
        )
        self._target = prepare_store(
            self._map, h5_target_group, pos_dims=pos_dims, extra_dims=extra_dims, tool=self.process_name
        )
        found = self._target.find()
        self.duplicate_groups = [self._group(f.name) for f in found if f.complete]
        self.partial_groups = [self._group(f.name) for f in found if not f.complete]
        if verbose:
            print(f"{self.process_name}: {self._map.plan!r}; runs on {self._map.scheduler}")
            for what, groups in (("complete", self.duplicate_groups), ("partial", self.partial_groups)):
                for g in groups:
                    print(f"found {what} results of this computation: {_name(g)}")

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.process_name!r} on {self.data.attrs.get('usid_dataset', self.data.name)!r}: "
            f"{len(self.duplicate_groups)} complete, {len(self.partial_groups)} partial results stored>"
        )

    @property
    def duplicate_h5_groups(self) -> list:
        """pyUSID's name for :attr:`duplicate_groups`."""
        return self.duplicate_groups

    @property
    def partial_h5_groups(self) -> list:
        """pyUSID's name for :attr:`partial_groups`."""
        return self.partial_groups

    def _function(self) -> tuple[Callable, bool]:
        cls = type(self)
        unit = getattr(cls, "unit_computation", None)
        if callable(unit):
            return unit, True
        for name in ("map_function", "_map_function"):
            func = getattr(cls, name, None)
            if callable(func) and func is not getattr(Process, name, None):
                return func, False
        raise NotImplementedError(
            f"{cls.__name__} must define a static _map_function(spectrum, **parms) (as in pyUSID) "
            "or a static unit_computation(block, **parms)"
        )

    @staticmethod
    def _map_function(spectrum, *args, **kwargs):  # pragma: no cover - the method subclasses override
        raise NotImplementedError

    def test(self, pixel=0):
        """Run the function on one position only (flat index or ``{"X": .., "Y": ..}``) and return its value."""
        func, vectorized = self._function()
        return apply_at(
            self.data,
            func,
            pixel,
            core_dims=self._options["core_dims"],
            params=self.parms_dict,
            outputs=self.outputs,
            vectorized=vectorized,
        )

    def use_partial_computation(self, h5_partial_group=None) -> None:
        """Resume this partial results group on the next :meth:`compute` (default: the newest one)."""
        if h5_partial_group is None:
            if not self.partial_groups:
                raise ValueError(f"no partial results of this computation in {self._target.sink.where}")
            h5_partial_group = self.partial_groups[-1]
        name = _name(h5_partial_group).rsplit("/", 1)[-1]
        self._target.find(name)  # raises if it holds another computation
        self._resume = name

    def compute(self, override: bool = False):
        """Compute every position not yet stored, with checkpoints; return the results group.

        Returns the complete stored result at once if this computation is
        already stored, resumes a partial one, or (``override=True``)
        computes into a new group.

        Returns
        -------
        h5py.Group, str
            The results group (an h5py group when ``h5_main`` was one,
            else its path). The values, as xarray, are in :attr:`result`.
        """
        func, _ = self._function()
        self.result = map_spectra(
            self._original,
            func,
            store=self._store,
            tool=self.process_name,
            override=override,
            resume=None if override else self._resume,
            **self._options,
        )
        self._resume = None
        if self.verbose:
            rows = self.result.attrs["usid_rows_computed"]
            print(f"{self.process_name}: computed {rows} positions" if rows else "returned stored results")
        found = self._target.find()
        self.duplicate_groups = [self._group(f.name) for f in found if f.complete]
        self.partial_groups = [self._group(f.name) for f in found if not f.complete]
        self.h5_results_grp = self._group(self.result.attrs["usid_store"].rsplit("/", 1)[-1])
        return self.h5_results_grp

    def _group(self, name: str):
        sink = self._target.sink
        if sink.kind == "zarr":
            return sink.path
        path = f"{sink.group.rstrip('/')}/{name}"
        handle = self._store if isinstance(self._store, (h5py.Group, h5py.File)) else self.h5_main
        if (
            isinstance(handle, (h5py.Group, h5py.Dataset))
            and os.path.abspath(handle.file.filename) == sink.path
        ):
            return handle.file[path]
        return f"{sink.path}:{path}"


def _as_data(h5_main) -> xr.DataArray:
    if isinstance(h5_main, h5py.Dataset):
        return open_usid(h5_main.file.filename, h5_main.name)
    if isinstance(h5_main, (str, os.PathLike)):
        return open_usid(h5_main)
    return h5_main


def _name(group) -> str:
    return group.name if isinstance(group, h5py.Group) else str(group)
