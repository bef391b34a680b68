"""The ``lazyusid`` command line: ``demo``, ``tree``, ``info`` and ``map`` (in :mod:`lazyusid.cli_map`)."""

from __future__ import annotations

import argparse
import os
import sys
import time

import h5py

from .errors import LazyUSIDError
from .usid.files import printable


def say(text: str = "", *, file=None) -> None:
    """Print one line, its control characters escaped: names and strings from files reach no terminal raw."""
    print(printable(text), file=file if file is not None else sys.stdout)


def main(argv: list[str] | None = None) -> int:
    """Run the ``lazyusid`` command; returns the exit status (1 error, 2 bad arguments, 130 interrupted)."""
    from . import __version__
    from .cli_map import UsageError, add_map_parser, run_map

    parser = argparse.ArgumentParser(
        prog="lazyusid",
        description="Apply functions to every spectrum of large USID datasets.",
    )
    parser.add_argument("--version", action="version", version=f"lazyusid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="generate a synthetic BE-PFM file and find the peak of every spectrum")
    demo.add_argument("--size", default="128x128", help="positions as NXxNY (default 128x128)")
    demo.add_argument("--out", default="lazyusid-demo", help="directory for the file and plots")
    demo.add_argument("--cores", type=int, default=None, help="worker processes (default: all but one)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    tree_p = sub.add_parser("tree", help="print the tree of an HDF5 file, marking USID main datasets")
    tree_p.add_argument("file")

    info = sub.add_parser("info", help="dimensions, sizes and units of USID main datasets")
    info.add_argument("file")
    info.add_argument("dataset", nargs="?", default=None, help="path or name of one main dataset")
    add_map_parser(sub)

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args)
        if args.command == "tree":
            from .usid.files import tree

            for line in tree(args.file).split("\n"):  # tree() escapes names: only its own newlines are left
                say(line)
            return 0
        if args.command == "map":
            return run_map(args)
        return run_info(args)
    except KeyboardInterrupt:  # a stored run has printed its checkpoint line
        return 130
    except UsageError as exc:  # nothing was written
        say(f"lazyusid {args.command}: error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except (OSError, LazyUSIDError, ValueError, TypeError) as exc:  # TypeError: an option of the wrong kind
        say(f"lazyusid {args.command}: error: {_first_line(exc)}", file=sys.stderr)
        return 1


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n")[0] if str(exc) else type(exc).__name__  # not splitlines: "\x85", "\r"


def run_info(args) -> int:
    from .io.open import open_usid
    from .sinks.describe import describe_results, results_of
    from .usid.files import list_main, no_main_message, open_file

    with open_file(args.file):
        pass  # clear errors for missing / non-HDF5 files
    names = [args.dataset] if args.dataset else list_main(args.file)
    if not names:
        raise ValueError(f"{no_main_message(args.file, args.file)} (see `lazyusid tree {args.file}`)")
    for name in names:
        opened = open_usid(args.file, name)
        if hasattr(opened, "data_vars"):  # records: a Dataset of their fields
            fields = ", ".join(f"{k} [{v.attrs.get('units', '')}]" for k, v in opened.data_vars.items())
            arr = next(iter(opened.data_vars.values()))
            say(f"{opened.attrs['usid_dataset']}: records of {fields}")
        else:
            arr = opened
            say(f"{arr.attrs['usid_dataset']}: {arr.attrs['quantity']} [{arr.attrs['units']}], {arr.dtype}")
        for dim in arr.dims:
            coord = arr.coords.get(dim)
            units = coord.attrs.get("units", "") if coord is not None else ""
            span = ""
            if coord is not None and coord.size:
                span = f"  {float(coord.min()):.4g} … {float(coord.max()):.4g} {units}"
            say(f"  {dim:<20} {arr.sizes[dim]:>8}{span}")
        with h5py.File(args.file, "r") as f:
            for grp in results_of(f[opened.attrs["usid_dataset"]]):
                say(f"  {describe_results(grp)}")
    return 0


def run_demo(args) -> int:

    from .compute import apply_at, map_spectra
    from .core.outputs import SAME_UNITS
    from .datasets import make_be_pfm
    from .io.open import open_usid
    from .tutorial import PEAK_WIDTHS, peak_amplitude

    try:
        n_x, n_y = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 128x128, got {args.size!r}") from None
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "be_pfm.h5")
    tic = time.perf_counter()
    if not os.path.exists(path):
        make_be_pfm(path, n_x=n_x, n_y=n_y)
        say(
            f"wrote synthetic BE-PFM data ({n_y} x {n_x} positions) to {path} in {time.perf_counter() - tic:.1f} s"
        )
    data = open_usid(path)
    if (data.sizes["X"], data.sizes["Y"]) != (n_x, n_y):
        raise ValueError(
            f"{path} holds {data.sizes['Y']}x{data.sizes['X']} positions; remove it or use --out"
        )
    say(f"opened {data.name} lazily: dims {dict(data.sizes)}")

    params = {"widths": PEAK_WIDTHS}
    probe = {"Y": n_y // 2, "X": n_x // 2}
    outputs = {"peak_amplitude": {"units": SAME_UNITS}}  # in the data's units, V
    value = apply_at(data, peak_amplitude, probe, params=params, outputs=outputs)
    say(f"tested peak_amplitude at {probe}: {value:.4g} {data.attrs['units']}")

    tic = time.perf_counter()
    amplitude = map_spectra(
        data,
        peak_amplitude,
        params=params,
        outputs=outputs,
        store=path,
        cores=args.cores,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - tic
    rows = amplitude.attrs["usid_rows_computed"]
    where = amplitude.attrs["usid_store"]
    if rows == 0:
        say(f"found the stored result of this very computation in {where}: returned it in {seconds:.2f} s")
    else:
        n = rows  # one spectrum per position here
        say(
            f"computed {n} spectra in {seconds:.1f} s ({n / seconds:.0f} spectra/s), checkpointed into {where}"
        )
    amplitude = amplitude.compute()
    pngs = _demo_plots(data, amplitude, probe, value, args.out)
    say(f"plots: {', '.join(pngs)}")
    say(f"run it again to get the stored result at once; see the file with `lazyusid info {path}`")
    return 0


def _demo_plots(data, amplitude, probe, value, out) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .datasets import load_ground_truth
    from .plots import demo_figures

    truth = load_ground_truth(data.attrs["usid_file"])
    figures = demo_figures(data, amplitude, truth.amplitude * truth.quality_factor, probe, value)
    pngs = []
    for name, fig in figures.items():
        pngs.append(os.path.join(out, f"{name}.png"))
        fig.savefig(pngs[-1], dpi=100, bbox_inches="tight", pad_inches=0.1)
        plt.close(fig)
    return pngs


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
