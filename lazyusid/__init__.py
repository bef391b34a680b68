"""lazyusid: apply functions to every spectrum of large USID datasets, lazily, on dask.

The pipeline (see ``docs/concepts.md``): open a USID main dataset as a lazy
xarray object (:func:`open_usid`), plan blocks under a memory budget, map a
function over every spectrum, and stream the results to HDF5 or zarr.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lazyusid")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from . import accessor, datasets, plots
from .compute import apply_at, map_spectra, plan_spectra
from .core.outputs import SAME_UNITS, Output
from .core.plan import BlockPlan, parse_budget
from .errors import (
    BudgetError,
    DatasetSelectionError,
    DiskFullError,
    InvalidUSIDError,
    LazyUSIDError,
    OutputDtypeError,
    ReadOnlyStoreError,
    SpectralFunctionError,
    StoreBusyError,
    StoreConflictError,
    UnguardedMainError,
    WorkerCrashedError,
)
from .io.open import open_usid
from .lineage import lineage
from .process import Process
from .run.schedulers import shutdown
from .usid.dimension import Dimension
from .usid.files import list_main, tree
from .usid.layout import is_main, read_layout, validate_main
from .usid.write import write_main

__all__ = [
    "SAME_UNITS",
    "BlockPlan",
    "BudgetError",
    "DatasetSelectionError",
    "Dimension",
    "DiskFullError",
    "InvalidUSIDError",
    "LazyUSIDError",
    "Output",
    "OutputDtypeError",
    "Process",
    "ReadOnlyStoreError",
    "SpectralFunctionError",
    "StoreBusyError",
    "StoreConflictError",
    "UnguardedMainError",
    "WorkerCrashedError",
    "__version__",
    "accessor",
    "apply_at",
    "datasets",
    "is_main",
    "lineage",
    "list_main",
    "map_spectra",
    "open_usid",
    "parse_budget",
    "plan_spectra",
    "plots",
    "read_layout",
    "shutdown",
    "tree",
    "validate_main",
    "write_main",
]
