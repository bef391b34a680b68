"""A band-excitation analysis pipeline: SHO guess → fit from each position's guess → refit where it failed.

pycroscopy's ``BESHOFitter`` analyses BE-PFM data in two steps: a cheap
**guess** of the simple-harmonic-oscillator parameters at every position,
then a least-squares **fit** of every spectrum started from that position's
guess. This script runs that pipeline with lazyusid, every step stored as a
USID results group in the source file:

1. ``guess_sho``, a vectorised function (a whole block of spectra at once):
   the resonance ``w0`` at the peak of ``|R|``, the quality factor set to a
   prior ``Q`` (the ``--quality-factor`` parameter), the amplitude
   ``A = |R(w0)| / Q`` and the phase ``φ = arg R(w0) − π/2``. It returns a dict
   of four arrays, so the stored result is a Dataset of four maps.
2. ``fit_from_guess``, the least-squares fit of ``examples/sho_fit.py``
   (``fit_sho``, imported from it) started from that position's guess:
   ``params={"guess": guess}`` with the guess Dataset, so the function gets a
   dict of four numbers per spectrum. The fit is given a budget of
   ``max_nfev=7`` evaluations of the residuals and raises ``RuntimeError``
   where it has not converged by then. That is the failure here, made on
   purpose, and it is real: from this crude guess most fits converge in 5–7
   evaluations, but those where the prior ``Q`` is furthest from the truth
   need 8 or more (about 2 % of the positions of the 32 × 24 default; the
   share depends on the size and on the prior). With ``on_error="skip"``
   those positions get NaN and the run completes; ``fit.usid.failed`` is the
   mask of where it failed and ``fit.usid.errors`` the first messages.
3. the **refit** of only those positions (``roi=fit.usid.failed``) with
   another method: ``fit_sho`` as ``sho_fit.py`` runs it, from its own
   starting point read off the spectrum (peak and half-power width) and with
   scipy's default budget of 400 evaluations.

Each step prints how many positions it computed and how long it took; the
script then prints the lineage of the results (``lazyusid.lineage``: the fit
names the spectra and the guess it started from, by their tokens) and the
median errors of the final maps (the fit, with the refit where the fit
failed) against the generator's ground truth. It then runs the whole
pipeline a second time, which computes nothing (every step is found in the
file by its token: 0 positions each), and a third time with another guess
parameter (``--changed-quality-factor``): the guess and the fit are
recomputed into new groups, because the fit's identity includes its input's
token; the refit, whose inputs are unchanged, computes only the positions of
the new failures that it has not computed before (a region of interest is
not part of a result's identity).

Usage::

    python examples/be_sho_pipeline.py                          # 32 x 24 positions
    python examples/be_sho_pipeline.py --size 128x128 --out /tmp/pipeline

Writes into ``--out``: ``be_pipeline.h5`` (the data and the guess, fit and
refit results groups of both guess parameters; see them with
``lazyusid tree``) and ``pipeline_maps.png`` (where the fit failed, and the
final resonance-frequency map beside the true one). See ``docs/pipelines.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import xarray as xr

import lazyusid
from lazyusid.datasets import load_ground_truth

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sho_fit.py sits beside this script
from sho_fit import PARAMETERS, fit_errors, fit_sho, parse_size, source_file

#: evaluations of the residuals the fit of step 2 may use before it gives up (raises)
MAX_NFEV = 7
#: the three steps, in the order they run
STEPS = ("guess", "fit", "refit")


def guess_sho(block: np.ndarray, freqs: np.ndarray, quality_factor: float = 100.0) -> dict[str, np.ndarray]:
    """A cheap SHO guess of a block of spectra ``(positions, frequencies)``, one value per position.

    The resonance is at the peak of ``|R|``, where the SHO response is
    ``R(w0) = i·A·Q·exp(iφ)``; ``Q`` is not measured but set to the prior
    ``quality_factor``.
    """
    block = np.asarray(block, dtype=np.complex128)
    k = np.argmax(np.abs(block), axis=-1)
    peak = np.take_along_axis(block, k[:, None], axis=-1)[:, 0]
    q = np.full(peak.shape, float(quality_factor))
    return {
        "amplitude": np.abs(peak) / q,
        "frequency": np.asarray(freqs, dtype=np.float64)[k],
        "quality_factor": q,
        "phase": np.angle(peak * -1j),
    }


def fit_from_guess(
    spectrum: np.ndarray, freqs: np.ndarray, guess: dict, max_nfev: int = MAX_NFEV
) -> dict[str, float]:
    """``fit_sho`` started from this position's guess (a dict of the four guessed parameters)."""
    start = tuple(float(guess[name]) for name in PARAMETERS)
    return fit_sho(spectrum, freqs, start=start, max_nfev=max_nfev)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(32, 24), help="positions as NXxNY (32x24)")
    parser.add_argument("--out", default="lazyusid-examples", help="directory for the file and the plot")
    parser.add_argument("--cores", type=int, default=None, help="workers (default: all but one core)")
    parser.add_argument("--quality-factor", type=float, default=100.0, help="the guess's prior Q (100)")
    parser.add_argument(
        "--changed-quality-factor",
        type=float,
        default=150.0,
        help="the prior Q of the third pass, which recomputes the guess and the fit (150)",
    )
    return parser.parse_args(argv)


def group_name(result) -> str:
    """``Raw_Data-SHO_Fit_000`` from a stored result's ``usid_store`` (``file:/path/to/group``)."""
    return result.attrs["usid_store"].rsplit("/", 1)[-1]


def run_step(name: str, data: xr.DataArray, func, total: int, **options) -> tuple[xr.Dataset, int]:
    """Run one step into the source file; print what it computed, how long it took and what failed."""
    tic = time.perf_counter()
    result = data.usid.map(func, progress=False, **options)
    seconds = time.perf_counter() - tic
    rows = int(result.attrs["usid_rows_computed"])
    line = (
        f"  {name + ':':<6} computed {rows} of {total} positions in {seconds:.2f} s -> {group_name(result)}"
    )
    if options.get("on_error") == "skip":
        n_failed = int(result.usid.failed.sum())
        line += f"; {n_failed} failed"
        if n_failed:
            first = result.usid.errors[0]
            at = ", ".join(f"{d}={first['index'][d]}" for d in ("Y", "X"))
            line += f" (first at {at}: {first['type']}: {first['message']})"
    print(line)
    return result, rows


def run_pipeline(data: xr.DataArray, label: str, quality_factor: float, cores: int | None) -> dict:
    """Guess, fit from the guess, refit where the fit failed: all stored in the source file."""
    path = data.attrs["usid_file"]
    total = int(np.prod([data.sizes[d] for d in ("Y", "X")]))
    freqs = data["Frequency"].values.astype(np.float64)
    print(f"{label} (guess quality_factor={quality_factor:g}):")
    store = dict(store=path, cores=cores)
    guess, n_guess = run_step(
        "guess",
        data,
        guess_sho,
        total,
        params={"freqs": freqs, "quality_factor": quality_factor},
        vectorized=True,
        tool="SHO_Guess",
        **store,
    )
    fit, n_fit = run_step(
        "fit",
        data,
        fit_from_guess,
        total,
        params={"freqs": freqs, "guess": guess},  # a Dataset over (Y, X): a dict of 4 numbers per position
        on_error="skip",
        tool="SHO_Fit",
        **store,
    )
    failed = fit.usid.failed.compute()
    steps = {"guess": (guess, n_guess), "fit": (fit, n_fit), "refit": (None, 0)}
    if failed.any():
        steps["refit"] = run_step(
            "refit",
            data,
            fit_sho,
            total,
            params={"freqs": freqs},
            roi=failed,  # only where the fit failed
            on_error="skip",
            tool="SHO_Refit",
            **store,
        )
    else:
        print("  refit: the fit failed nowhere; nothing to refit")
    computed = {name: rows for name, (_, rows) in steps.items()}
    if not any(computed.values()):
        print(f"{label} computed nothing: 0 positions for every step (all found in the file)")
    else:
        print(
            f"{label} computed "
            + ", ".join(f"{name} {rows}" for name, rows in computed.items())
            + " positions"
        )
    return steps


def final_maps(steps: dict) -> tuple[xr.Dataset, xr.DataArray]:
    """The fit, with the refit where the fit failed; and where both failed."""
    fit = steps["fit"][0][list(PARAMETERS)].compute()
    failed = fit.usid.failed.compute()
    refit = steps["refit"][0]
    if refit is None:
        return fit, failed
    refit = refit[list(PARAMETERS)].compute()
    return xr.where(failed, refit, fit), failed & refit.usid.failed.compute()


def print_errors(steps: dict, truth) -> None:
    """Median errors of the final maps against the ground truth, where they are not NaN."""
    maps, still_failed = final_maps(steps)
    n_fit = int(steps["fit"][0].usid.failed.sum())
    n_left = int(still_failed.sum())
    print(
        f"final maps: the fit, refitted at its {n_fit} failed positions; {n_left} positions failed both "
        "(left out below)"
    )
    errors = fit_errors({k: maps[k].values for k in PARAMETERS}, truth)
    good = ~still_failed.values
    print("  against the ground truth, median (95th percentile) over the other positions:")
    for name, err in errors.items():
        kind = "absolute error (rad)" if name == "phase" else "relative error"
        values = err[good]
        print(f"  {name:<15} {kind:<21} {np.median(values):.3g} ({np.percentile(values, 95):.3g})")


def plot_pipeline(steps: dict, truth, path: str) -> None:
    """Where the fit failed, and the final resonance-frequency map beside the true one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps, _ = final_maps(steps)
    failed = steps["fit"][0].usid.failed.values
    true = np.asarray(truth.frequency) / 1e3
    lo, hi = float(true.min()), float(true.max())
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    axes[0].imshow(failed, origin="lower", cmap="gray_r", vmin=0, vmax=1)
    axes[0].set_title(f"fit failed (max_nfev={MAX_NFEV}): {int(failed.sum())} positions, refitted")
    for ax, title, image in (
        (axes[1], "w0, fit + refit", maps["frequency"].values / 1e3),
        (axes[2], "w0, ground truth", true),
    ):
        im = ax.imshow(image, origin="lower", cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(title)
    fig.colorbar(im, ax=axes[1:].tolist(), label="w0 (kHz)", shrink=0.9)
    for ax in axes:
        ax.set(xlabel="X (positions)", ylabel="Y (positions)")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_lineage(result, what: str) -> None:
    """What ``lazyusid.lineage`` says a stored result was computed from, newest step first."""
    print(f"lineage of the {what}:")
    for step in lazyusid.lineage(result):
        print(f"  {step['store'].rsplit('/', 1)[-1]}  tool={step['tool']}  token={step['token'][:12]}")
        by_source: dict = {}  # a Dataset input is one input per variable: show them together
        for source in step["inputs"]:
            name, _, variable = source["name"].partition(".")
            where = source.get("store") or source.get("dataset")
            key = (name, where, source.get("token"))
            by_source.setdefault(key, []).append(variable)
        for (name, where, token), variables in by_source.items():
            shown = where.rsplit(":", 1)[-1]
            if any(variables):
                shown += f" ({', '.join(variables)})"
            if token:
                shown += f", token={token[:12]}"
            print(f"    {name:<6} <- {shown}")


def main(args: argparse.Namespace) -> None:
    n_x, n_y = args.size
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "be_pipeline.h5")
    source_file(path, n_x, n_y)
    truth = load_ground_truth(path)
    data = lazyusid.open_usid(path)

    steps = run_pipeline(data, "pass 1", args.quality_factor, args.cores)
    print_lineage(steps["fit"][0], "fit")
    if steps["refit"][0] is not None:
        print_lineage(steps["refit"][0], "refit")
    print_errors(steps, truth)
    plot = os.path.join(args.out, "pipeline_maps.png")
    plot_pipeline(steps, truth, plot)
    print(f"plot: {plot}")

    print()
    run_pipeline(data, "pass 2 (the same again)", args.quality_factor, args.cores)

    print()
    steps = run_pipeline(data, "pass 3 (another guess parameter)", args.changed_quality_factor, args.cores)
    print_errors(steps, truth)
    print(f"results groups in {path}: see them with `lazyusid tree {path}`")


if __name__ == "__main__":  # worker processes import this script: work only here
    main(parse_args())
