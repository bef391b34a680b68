"""The engine's options, defined once: keyword-only parameters shared by every function that takes them.

:func:`takes` gives a function ``f(data, func, **options)`` the explicit
signature of the option groups it takes (what ``help()``, tab completion and
:func:`inspect.signature` show), their documentation, and a check of the
names passed (an unknown option raises :class:`TypeError`, as for any
function). The faces (the ``.usid`` accessor, :class:`~lazyusid.Process`)
copy these signatures instead of repeating them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from .core.outputs import OutputsLike
from .core.plan import BudgetLike

if TYPE_CHECKING:  # annotations only: distributed is imported when a cluster is used
    import os

    import distributed
    import h5py
    import numpy as np
    import xarray as xr


def CALL(
    *,
    core_dims: str | Sequence[Hashable] | None = None,
    params: Mapping | None = None,
    outputs: OutputsLike = None,
    vectorized: bool = False,
):
    """
    core_dims : str or sequence of str, optional
        Dimensions ``func`` works along (default: the spectroscopic
        dimensions). Any other dimension, including a spectroscopic one not
        named here, is looped over.
    params : mapping, optional
        Keyword arguments for ``func``; scalars, strings, lists, dicts,
        numpy arrays are the same at every position. An xarray DataArray (or
        Dataset) with loop dimensions of the data is a **per-position
        input**: ``func`` gets that position's value (a numpy scalar or
        array over its other dimensions; a dict of them for a Dataset), a
        vectorised ``func`` the block's slice. A stored lazyusid result is
        identified by its own token (``docs/pipelines.md``). If ``func`` has
        a parameter ``position``, it gets the N-D index of its spectrum (a
        tuple of ints; vectorised: a tuple of index arrays).
    outputs : sequence of str or mapping, optional
        Names of the outputs (for a tuple result) or ``{name: dtype}``,
        ``{name: {"dtype":, "shape":, "dims":, "units":}}`` or ``{name: Output}``.
        ``units`` (default ``"a. u."``) are stored with the values.
        Anything not declared is inferred by running ``func`` on the first
        real spectrum of the data.
    vectorized : bool
        Whether ``func`` takes a block of spectra (positions first). It is
        called on pieces of about 1 MiB of each block, which stay in the
        CPU's cache, so it must treat each position on its own."""


def RUN(
    *,
    budget: BudgetLike = None,
    mem_multiplier: float = 1.0,
    positions_per_block: int | None = None,
    cores: int | None = None,
    client: distributed.Client | None = None,
    progress: bool = True,
    roi: np.ndarray | xr.DataArray | None = None,
    on_error: Literal["raise", "skip"] = "raise",
):
    """
    budget : int or str, optional
        Memory for the whole computation, e.g. ``"512MiB"`` (default: a
        quarter of the available memory).
    mem_multiplier : float
        Working memory of ``func`` per spectrum, as a multiple of the spectrum's bytes.
    positions_per_block : int, optional
        Force the block size (checked against the budget).
    cores : int, optional
        Parallel workers (default: all but one core, both on a 2-core machine;
        capped at the machine's cores unless ``client`` is given).
    client : distributed.Client, optional
        Compute on this cluster (e.g. a dask-jobqueue cluster's client):
        blocks then read their spectra and evaluate on its workers. Default:
        the active default client, if any.
    progress : bool
        Show a progress bar (tqdm; terminal or notebook) while blocks finish.
    roi : numpy.ndarray or xarray.DataArray of bool, optional
        Region of interest over the loop dimensions: ``func`` runs only where
        it is True; elsewhere the outputs hold their fill value (NaN for
        floats, 0 otherwise). Stored: the result keeps the full grid and
        flags only the ROI's positions; the ROI is not part of the identity,
        so a larger ROI (or ``roi=None``) later computes only what is new.
    on_error : {"raise", "skip"}
        ``"skip"``: a position where ``func`` raises gets the fill value and
        the run goes on; the result has a ``failed_positions`` mask
        (``result.usid.failed``, a valid ``roi=``) and, stored, the first
        errors (``result.usid.errors``)."""


def STORE(
    *,
    store: str | os.PathLike | h5py.Group | None = None,
    group: str | None = None,
    tool: str | None = None,
    override: bool = False,
    resume: str | None = None,
):
    """
    store : str, os.PathLike or h5py.Group, optional
        Compute **now** into this target, block by block with checkpoints,
        and return the stored result (lazily). An HDF5 file (the source
        file itself puts a USID results group ``<Main>-<Tool>_NNN`` next to
        the source dataset; another file or group records where the source
        is), or a zarr v3 store (a path ending in ``.zarr``). A rerun of the
        same computation returns the stored result without computing; an
        interrupted one resumes where it stopped. See ``docs/checkpoints.md``.
    group : str, optional
        HDF5 group holding the results group (default: the source dataset's
        group in the source file, the root in another file).
    tool : str, optional
        Tool name in the results group name (default: the function's name).
    override : bool
        Compute again into a new results group even if this computation is
        already stored (for zarr: recompute into the same store).
    resume : str, optional
        Name of the partial results group to resume (pyUSID's
        ``use_partial_computation``); it must hold this same computation."""


def parameters(*groups: Callable) -> list[inspect.Parameter]:
    """The keyword-only parameters of option groups, in order."""
    return [p for g in groups for p in inspect.signature(g).parameters.values()]


def defaults(*groups: Callable) -> dict:
    """Every option of ``groups`` with its default value."""
    return {p.name: p.default for p in parameters(*groups)}


def takes(*groups: Callable) -> Callable:
    """Give ``f(positional..., **options)`` the options of ``groups``: signature, docs (``{options}``), checks.

    ``f`` receives every option of the groups, defaults filled in.
    """

    def decorate(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func).parameters.values() if p.kind != p.VAR_KEYWORD]
        options = parameters(*groups)
        signature = inspect.signature(func).replace(parameters=[*own, *options])
        names = {p.name for p in options}
        filled = defaults(*groups)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            unknown = [k for k in kwargs if k not in names and k not in {p.name for p in own}]
            if unknown:
                raise TypeError(
                    f"{func.__name__}() got an unexpected keyword argument {unknown[0]!r}; its options are "
                    f"{sorted(names)}"
                )
            signature.bind(
                *args, **kwargs
            )  # too many positional arguments, a missing one: as for any function
            return func(*args, **{**filled, **kwargs})

        wrapper.__signature__ = signature
        del wrapper.__wrapped__  # inspect.signature would follow it to func's own signature
        wrapper.__doc__ = (func.__doc__ or "").replace("{options}", "".join(g.__doc__ for g in groups))
        return wrapper

    return decorate
