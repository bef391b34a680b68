"""Fit a simple harmonic oscillator to every spectrum and compare the maps with the ground truth.

Band-Excitation PFM measures, at every position, the complex response of the
cantilever around its contact resonance. The standard analysis fits the
simple-harmonic-oscillator (SHO) model

    R(w) = A · exp(iφ) · w0² / (w² − w0² − i·w·w0/Q)

to each spectrum, giving maps of the amplitude ``A``, the resonance
frequency ``w0``, the quality factor ``Q`` and the phase ``φ``. This script:

1. writes a synthetic 128 × 128 × 119 BE-PFM file whose ground truth is known;
2. fits one spectrum (``data.usid.test``) and plots the data with the fit;
3. fits every spectrum into the file (``data.usid.map(..., store=...)``):
   ``fit_sho`` returns a dict of five numbers, so the result is an
   ``xarray.Dataset`` with ``amplitude``, ``frequency``, ``quality_factor``,
   ``phase`` and ``r_squared`` (the coefficient of determination of the
   complex fit), stored as a checkpointed USID results group;
4. compares the fitted maps with the generator's ground truth
   (``lazyusid.datasets.load_ground_truth``), prints the median errors, and
   plots fitted and true maps side by side.

The fit is ``scipy.optimize.least_squares`` on the complex residuals (real
and imaginary parts stacked), with an analytic Jacobian, bounds, and initial
guesses read off the spectrum: ``w0`` at the peak of ``|R|``, ``Q`` from the
half-power width of that peak, ``A = |R(w0)| / Q`` and ``φ = arg R(w0) − π/2``
(at resonance ``R = i·A·Q·exp(iφ)``). It takes about 2 ms per spectrum.

Usage::

    python examples/sho_fit.py                             # 128 x 128 positions
    python examples/sho_fit.py --size 32x24 --out /tmp/sho

Writes into ``--out``: ``be_pfm.h5`` (data and the ``Raw_Data-SHO_Fit_000``
results group), ``sho_spectrum.png`` and ``sho_maps.png``.
"""

from __future__ import annotations

import argparse
import os
import time

import h5py
import numpy as np
from scipy.optimize import least_squares

import lazyusid
from lazyusid.datasets import load_ground_truth, make_be_pfm
from lazyusid.plots import map_axes, si_prefix

#: the fitted parameters, named as in the ground truth
PARAMETERS = ("amplitude", "frequency", "quality_factor", "phase")
#: the units of fit_sho's outputs: the amplitude is in the data's units (V), stored with the values
OUTPUTS = {
    "amplitude": {"units": "same"},
    "frequency": {"units": "Hz"},
    "quality_factor": {"units": ""},
    "phase": {"units": "rad"},
    "r_squared": {"units": ""},
}
#: how the maps name each parameter
SYMBOLS = {"amplitude": "A", "frequency": "w0", "quality_factor": "Q", "phase": "φ", "r_squared": "R²"}


def sho_model(freqs, amplitude, frequency, quality_factor, phase) -> np.ndarray:
    """The complex SHO response ``A·exp(iφ) / (r² − 1 − i·r/Q)`` with ``r = w / w0``."""
    r = np.asarray(freqs, dtype=np.float64) / frequency
    return amplitude * np.exp(1j * phase) / (r * r - 1.0 - 1j * r / quality_factor)


def sho_guess(spectrum: np.ndarray, freqs: np.ndarray) -> tuple[float, float, float, float]:
    """Initial ``(A, w0, Q, φ)`` read off the spectrum: peak, half-power width, phase at the peak."""
    magnitude = np.abs(spectrum)
    k = int(np.argmax(magnitude))
    above = magnitude >= magnitude[k] / np.sqrt(2)  # the half-power band of |R|², width w0 / Q
    lo = k
    while lo > 0 and above[lo - 1]:
        lo -= 1
    hi = k
    while hi < magnitude.size - 1 and above[hi + 1]:
        hi += 1
    step = (freqs[-1] - freqs[0]) / (freqs.size - 1)
    w0 = float(freqs[k])
    q = w0 / ((hi - lo + 1) * step)
    phase = float(np.angle(spectrum[k] * -1j))  # R(w0) = i·A·Q·exp(iφ)
    return float(magnitude[k]) / q, w0, q, phase


def fit_sho(
    spectrum: np.ndarray,
    freqs: np.ndarray,
    start: tuple[float, float, float, float] | None = None,
    max_nfev: int | None = None,
) -> dict[str, float]:
    """Least-squares SHO fit of one complex spectrum: A, w0, Q, φ and R².

    The fit runs on normalised values (the spectrum divided by its largest
    magnitude, frequencies by the centre of the band) so that all four
    parameters are of order one. It starts from ``start`` = ``(A, w0, Q, φ)``
    (V, Hz, 1, rad; e.g. a guess computed before) or, by default, from
    :func:`sho_guess`. ``max_nfev`` caps the evaluations of the residuals
    (default: scipy's, 400); a fit that reaches the cap before converging
    raises ``RuntimeError``.
    """
    spectrum = np.asarray(spectrum, dtype=np.complex128)
    freqs = np.asarray(freqs, dtype=np.float64)
    scale = float(np.abs(spectrum).max())
    if not np.isfinite(scale) or scale == 0:
        return {**dict.fromkeys(PARAMETERS, np.nan), "r_squared": np.nan}
    y = spectrum / scale
    f_c = float(freqs.mean())
    if start is None:
        a, w0, q, phase = sho_guess(y, freqs)
    else:
        a, w0, q, phase = start[0] / scale, *start[1:]

    def residuals(p):
        d = sho_model(freqs, p[0], p[1] * f_c, p[2], p[3]) - y
        return np.concatenate([d.real, d.imag])

    def jacobian(p):
        amp, u, qf, phi = p
        r = freqs / (u * f_c)
        denom = r * r - 1.0 - 1j * r / qf
        model = amp * np.exp(1j * phi) / denom
        columns = np.stack(
            [
                model / amp,  # ∂R/∂A
                model * (2 * r - 1j / qf) * r / (u * denom),  # ∂R/∂u, u = w0 / f_c
                -1j * model * r / (qf * qf * denom),  # ∂R/∂Q
                1j * model,  # ∂R/∂φ
            ],
            axis=1,
        )
        return np.concatenate([columns.real, columns.imag])

    lower = np.array([0.0, freqs[0] / f_c, 1.0, -2 * np.pi])
    upper = np.array([np.inf, freqs[-1] / f_c, 1e4, 2 * np.pi])
    x0 = np.clip([a, w0 / f_c, q, phase], np.nextafter(lower, upper), np.nextafter(upper, lower))
    fit = least_squares(residuals, x0, jac=jacobian, bounds=(lower, upper), x_scale="jac", max_nfev=max_nfev)
    if fit.status == 0:
        raise RuntimeError(f"the SHO fit did not converge in {fit.nfev} evaluations (max_nfev={max_nfev})")
    amp, u, qf, phi = fit.x
    rest = np.sum(np.abs(y - sho_model(freqs, amp, u * f_c, qf, phi)) ** 2)
    total = np.sum(np.abs(y - y.mean()) ** 2)
    return {
        "amplitude": amp * scale,
        "frequency": u * f_c,
        "quality_factor": qf,
        "phase": float(np.angle(np.exp(1j * phi))),  # wrapped to (−π, π]
        "r_squared": 1.0 - rest / total,
    }


def fit_errors(fitted, truth) -> dict[str, np.ndarray]:
    """Per-position errors: relative for A, w0 and Q; absolute (wrapped, rad) for the phase."""
    errors = {}
    for name in PARAMETERS[:3]:
        true = np.asarray(getattr(truth, name), dtype=np.float64)
        errors[name] = np.abs(np.asarray(fitted[name], dtype=np.float64) / true - 1.0)
    dphi = np.asarray(fitted["phase"], dtype=np.float64) - truth.phase
    errors["phase"] = np.abs(np.angle(np.exp(1j * dphi)))
    return errors


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


def plot_spectrum(data, position, fitted, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spectrum = data.isel(position).compute()
    freqs = spectrum["Frequency"].values.astype(np.float64)
    factor, units = si_prefix(freqs, "Hz")  # kHz
    model = sho_model(freqs, *(fitted[name] for name in PARAMETERS))
    fig, (ax_amp, ax_phase) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, layout="constrained")
    ax_amp.plot(freqs / factor, np.abs(spectrum.values), ".", ms=4, label="data")
    ax_amp.plot(freqs / factor, np.abs(model), label=f"SHO fit, R² = {fitted['r_squared']:.3f}")
    ax_amp.set(ylabel="|Piezoresponse| (V)", title=f"SHO fit at Y={position['Y']}, X={position['X']}")
    ax_amp.legend(loc="upper left")
    ax_phase.plot(freqs / factor, np.angle(spectrum.values), ".", ms=4)
    ax_phase.plot(freqs / factor, np.angle(model))
    ax_phase.set(xlabel=f"Frequency ({units})", ylabel="phase (rad)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_maps(fitted, truth, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = maps_figure(fitted, truth)
    fig.savefig(path, dpi=90, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)


def maps_figure(fitted, truth):
    """Ground truth (top) and fitted (bottom) maps per parameter on one colour scale; R² of the fit at the right."""
    import matplotlib.pyplot as plt

    n_y, n_x = fitted["amplitude"].shape
    panel = 3.0
    fig, axes = plt.subplots(2, 5, figsize=(5 * panel, 2 * panel * n_y / n_x + 1.6), layout="constrained")
    for col, name in enumerate(PARAMETERS):
        fit = fitted[name]
        factor, units = si_prefix(getattr(truth, name), fit.attrs["units"])
        true = fit.copy(data=np.asarray(getattr(truth, name), dtype=np.float64) / factor)
        fit = fit / factor
        lo, hi = float(true.min()), float(true.max())
        for row, (title, image) in enumerate((("ground truth", true), ("fitted", fit))):
            im = map_axes(axes[row, col], image, cmap="viridis", vmin=lo, vmax=hi)
            axes[row, col].set_title(f"{SYMBOLS[name]}, {title}")
        unit = f" ({units})" if units else ""
        fig.colorbar(im, ax=axes[:, col].tolist(), location="bottom", shrink=0.8, label=SYMBOLS[name] + unit)
    im = map_axes(axes[0, 4], fitted["r_squared"], cmap="magma", vmin=0.9, vmax=1)
    axes[0, 4].set_title("R² of the fit")
    fig.colorbar(im, ax=axes[:, 4].tolist(), location="bottom", shrink=0.8, label="R²", extend="min")
    r2 = np.asarray(fitted["r_squared"]).ravel()
    axes[1, 4].hist(np.clip(r2, 0.9, 1.0), bins=40, range=(0.9, 1.0), color="C3")
    axes[1, 4].set(title="R² over all positions", xlabel="R²", ylabel="positions", xlim=(0.9, 1.0))
    for ax in axes[0, :]:
        ax.set_xlabel("")
    for ax in axes[:, 1:4].ravel():
        ax.set_ylabel("")
    return fig


def main(args: argparse.Namespace) -> None:
    n_x, n_y = args.size
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "be_pfm.h5")
    source_file(path, n_x, n_y)
    truth = load_ground_truth(path)

    data = lazyusid.open_usid(path)
    params = {"freqs": data["Frequency"].values.astype(np.float64)}
    position = {"Y": n_y // 2, "X": n_x // 2}
    one = data.usid.test(fit_sho, position, params=params, outputs=OUTPUTS)
    print(f"fit at {position}: " + ", ".join(f"{k}={float(v):.5g}" for k, v in one.items()))
    print(
        "  ground truth:  "
        + ", ".join(f"{k}={float(getattr(truth, k)[position['Y'], position['X']]):.5g}" for k in PARAMETERS)
    )
    plot_spectrum(data, position, one, os.path.join(args.out, "sho_spectrum.png"))

    tic = time.perf_counter()
    fitted = data.usid.map(
        fit_sho, params=params, outputs=OUTPUTS, cores=args.cores, store=path, tool="SHO_Fit"
    )
    seconds = time.perf_counter() - tic
    rows, where = fitted.attrs["usid_rows_computed"], fitted.attrs["usid_store"]
    if rows:
        print(f"fitted {rows} spectra in {seconds:.1f} s ({rows / seconds:.0f} spectra/s) into {where}")
    else:
        print(f"found the stored fit in {where} ({seconds:.2f} s)")
    print(f"result: a Dataset with {list(fitted.data_vars)}, dims {dict(fitted.sizes)}")

    fitted = fitted.compute()
    errors = fit_errors(fitted, truth)
    print("fit against the ground truth, median (95th percentile) over all positions:")
    for name, err in errors.items():
        kind = "absolute error (rad)" if name == "phase" else "relative error"
        print(f"  {name:<15} {kind:<21} {np.median(err):.3g} ({np.percentile(err, 95):.3g})")
    r2 = fitted["r_squared"].values
    print(f"  R²              median {np.median(r2):.4f}, lowest {r2.min():.4f}")

    plot_maps(fitted, truth, os.path.join(args.out, "sho_maps.png"))
    print(f"plots: {os.path.join(args.out, 'sho_spectrum.png')}, {os.path.join(args.out, 'sho_maps.png')}")


if __name__ == "__main__":  # worker processes import this script: work only here
    main(parse_args())
