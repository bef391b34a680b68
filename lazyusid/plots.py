"""Plots lazyusid makes: values and coordinates shown with an SI prefix, the demo's figures.

:func:`si_prefix` picks the prefix that shows values between 1 and 1000
(``6.2e-07 m`` → ``620 nm``), :func:`rescaled` applies it to a DataArray's
data and coordinates so that xarray's own ``.plot()`` labels the axes and
the colour bar with the prefixed units; :func:`map_axes` draws a map in
its coordinates' units. :func:`demo_figures` builds the figures
``lazyusid demo`` saves (:func:`comparison_figure`, :func:`spectrum_figure`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

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


def map_axes(ax: Axes, image: xr.DataArray, **kwargs: Any) -> AxesImage:
    """Draw a ``(Y, X)`` map with ``imshow`` in its coordinates' units, equal aspect, labelled axes.

    ``kwargs`` go to :meth:`xarray.DataArray.plot.imshow` (no colour bar
    unless ``add_colorbar=True``). Returns the image, for a colour bar.
    """
    image = rescaled(image, values=False)
    y, x = image.dims
    kwargs.setdefault("add_colorbar", False)
    im = image.plot.imshow(ax=ax, x=x, y=y, **kwargs)
    ax.set(xlabel=label(image[x], x), ylabel=label(image[y], y), aspect="equal")
    return im


def demo_figures(
    data: xr.DataArray, amplitude: xr.DataArray, expected, probe: Mapping[str, int], value: float
) -> dict[str, Figure]:
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
    found = amplitude.squeeze(drop=True).assign_attrs(long_name="found peak amplitude")
    truth = found.copy(data=np.asarray(expected, dtype=np.float64)).assign_attrs(
        long_name="ground truth |R(w0)| = A·Q"
    )
    where = ", ".join(f"{k}={v}" for k, v in probe.items())
    return {
        "peak_amplitude": comparison_figure(found, truth, quantity="peak amplitude"),
        "tested_spectrum": spectrum_figure(
            data.isel(probe).compute(), value, title=f"Tested spectrum at {where}"
        ),
    }


def comparison_figure(found: xr.DataArray, truth: xr.DataArray, *, quantity: str) -> Figure:
    """Three ``(Y, X)`` maps: ``found`` and ``truth`` on one colour scale, and ``found − truth``.

    Titles are the maps' ``long_name``; the colour bars say ``quantity``
    and the SI-prefixed units of ``found``.
    """
    import matplotlib.pyplot as plt

    units = found.attrs.get("units", "")
    difference = (found - truth).assign_attrs(long_name="found − ground truth", units=units)
    factor, shown = si_prefix(np.concatenate([np.ravel(found), np.ravel(truth)]), units)
    n_y, n_x = found.shape
    panel = 3.4
    fig, axes = plt.subplots(
        1,
        3,
        figsize=(3 * panel + 0.6, panel * n_y / n_x + 1.8),
        layout="constrained",
        sharex=True,
        sharey=True,
    )
    lo = float(min(found.min(), truth.min())) / factor
    hi = float(max(found.max(), truth.max())) / factor
    for ax, image in zip(axes[:2], (found, truth)):
        im = map_axes(ax, (image / factor).assign_attrs(image.attrs), cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(image.attrs["long_name"])
    fig.colorbar(im, ax=axes[:2].tolist(), label=f"{quantity} ({shown})", location="bottom", shrink=0.8)
    dfactor, dshown = si_prefix(difference.values, units)
    span = float(np.nanpercentile(np.abs(difference.values), 99)) / dfactor  # a few outliers saturate
    span = span if np.isfinite(span) and span > 0 else 1.0
    im = map_axes(
        axes[2], (difference / dfactor).assign_attrs(difference.attrs), cmap="RdBu_r", vmin=-span, vmax=span
    )
    axes[2].set_title(difference.attrs["long_name"])
    fig.colorbar(im, ax=axes[2], label=f"difference ({dshown})", location="bottom", shrink=0.8, extend="both")
    for ax in axes[1:]:
        ax.set_ylabel("")
    return fig


def spectrum_figure(spectrum: xr.DataArray, value: float, *, title: str) -> Figure:
    """``|spectrum|`` against its one dimension, SI-prefixed, with the sample whose magnitude is ``value`` marked."""
    import matplotlib.pyplot as plt

    (dim,) = spectrum.dims
    axis = spectrum[dim]
    xfactor, xunits = si_prefix(axis.values, axis.attrs.get("units", ""))
    magnitude = np.abs(spectrum.values)
    yfactor, yunits = si_prefix(magnitude, spectrum.attrs.get("units", ""))
    quantity = spectrum.attrs.get("quantity", "response")
    peak = int(np.argmin(np.abs(magnitude - value)))  # the sample the function returned
    at = axis.values[peak] / xfactor
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(axis.values / xfactor, magnitude / yfactor, label=f"|{quantity}|")
    ax.plot(at, value / yfactor, "o", color="C3", label="found peak")
    ax.annotate(
        f"{value / yfactor:.3g} {yunits} at {at:.4g} {xunits}",
        (at, value / yfactor),
        xytext=(8, 0),
        textcoords="offset points",
        va="center",
        color="C3",
    )
    ax.set(xlabel=f"{dim} ({xunits})", ylabel=f"|{quantity}| ({yunits})", title=title)
    ax.legend(loc="upper left")  # the band's edges are far from the resonance
    return fig
