"""``lazyusid map MODULE:FUNCTION FILE``: your own function over every spectrum of a file, for batch jobs.

Registered by :mod:`lazyusid.cli` (``add_map_parser``, ``run_map``). The
command only resolves what the user named and delegates to
:func:`lazyusid.map_spectra` with ``store=``.

How ``MODULE`` is found
-----------------------
* a path to a ``.py`` file (``fits.py``, ``./lib/fits.py``): its directory
  goes first on ``sys.path`` and it is imported by its name (``fits``);
* anything else is a module name, imported with the current directory first
  on ``sys.path`` (as ``python -m`` does).

Either way the function is an attribute of an imported module, so worker
processes unpickle it by reference: lazyusid's own worker processes are
spawned with this ``sys.path``, and with ``--scheduler-file`` a module that
is one file found in such a directory is also uploaded to the cluster's
workers (:meth:`distributed.Client.upload_file`; workers that join later
get it too). Modules found elsewhere (installed packages) must be
importable on the workers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cli import say

#: how long ``--scheduler-file`` waits for the file to appear (the scheduler may still be starting)
SCHEDULER_FILE_WAIT_S = 60.0
#: how long ``--scheduler-file`` waits for ``--wait-for-workers`` workers to connect
WORKERS_WAIT_S = 300.0


class UsageError(ValueError):
    """A command-line argument that cannot be used as given (exit status 2, nothing written)."""


@dataclass(frozen=True)
class LoadedFunction:
    """The function named on the command line, and the module file to send to a cluster's workers (if any)."""

    func: Callable
    label: str
    module: str
    upload: str | None


def add_map_parser(sub) -> None:
    """Add the ``map`` subcommand to the ``lazyusid`` parser's subparsers ``sub``."""
    p = sub.add_parser(
        "map",
        help="apply your function MODULE:FUNCTION to every spectrum of FILE, stored with checkpoints",
        description=(
            "Apply FUNCTION of MODULE to every spectrum of a USID main dataset and store the results with "
            "checkpoints (lazyusid.map_spectra(..., store=TARGET)). A rerun of the same computation "
            "returns the stored result; an interrupted one (Ctrl-C, a job's time limit) resumes."
        ),
        epilog=(
            "MODULE is a path to a .py file (imported by its name, its directory first on sys.path) or a "
            "module name (imported with the current directory first on sys.path); with --scheduler-file, a "
            "module that is one .py file found that way is sent to the workers, a package must be installed "
            "there. Exit status: 0 done, 1 error, 2 bad arguments (nothing written), 130 interrupted by "
            "Ctrl-C or SIGTERM (finished positions are kept: run the same command again to resume)."
        ),
    )
    p.add_argument("function", metavar="MODULE:FUNCTION", help="e.g. fits.py:peak or mypackage.fits:peak")
    p.add_argument("file", metavar="FILE", help="HDF5 file holding the USID main dataset")
    p.add_argument("--dataset", metavar="PATH", help="main dataset (path or name) when FILE holds several")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="keyword argument for FUNCTION; VALUE is read as JSON when it parses (numbers, true/false, "
        "null, lists, objects, quoted strings), else taken as a string; repeat for several; "
        "overrides --params-json",
    )
    p.add_argument("--params-json", metavar="FILE", help="keyword arguments for FUNCTION as one JSON object")
    p.add_argument("--core-dims", nargs="+", metavar="DIM", help="dimensions FUNCTION works along "
                   "(default: the spectroscopic dimensions)")  # fmt: skip
    p.add_argument(
        "--vectorized", action="store_true", help="FUNCTION takes a block of spectra, positions first"
    )
    p.add_argument(
        "--outputs",
        nargs="+",
        metavar="NAME[=DTYPE]",
        help="names of FUNCTION's outputs (for a tuple result), each optionally with its dtype, or one JSON "
        'object such as \'{"amp": {"dtype": "f4", "units": "V"}}\' (default: inferred on the first spectrum)',
    )
    p.add_argument("--store", metavar="TARGET", help="HDF5 file or .zarr store for the results "
                   "(default: FILE itself, a results group next to the dataset)")  # fmt: skip
    p.add_argument("--group", metavar="G", help="HDF5 group holding the results group")
    p.add_argument("--budget", help="memory for the whole computation, e.g. 2GiB (default: a quarter of "
                   "the available memory)")  # fmt: skip
    p.add_argument("--cores", type=int, help="worker processes (default: all but one core; with "
                   "--scheduler-file: the cluster's worker threads)")  # fmt: skip
    p.add_argument(
        "--scheduler-file",
        metavar="FILE",
        help="connect to the running dask scheduler that wrote FILE (dask scheduler --scheduler-file FILE) "
        "and compute on its workers",
    )
    p.add_argument("--wait-for-workers", type=int, default=1, metavar="N", help="with --scheduler-file: "
                   f"start once N workers have connected (default 1; at most {WORKERS_WAIT_S:.0f} s)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_map(args: argparse.Namespace) -> int:
    """Run ``lazyusid map``; arguments are all checked before the file is opened."""
    if args.wait_for_workers < 0:
        raise UsageError(f"--wait-for-workers must be 0 or more, got {args.wait_for_workers}")
    loaded = load_function(args.function)
    params = parse_params(args.param, args.params_json)
    outputs = parse_outputs(args.outputs)

    from .compute import map_spectra
    from .io.open import open_usid

    data = open_usid(args.file, args.dataset)
    client = connect(args.scheduler_file, args.wait_for_workers) if args.scheduler_file else None
    try:
        cores = args.cores
        if client is not None:
            if loaded.upload is not None:
                client.upload_file(loaded.upload)
            cannot = sorted(w for w, ok in client.run(importable, loaded.module).items() if not ok)
            if cannot:
                raise UsageError(
                    f"{len(cannot)} of the cluster's workers cannot import {loaded.module!r} (e.g. {cannot[0]}): "
                    "install it where the workers run, or put its directory on their PYTHONPATH"
                )
            cores = cores or sum(client.nthreads().values()) or None
        tic = time.perf_counter()
        result = map_spectra(
            data,
            loaded.func,
            core_dims=args.core_dims,
            params=params,
            outputs=outputs,
            vectorized=args.vectorized,
            budget=args.budget,
            cores=cores,
            client=client,
            progress=not args.no_progress,
            store=args.store if args.store is not None else args.file,
            group=args.group,
        )
        seconds = time.perf_counter() - tic
    finally:
        if client is not None:
            client.close(timeout=10)
    say(summary(data, args.core_dims, result, loaded.label, seconds))
    return 0


def summary(data, core_dims, result, label: str, seconds: float) -> str:
    """The line printed after a run: what, on how many positions, where from and to, how fast."""
    from .inputs import as_dataarray
    from .sinks import order_for_store

    data, core_dims = as_dataarray(data, core_dims)
    _, pos_dims, extra_dims = order_for_store(data, core_dims)
    per_row = 1
    for d in extra_dims:
        per_row *= data.sizes[d]
    total = per_row
    for d in pos_dims:
        total *= data.sizes[d]
    computed = int(result.attrs["usid_rows_computed"]) * per_row
    names = list(result.data_vars) if hasattr(result, "data_vars") else [result.name]
    source = f"{data.attrs.get('usid_file', '?')}:{data.attrs.get('usid_dataset', '?')}"
    where = result.attrs["usid_store"]
    if computed == 0:
        return f"already computed: {label} on {total} positions of {source} is stored in {where}"
    rest = "" if computed == total else f" (the other {total - computed} of {total} were stored before)"
    return (
        f"computed {label} on {computed} positions{rest} of {source} in {seconds:.1f} s "
        f"({computed / seconds:.3g} positions/s) into {where} (outputs: {', '.join(map(str, names))})"
    )


def load_function(spec: str) -> LoadedFunction:
    """Import ``MODULE:FUNCTION`` (see the module docstring); :class:`UsageError` says what is wrong."""
    module_part, colon, name = spec.rpartition(":")
    if not colon or not module_part or not name:
        raise UsageError(f"expected MODULE:FUNCTION (e.g. fits.py:peak or mypackage.fits:peak), got {spec!r}")
    if module_part.endswith(".py") or os.sep in module_part or (os.altsep and os.altsep in module_part):
        path = Path(module_part).expanduser()
        if not path.is_file():
            raise UsageError(f"no such file: {module_part} (in {spec!r}); give the path of a .py file")
        if path.suffix != ".py" or not path.stem.isidentifier():
            raise UsageError(
                f"{module_part} cannot be imported as a module: name it like fits.py (a Python identifier "
                "ending in .py)"
            )
        directory, module_name = str(path.resolve().parent), path.stem
    else:
        path, directory, module_name = None, os.getcwd(), module_part
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module = _import(module_name, spec)
    file = getattr(module, "__file__", None)
    if path is not None and (file is None or Path(file).resolve() != path.resolve()):
        raise UsageError(
            f"{module_part} is shadowed by the module {module_name!r} at {file or 'built in'}: rename the file"
        )
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
            raise UsageError(
                f"{module_name} ({file}) has no function {name!r}; its functions: {', '.join(found) or 'none'}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(
            f"{module_name}:{name} is not callable (a {type(obj).__name__}); name a function of {module_name}"
        )
    single_file = file is not None and Path(file).name != "__init__.py"
    upload = file if single_file and str(Path(file).resolve().parent) == directory else None
    return LoadedFunction(obj, name, module_name, upload)


def _import(module_name: str, spec: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UsageError(
                f"no module named {module_name!r} (searched the current directory and the Python path, in "
                f"{spec!r}); run from its directory, install it, or give its file: path/to/"
                f"{module_name.rpartition('.')[2]}.py:{spec.rpartition(':')[2]}"
            ) from None
        raise UsageError(f"cannot import {module_name!r}: {_one_line(exc)}") from None
    except Exception as exc:  # the module's own code failed: say where
        raise UsageError(f"cannot import {module_name!r}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".split("\n")[0]
    if isinstance(exc, SyntaxError):
        return text
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{text} (at {frames[-1].filename}:{frames[-1].lineno})" if frames else text


def parse_value(text: str):
    """``VALUE`` of ``--param``: a JSON literal when it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(pairs: list[str], json_file: str | None) -> dict:
    """Keyword arguments from ``--params-json FILE`` and then ``--param NAME=VALUE`` (which win)."""
    params: dict = {}
    if json_file is not None:
        try:
            loaded = json.loads(Path(json_file).read_text())
        except FileNotFoundError:
            raise UsageError(f"--params-json: no such file {json_file}") from None
        except OSError as exc:
            raise UsageError(f"--params-json: cannot read {json_file}: {exc.strerror}") from None
        except ValueError as exc:  # also UnicodeDecodeError
            raise UsageError(
                f'--params-json {json_file} is not JSON ({exc}); write one object, e.g. {{"widths": [2, 4]}}'
            ) from None
        if not isinstance(loaded, dict):
            raise UsageError(
                f"--params-json {json_file} holds a {type(loaded).__name__}; write one object {{name: value}}"
            )
        params.update(loaded)
    given = set()
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.isidentifier():
            raise UsageError(f"--param must look like NAME=VALUE (e.g. --param widths=[2,4]), got {pair!r}")
        if name in given:
            raise UsageError(f"--param {name} is given twice")
        given.add(name)
        params[name] = parse_value(value)
    return params


def parse_outputs(items: list[str] | None):
    """``--outputs``: ``None``, a list of names, ``{name: dtype or None}`` or one JSON object as given."""
    import numpy as np

    if not items:
        return None
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        value = parse_value(items[0])
        if not isinstance(value, dict):
            raise UsageError(f"--outputs {items[0]!r} is not a JSON object")
        return value
    declared = {}
    for item in items:
        name, eq, dtype = item.partition("=")
        if not name.isidentifier():
            raise UsageError(f"--outputs: {name!r} is not a name; write NAME or NAME=DTYPE, e.g. amp=float32")
        if eq:
            try:
                np.dtype(dtype)
            except TypeError:
                raise UsageError(f"--outputs {item}: {dtype!r} is not a NumPy dtype (e.g. float32)") from None
        declared[name] = dtype if eq else None
    return declared if any(v is not None for v in declared.values()) else list(declared)


def importable(module_name: str) -> bool:
    """Whether this process (a worker, through ``client.run``) can import ``module_name``."""
    import importlib.util

    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def connect(scheduler_file: str, n_workers: int = 1):
    """A :class:`distributed.Client` of the scheduler that wrote ``scheduler_file``, once ``n_workers`` joined.

    Waits for the file (:data:`SCHEDULER_FILE_WAIT_S`) and the workers (:data:`WORKERS_WAIT_S`).
    """
    from distributed import Client

    path = Path(scheduler_file)
    deadline = time.monotonic() + SCHEDULER_FILE_WAIT_S
    if not path.exists():
        say(f"waiting up to {SCHEDULER_FILE_WAIT_S:.0f} s for the scheduler file {path}", file=sys.stderr)
    while not path.exists():
        if time.monotonic() > deadline:
            raise FileNotFoundError(
                f"no scheduler file {path} after {SCHEDULER_FILE_WAIT_S:.0f} s: start "
                f"`dask scheduler --scheduler-file {path}` first, or check the path"
            )
        time.sleep(0.5)
    client = Client(scheduler_file=str(path), set_as_default=False)
    try:
        client.wait_for_workers(n_workers, timeout=WORKERS_WAIT_S)
    except TimeoutError:
        found = len(client.scheduler_info()["workers"])
        client.close(timeout=10)
        raise TimeoutError(
            f"{found} of {n_workers} workers connected to the scheduler of {path} within {WORKERS_WAIT_S:.0f} s: "
            f"start them with `dask worker --scheduler-file {path}`, or lower --wait-for-workers"
        ) from None
    except BaseException:
        client.close(timeout=10)
        raise
    return client
