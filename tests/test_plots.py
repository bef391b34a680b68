"""Plots: SI prefixes for values and coordinates, and the demo's figures with labelled axes and units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.figure import Figure

import lazyusid
from lazyusid.cli import main
from lazyusid.datasets import load_ground_truth
from lazyusid.plots import PREFIXABLE, PREFIXES, demo_figures, rescaled, si_prefix

# (values, units) -> (factor, units), worked out by hand from the SI prefix table
CASES = [
    ([0.0, 2e-8, 6.2e-7], "m", 1e-9, "nm"),  # the demo's 32 positions at 20 nm
    ([0.0, 2.54e-6], "m", 1e-6, "µm"),  # its 128 positions
    ([3e5, 3.5e5], "Hz", 1e3, "kHz"),
    ([0.87], "V", 1e-3, "mV"),
    ([1.0], "V", 1.0, "V"),
    ([-4e-3, 2e-3], "V", 1e-3, "mV"),  # the magnitude counts, not the sign
    ([999.0], "V", 1.0, "V"),
    ([1000.0], "V", 1e3, "kV"),
    ([2.5e9], "Hz", 1e9, "GHz"),
    ([3e-14], "A", 1e-15, "fA"),
    ([1e-20], "m", 1e-15, "fm"),  # beyond the table: the smallest prefix
    ([np.nan, 5e-6, np.inf], "s", 1e-6, "µs"),  # only finite values count
    ([0.0, 0.0], "m", 1.0, "m"),
    ([np.nan], "m", 1.0, "m"),
    ([0.87], "a. u.", 1.0, "a. u."),  # no prefix on arbitrary units
    ([250.0], "", 1.0, ""),
    ([5e-3], "mV", 1.0, "mV"),  # already prefixed: kept
]


@pytest.mark.parametrize(("values", "units", "factor", "shown"), CASES)
def test_si_prefix_table(values, units, factor, shown):
    got_factor, got_units = si_prefix(values, units)
    assert got_units == shown
    assert got_factor == pytest.approx(factor, rel=1e-12)


@given(
    st.floats(min_value=1e-15, max_value=9.99e14, allow_nan=False, allow_infinity=False),
    st.sampled_from(sorted(PREFIXABLE)),
)
def test_si_prefix_shows_the_largest_value_between_1_and_1000(value, units):
    factor, shown = si_prefix([value, -value / 3, 0.0], units)
    exponent = round(math.log10(factor))
    assert factor == 10.0**exponent and exponent % 3 == 0
    assert shown == PREFIXES[exponent] + units
    assert 1 - 1e-9 <= value / factor < 1000 * (1 + 1e-9)


def test_rescaled_puts_units_on_coordinates_and_values():
    amp = xr.DataArray(
        np.array([[1e-3, 2e-3, 4e-3]]),
        dims=("Y", "X"),
        coords={"Y": ("Y", [0.0], {"units": "m"}), "X": ("X", [0.0, 1e-6, 2e-6], {"units": "m"})},
        attrs={"units": "V", "long_name": "peak"},
        name="amp",
    )
    scaled = rescaled(amp)
    assert scaled.attrs == {"units": "mV", "long_name": "peak"}
    assert scaled["X"].attrs["units"] == "µm" and scaled["Y"].attrs["units"] == "m"
    np.testing.assert_allclose(scaled["X"].values, amp["X"].values * 1e6)
    np.testing.assert_allclose(scaled.values, amp.values * 1e3)
    assert amp.attrs["units"] == "V" and amp["X"].attrs["units"] == "m"  # the input is unchanged
    assert rescaled(amp, values=False).attrs["units"] == "V"


def _labels(ax) -> tuple[str, str]:
    return ax.get_xlabel(), ax.get_ylabel()


def test_demo_figures_have_labelled_axes_units_truth_and_the_found_peak(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "8x6", "--out", str(out), "--no-progress", "--cores", "1"]) == 0
    for name in ("peak_amplitude.png", "tested_spectrum.png"):
        assert (out / name).stat().st_size > 0
    capsys.readouterr()

    data = lazyusid.open_usid(out / "be_pfm.h5")
    amplitude = lazyusid.map_spectra(
        data,
        lazyusid.tutorial.peak_amplitude,
        params={"widths": lazyusid.tutorial.PEAK_WIDTHS},
        outputs={"peak_amplitude": {"units": "same"}},
        store=out / "be_pfm.h5",
    )
    assert amplitude.attrs["usid_rows_computed"] == 0  # the demo stored exactly this computation
    assert amplitude.attrs["units"] == "V"
    truth = load_ground_truth(out / "be_pfm.h5")
    probe = {"Y": 3, "X": 4}
    value = lazyusid.apply_at(data, lazyusid.tutorial.peak_amplitude, probe)
    figures = demo_figures(data, amplitude.compute(), truth.amplitude * truth.quality_factor, probe, value)
    assert set(figures) == {"peak_amplitude", "tested_spectrum"}

    maps = figures["peak_amplitude"]
    assert isinstance(maps, Figure)
    maps.canvas.draw()  # tick labels and offsets exist once drawn
    images = [ax for ax in maps.axes if ax.images]
    assert [ax.get_title() for ax in images] == [
        "found peak amplitude",
        "ground truth |R(w0)| = A·Q",
        "found − ground truth",
    ]
    for ax in images:  # 8 positions at 20 nm: nanometres, no offset
        assert ax.get_xlabel() == "X (nm)"
        assert ax.xaxis.get_offset_text().get_text() == ""
    assert images[0].get_ylabel() == "Y (nm)"
    expected = truth.amplitude * truth.quality_factor
    factor, units = si_prefix(np.concatenate([amplitude.values.ravel(), expected.ravel()]), "V")
    colorbars = [ax for ax in maps.axes if not ax.images]
    assert sorted(ax.get_xlabel() for ax in colorbars) == sorted(
        [f"peak amplitude ({units})", "difference (mV)"]
    )
    np.testing.assert_allclose(images[0].images[0].get_array(), amplitude.values / factor)
    np.testing.assert_allclose(images[1].images[0].get_array(), expected / factor, rtol=1e-6)
    np.testing.assert_allclose(
        images[2].images[0].get_array(), (amplitude.values - expected) / 1e-3, rtol=1e-5
    )

    spectrum = figures["tested_spectrum"]
    (ax,) = spectrum.axes
    assert _labels(ax) == ("Frequency (kHz)", "|Piezoresponse| (mV)")
    line, marker = ax.get_lines()
    magnitude = np.abs(data.isel(probe).values)
    np.testing.assert_allclose(line.get_ydata(), magnitude * 1e3, rtol=1e-6)
    ((x, y),) = marker.get_xydata()
    assert y == pytest.approx(value * 1e3)
    assert x == pytest.approx(float(data["Frequency"][np.argmin(np.abs(magnitude - value))]) / 1e3)
    assert "found peak" in marker.get_label()
