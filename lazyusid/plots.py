"""Plots lazyusid makes: values and coordinates shown with an SI prefix, the demo's figures.

:func:`si_prefix` picks the prefix that shows values between 1 and 1000
(``6.2e-07 m`` → ``620 nm``), :func:`rescaled` applies it to a DataArray's
data and coordinates so that xarray's own ``.plot()`` labels the axes and
the colour bar with the prefixed units. :func:`demo_figures` builds the
figures ``lazyusid demo`` saves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import xarray as xr

#: the SI prefixes by power of ten
PREFIXES = {-15: "f", -12: "p", -9: "n", -6: "µ", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T"}
#: units an SI prefix may be put in front of (anything else, e.g. "a. u.", "", "mV", is shown as it is)
PREFIXABLE = frozenset(
    {"m", "V", "A", "Hz", "s", "N", "W", "F", "C", "T", "S", "Pa", "J", "Ω", "ohm", "g", "rad"}
)


def si_prefix(values, units: str) -> tuple[float, str]:
    """The factor and units to show ``values`` in, e.g. ``(1e-06, "µm")``.

    The prefix puts the largest finite magnitude of ``values`` in [1, 1000).
    Units that take no prefix (``"a. u."``, ``""``, already prefixed ones),
    and values that are all zero or not finite, keep factor 1.

    Parameters
    ----------
    values : array-like
        Numbers in ``units``.
    units : str

    Returns
    -------
    factor : float
        Show ``values / factor``.
    units : str
        The prefixed units.

    Examples
    --------
    >>> si_prefix([0.0, 2e-8, 6.2e-7], "m")
    (1e-09, 'nm')
    >>> si_prefix([3e5, 3.5e5], "Hz")
    (1000.0, 'kHz')
    >>> si_prefix([0.87], "a. u.")
    (1.0, 'a. u.')
    """
    units = str(units)
    magnitude = np.abs(np.asarray(values, dtype=np.float64))
    magnitude = magnitude[np.isfinite(magnitude)]
    if units not in PREFIXABLE or not magnitude.size or not magnitude.max() > 0:
        return 1.0, units
    exponent = 3 * math.floor(math.log10(float(magnitude.max())) / 3 + 1e-9)
    exponent = min(max(exponent, min(PREFIXES)), max(PREFIXES))
    return 10.0**exponent, PREFIXES[exponent] + units


def rescaled(data: xr.DataArray, *, values: bool = True) -> xr.DataArray:
    """``data`` with each 1-D numeric coordinate (and, with ``values``, the data) in SI-prefixed units.

    What has a ``units`` attribute is divided by the factor :func:`si_prefix`
    picks and gets the prefixed units, so ``rescaled(amp).plot()`` labels
    axes ``X [µm]`` and the colour bar ``peak_amplitude [mV]``. Lazy data
    stay lazy.

    Examples
    --------
    >>> amp = xr.DataArray([[1e-3, 2e-3]], dims=("Y", "X"), attrs={"units": "V"},
    ...                    coords={"X": ("X", [0.0, 2e-6], {"units": "m"})})
    >>> scaled = rescaled(amp)
    >>> scaled.attrs["units"], scaled["X"].attrs["units"], float(scaled["X"][1])
    ('mV', 'µm', 2.0)
    """
    coords = {}
    for name, coord in data.coords.items():
        if coord.ndim == 1 and coord.dtype.kind in "iuf" and "units" in coord.attrs:
            factor, units = si_prefix(coord.values, coord.attrs["units"])
            if factor != 1.0:
                coords[name] = coord.copy(data=coord.values / factor).assign_attrs(units=units)
    out = data.assign_coords(coords) if coords else data
    if values and "units" in data.attrs and data.dtype.kind in "iuf":
        factor, units = si_prefix(data.values, data.attrs["units"])
        if factor != 1.0:
            out = out.copy(data=out.data / factor).assign_attrs(units=units)
    return out


def label(data: xr.DataArray, default: str = "") -> str:
    """``"peak amplitude (mV)"``: the quantity (``long_name``, ``quantity`` or name) and units of ``data``."""
    name = data.attrs.get("long_name") or data.attrs.get("quantity") or data.name or default
    units = data.attrs.get("units")
    return f"{name} ({units})" if units else str(name)


def map_axes(ax, image: xr.DataArray, **kwargs):
    """Draw a 2-D map with ``imshow`` in its coordinates' units, equal aspect, labelled axes; returns the image."""
    image = rescaled(image, values=False)
    y, x = image.dims
    kwargs.setdefault("add_colorbar", False)
    im = image.plot.imshow(ax=ax, x=x, y=y, **kwargs)
    ax.set(xlabel=label(image[x], x), ylabel=label(image[y], y), aspect="equal")
    return im


def demo_figures(
    data: xr.DataArray, amplitude: xr.DataArray, expected, probe: Mapping[str, int], value: float
):
    """The figures of ``lazyusid demo``: the map beside its ground truth and the difference; the tested spectrum.

    Parameters
    ----------
    data : xarray.DataArray
        The measurement ``(Y, X, Frequency)``.
    amplitude : xarray.DataArray
        The computed peak amplitude ``(Y, X)``, with units.
    expected : numpy.ndarray
        The ground truth of ``amplitude``, shape ``(Y, X)``, in the same units.
    probe : mapping
        The tested position, ``{"Y": j, "X": i}``.
    value : float
        The peak amplitude found there.

    Returns
    -------
    dict of str to matplotlib.figure.Figure
        ``"peak_amplitude"`` and ``"tested_spectrum"``.
    """
    import matplotlib.pyplot as plt

    amplitude = amplitude.squeeze(drop=True).assign_attrs(long_name="found peak amplitude")
    truth = amplitude.copy(data=np.asarray(expected, dtype=np.float64)).assign_attrs(
        long_name="ground truth |R(w0)| = A·Q"
    )
    difference = (amplitude - truth).assign_attrs(
        long_name="found − ground truth", units=amplitude.attrs["units"]
    )
    factor, units = si_prefix(
        np.concatenate([np.ravel(amplitude), np.ravel(truth)]), amplitude.attrs["units"]
    )
    n_y, n_x = amplitude.shape
    panel = 3.4
    fig, axes = plt.subplots(
        1,
        3,
        figsize=(3 * panel + 0.6, panel * n_y / n_x + 1.8),
        layout="constrained",
        sharex=True,
        sharey=True,
    )
    lo, hi = (
        float(v) / factor for v in (min(amplitude.min(), truth.min()), max(amplitude.max(), truth.max()))
    )
    for ax, image in zip(axes[:2], (amplitude, truth)):
        im = map_axes(ax, (image / factor).assign_attrs(image.attrs), cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(image.attrs["long_name"])
    fig.colorbar(im, ax=axes[:2].tolist(), label=f"peak amplitude ({units})", location="bottom", shrink=0.8)
    dfactor, dunits = si_prefix(difference.values, difference.attrs["units"])
    span = float(np.nanpercentile(np.abs(difference.values), 99)) / dfactor or 1.0  # a few outliers saturate
    im = map_axes(
        axes[2], (difference / dfactor).assign_attrs(difference.attrs), cmap="RdBu_r", vmin=-span, vmax=span
    )
    axes[2].set_title(difference.attrs["long_name"])
    fig.colorbar(im, ax=axes[2], label=f"difference ({dunits})", location="bottom", shrink=0.8, extend="both")
    for ax in axes[1:]:
        ax.set_ylabel("")
    maps = fig

    spectrum = data.isel(probe).compute()
    frequency = spectrum[spectrum.dims[0]]
    ffactor, funits = si_prefix(frequency.values, frequency.attrs.get("units", ""))
    magnitude = np.abs(spectrum.values)
    vfactor, vunits = si_prefix(magnitude, data.attrs.get("units", ""))
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(
        frequency.values / ffactor, magnitude / vfactor, label=f"|{data.attrs.get('quantity', 'response')}|"
    )
    peak = int(np.argmin(np.abs(magnitude - value)))
    ax.plot(
        frequency.values[peak] / ffactor,
        value / vfactor,
        "o",
        color="C3",
        label=f"found peak: {value / vfactor:.3g} {vunits} at {frequency.values[peak] / ffactor:.4g} {funits}",
    )
    ax.set(
        xlabel=f"{frequency.name} ({funits})",
        ylabel=f"|{data.attrs.get('quantity', 'response')}| ({vunits})",
        title=", ".join(f"{k}={v}" for k, v in probe.items()).join(("Tested spectrum at ", "")),
    )
    ax.legend(loc="upper right")
    return {"peak_amplitude": maps, "tested_spectrum": fig}
