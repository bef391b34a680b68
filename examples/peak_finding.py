"""The seed tutorial end to end: the resonance peak of every spectrum of a BE-PFM scan.

pyUSID's ``Process`` tutorial finds, in every spectrum of a Band-Excitation
PFM scan, the peak of ``abs(spectrum)`` closest to the centre of the band
(``scipy.signal.find_peaks_cwt``). This script does the same on a synthetic
128 × 128 × 119 file, in two ways that share one engine:

1. with the ``.usid`` accessor: test the function on one position and plot
   that spectrum, look at the block plan, then compute the peak amplitude
   map into the file (``store=``: a checkpointed USID results group next to
   the measurement) and plot it;
2. with ``PeakFinder``, the tutorial's pyUSID class ported to
   ``lazyusid.Process`` (declared ``outputs`` instead of hand-written
   ``_create_results_datasets`` / ``_write_results_chunk``): it computes into
   its own results group; a second ``PeakFinder`` finds it as a duplicate and
   returns it without computing; both maps agree.

Run it again and both results come back from the file at once.

Usage::

    python examples/peak_finding.py                        # 128 x 128 positions
    python examples/peak_finding.py --size 32x24 --out /tmp/peaks

Writes into ``--out``: ``be_pfm.h5`` (data and both results groups),
``tested_spectrum.png`` and ``peak_amplitude.png``.
"""

from __future__ import annotations

import argparse
import os
import time

import h5py
import numpy as np

import lazyusid
from lazyusid.datasets import MAIN_DATASET, load_ground_truth, make_be_pfm
from lazyusid.plots import label, map_axes, si_prefix
from lazyusid.tutorial import PEAK_WIDTHS, peak_amplitude


class PeakFinder(lazyusid.Process):
    """pyUSID's tutorial ``PeakFinder``, ported: the import changed, the outputs declared."""

    outputs = {"Peak_Response": {"dtype": "float32", "units": "same"}}  # a declaration, read only: in V

    def __init__(self, h5_main, **kwargs):
        super().__init__(h5_main, "Peak_Finding", **kwargs)

    @staticmethod
    def _map_function(spectrum, *args, **kwargs):
        return peak_amplitude(spectrum, kwargs["widths"])


def parse_size(text: str) -> tuple[int, int]:
    """``"32x24"`` → ``(32, 24)``: positions along X and Y."""
    try:
        n_x, n_y = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 128x128 (NXxNY), got {text!r}") from None
    if n_x < 1 or n_y < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return n_x, n_y


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(128, 128), help="positions as NXxNY (128x128)")
    parser.add_argument("--out", default="lazyusid-examples", help="directory for the file and the plots")
    parser.add_argument("--cores", type=int, default=None, help="worker processes (default: all but one)")
    return parser.parse_args(argv)


def source_file(path: str, n_x: int, n_y: int) -> None:
    """Generate the synthetic BE-PFM file, unless one of this size is there already."""
    if os.path.exists(path):
        with h5py.File(path, "r") as f:
            if f["Ground_Truth/amplitude"].shape == (n_y, n_x):
                print(f"using the existing {path} ({n_y} x {n_x} positions)")
                return
    tic = time.perf_counter()
    make_be_pfm(path, n_x=n_x, n_y=n_y, seed=0, overwrite=True)
    print(
        f"wrote synthetic BE-PFM data ({n_y} x {n_x} positions x 119 frequencies) to {path} "
        f"in {time.perf_counter() - tic:.1f} s"
    )


def report(what: str, result, seconds: float) -> None:
    rows = result.attrs["usid_rows_computed"]
    where = result.attrs["usid_store"]
    if rows:
        print(
            f"{what}: computed {rows} spectra in {seconds:.1f} s ({rows / seconds:.0f} spectra/s) into {where}"
        )
    else:
        print(f"{what}: found the stored result of this very computation in {where} ({seconds:.2f} s)")


def plot_spectrum(data, position, value, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spectrum = data.isel(position).compute()
    factor, units = si_prefix(spectrum["Frequency"].values, "Hz")  # kHz
    freq = spectrum["Frequency"].values / factor
    magnitude = np.abs(spectrum.values)
    peak = int(np.argmin(np.abs(magnitude - value)))  # the sample peak_amplitude returned
    fig, (ax_amp, ax_phase) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, layout="constrained")
    ax_amp.plot(freq, magnitude, label="|response|")
    ax_amp.plot(
        freq[peak], value, "o", color="C3", label=f"found peak: {value:.3g} V at {freq[peak]:.4g} {units}"
    )
    ax_amp.set(ylabel="|Piezoresponse| (V)", title=f"Tested spectrum at Y={position['Y']}, X={position['X']}")
    ax_amp.legend(loc="upper left")
    ax_phase.plot(freq, np.unwrap(np.angle(spectrum.values)), color="C1")
    ax_phase.set(xlabel=f"Frequency ({units})", ylabel="phase, unwrapped (rad)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_maps(maps: dict, path) -> None:
    """Maps (DataArrays over Y, X) side by side on one colour scale, axes in their coordinates' units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmin, vmax = min(float(m.min()) for m in maps.values()), max(float(m.max()) for m in maps.values())
    n_y, n_x = next(iter(maps.values())).shape
    fig, axes = plt.subplots(
        1,
        len(maps),
        figsize=(3.6 * len(maps), 3.6 * n_y / n_x + 1.2),
        squeeze=False,
        layout="constrained",
        sharey=True,
    )
    for ax, (title, image) in zip(axes[0], maps.items()):
        im = map_axes(ax, image, cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(title)
    for ax in axes[0, 1:]:
        ax.set_ylabel("")
    fig.colorbar(
        im, ax=axes[0].tolist(), label=label(next(iter(maps.values()))), location="bottom", shrink=0.6
    )
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    n_x, n_y = args.size
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "be_pfm.h5")
    source_file(path, n_x, n_y)

    # 1. the accessor ------------------------------------------------------------------------------
    data = lazyusid.open_usid(path)  # lazy: nothing is read yet
    print(f"opened {data.attrs['usid_dataset']} lazily: {dict(data.sizes)}, {data.dtype}")
    params = {"widths": PEAK_WIDTHS}
    position = {"Y": n_y // 2, "X": n_x // 2}
    outputs = {"peak_amplitude": {"units": "same"}}  # the peak amplitude is in the data's units, V
    value = data.usid.test(
        peak_amplitude, position, params=params, outputs=outputs
    )  # reads this one spectrum
    print(f"tested peak_amplitude at {position}: {value:.4g} V")
    plot_spectrum(data, position, value, os.path.join(args.out, "tested_spectrum.png"))
    print(data.usid.plan(peak_amplitude, params=params, outputs=outputs, cores=args.cores))

    tic = time.perf_counter()
    amplitude = data.usid.map(peak_amplitude, params=params, outputs=outputs, cores=args.cores, store=path)
    report("accessor", amplitude, time.perf_counter() - tic)

    # 2. the pyUSID-style Process, on an h5py dataset as pyUSID users hold it --------------------------
    with h5py.File(path, "r+") as h5_file:
        h5_main = h5_file[MAIN_DATASET]
        finder = PeakFinder(h5_main, parms_dict=params, cores=args.cores)
        print(f"{finder!r}; test(0) = {finder.test(0):.4g} V")
        tic = time.perf_counter()
        group = finder.compute()
        report(f"PeakFinder.compute() -> {group.name}", finder.result, time.perf_counter() - tic)

        again = PeakFinder(h5_main, parms_dict=params, cores=args.cores)
        print(f"a new PeakFinder finds duplicate_groups={[g.name for g in again.duplicate_groups]}")
        tic = time.perf_counter()
        again.compute()
        report("its compute()", again.result, time.perf_counter() - tic)
        process_map = again.result.values

    accessor_map = amplitude.values
    same = np.array_equal(accessor_map.astype(np.float32), process_map)
    print(
        f"accessor and PeakFinder maps agree: {same} (max |difference| "
        f"{np.max(np.abs(accessor_map - process_map)):.2g} V; PeakFinder stores float32)"
    )

    truth = load_ground_truth(path)
    amplitude = amplitude.compute().assign_attrs(long_name="peak amplitude")
    plot_maps(
        {
            "accessor (store=)": amplitude,
            "PeakFinder (Process)": amplitude.copy(data=process_map),
            "ground truth |R(w0)| = A·Q": amplitude.copy(data=truth.amplitude * truth.quality_factor),
        },
        os.path.join(args.out, "peak_amplitude.png"),
    )
    print(
        f"plots: {os.path.join(args.out, 'tested_spectrum.png')}, {os.path.join(args.out, 'peak_amplitude.png')}"
    )
    print(f"see the results groups with `lazyusid tree {path}`")


if __name__ == "__main__":  # worker processes import this script: work only here
    main(parse_args())
