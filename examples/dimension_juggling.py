"""Dimension juggling: a function of one frequency spectrum, looped over positions *and* DC bias.

Band-Excitation switching spectroscopy (BEPS) records, at every position
(``Y``, ``X``), one frequency spectrum per step of a DC bias waveform: the
data have dims ``(Y, X, DC_Offset, Frequency)``, and the USID file stores
them 2-D as (positions, DC_Offset × Frequency). A function that analyses one
frequency spectrum should see exactly that, and be looped over ``Y``, ``X``
*and* ``DC_Offset``. In pyUSID this means reshaping by hand; here it is
``core_dims="Frequency"``:

    data.usid.map(resonance_peak, core_dims="Frequency", store=path)

returns a Dataset with dims ``(Y, X, DC_Offset)``, stored as a USID results
group whose spectroscopic dimension is ``DC_Offset``. This script:

1. writes a synthetic BEPS file (``lazyusid.datasets.make_beps``: 16 DC
   steps of a ±10 V triangle, 64 frequencies, a ferroelectric hysteresis
   loop at every position);
2. tests ``resonance_peak`` on one (position, DC step) and shows the plan
   (one function call per position and DC step);
3. computes it everywhere into the file;
4. turns the result into a piezoresponse loop per position (the response at
   resonance projected on its phase axis) with plain xarray operations, and
   plots the loop at one position next to the generator's ground truth, and
   a map of the loop height.

Usage::

    python examples/dimension_juggling.py                  # 32 x 32 positions
    python examples/dimension_juggling.py --size 8x6 --out /tmp/beps

Writes into ``--out``: ``beps.h5`` (data and the ``Raw_Data-resonance_peak_000``
results group) and ``hysteresis_loop.png``.
"""

from __future__ import annotations

import argparse
import os
import time

import h5py
import numpy as np

import lazyusid
from lazyusid.datasets import load_ground_truth, make_beps
from lazyusid.plots import label, map_axes, rescaled

#: the units of resonance_peak's outputs: the amplitude is in the data's units (V)
OUTPUTS = {"amplitude": {"units": "same"}, "phase": {"units": "rad"}}


def resonance_peak(spectrum: np.ndarray) -> dict[str, float]:
    """Magnitude and phase of one frequency spectrum at the peak of its magnitude."""
    magnitude = np.abs(spectrum)
    k = int(np.argmax(magnitude))
    return {"amplitude": magnitude[k], "phase": np.angle(spectrum[k])}


def piezoresponse_loop(result):
    """The signed response at resonance, ``(Y, X, DC_Offset)``, from ``resonance_peak``'s result.

    Switching the polarisation flips the phase by π, so each position's
    response lies on one axis in the complex plane. The axis is the mean of
    ``exp(2i·phase)`` over the DC steps (phases taken modulo π); the loop is
    the amplitude projected on it, oriented to be positive at the largest bias.
    """
    axis = np.exp(2j * result["phase"]).mean("DC_Offset")
    reference = 0.5 * np.arctan2(axis.imag, axis.real)
    loop = result["amplitude"] * np.cos(result["phase"] - reference)
    top = int(np.argmax(result["DC_Offset"].values))
    return loop * np.sign(loop.isel(DC_Offset=top))


def parse_size(text: str) -> tuple[int, int]:
    """``"32x24"`` → ``(32, 24)``: positions along X and Y."""
    try:
        n_x, n_y = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 32x32 (NXxNY), got {text!r}") from None
    if n_x < 1 or n_y < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return n_x, n_y


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(32, 32), help="positions as NXxNY (32x32)")
    parser.add_argument("--out", default="lazyusid-examples", help="directory for the file and the plot")
    parser.add_argument("--cores", type=int, default=None, help="worker processes (default: all but one)")
    return parser.parse_args(argv)


def source_file(path: str, n_x: int, n_y: int) -> None:
    """Generate the synthetic BEPS file, unless one of this size is there already."""
    if os.path.exists(path):
        with h5py.File(path, "r") as f:
            if f["Ground_Truth/amplitude"].shape == (n_y, n_x):
                print(f"using the existing {path} ({n_y} x {n_x} positions)")
                return
    tic = time.perf_counter()
    make_beps(path, n_x=n_x, n_y=n_y, seed=0, overwrite=True)
    print(
        f"wrote synthetic BEPS data ({n_y} x {n_x} positions) to {path} in {time.perf_counter() - tic:.1f} s"
    )


def plot_loop(loop, truth, position, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, x = position["Y"], position["X"]
    one = loop.isel(position)
    volts = one["DC_Offset"].values
    order = np.r_[np.arange(volts.size), 0]  # the waveform's order, closed
    expected = truth.polarisation()[y, x] * truth.amplitude[y, x] * truth.quality_factor[y, x]

    fig, (ax_loop, ax_map) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    ax_loop.plot(volts[order], one.values[order], "o-", label="from the per-spectrum result")
    ax_loop.plot(volts[order], expected[order], "k--", lw=1, label="ground truth P·A·Q")
    ax_loop.axhline(0, color="0.7", lw=0.8)
    ax_loop.set(xlabel="DC offset (V)", ylabel="response at resonance (V)", title=f"Loop at Y={y}, X={x}")
    ax_loop.legend()
    height = ((loop.max("DC_Offset") - loop.min("DC_Offset")) / 2).assign_attrs(
        long_name="loop height", units=loop.attrs.get("units", "V")
    )
    im = map_axes(ax_map, height, cmap="viridis")
    scaled = rescaled(height, values=False)
    ax_map.plot(scaled["X"][x], scaled["Y"][y], "r+", ms=12)
    ax_map.set_title("loop height (max − min) / 2")
    fig.colorbar(im, ax=ax_map, label=label(height))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    n_x, n_y = args.size
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "beps.h5")
    source_file(path, n_x, n_y)

    data = lazyusid.open_usid(path)
    print(f"opened {data.attrs['usid_dataset']} lazily: {dict(data.sizes)}")
    probe = {"Y": n_y // 2, "X": n_x // 2, "DC_Offset": 4}
    print(
        f"resonance_peak at {probe}: {data.usid.test(resonance_peak, probe, core_dims='Frequency', outputs=OUTPUTS)}"
    )
    plan = data.usid.plan(resonance_peak, core_dims="Frequency", outputs=OUTPUTS, cores=args.cores)
    print(f"one call per position and DC step: {plan}")

    tic = time.perf_counter()
    result = data.usid.map(
        resonance_peak, core_dims="Frequency", outputs=OUTPUTS, cores=args.cores, store=path
    )
    seconds = time.perf_counter() - tic
    if result.attrs["usid_rows_computed"]:
        print(f"computed {plan.n_positions} spectra in {seconds:.1f} s into {result.attrs['usid_store']}")
    else:
        print(f"found the stored result in {result.attrs['usid_store']} ({seconds:.2f} s)")
    print(f"result: {list(result.data_vars)} with dims {dict(result.sizes)}")

    loop = piezoresponse_loop(result).compute()
    position = {"Y": n_y // 2, "X": n_x // 2}
    print(f"loop at {position}: " + " ".join(f"{v:+.2f}" for v in loop.isel(position).values) + " V")
    png = os.path.join(args.out, "hysteresis_loop.png")
    plot_loop(loop, load_ground_truth(path), position, png)
    print(f"plot: {png}")


if __name__ == "__main__":  # worker processes import this script: work only here
    main(parse_args())
