"""An output's units: ``units="same"`` takes the input's units, stored, lazy and in the token."""

from __future__ import annotations

import h5py
import matplotlib
import numpy as np
import pytest
import xarray as xr

import lazyusid
from lazyusid.core.outputs import DEFAULT_UNITS, SAME_UNITS, Output, infer_outputs

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def peak(spectrum):
    return np.abs(spectrum).max()


def peak_and_width(spectrum):
    return {"peak": np.abs(spectrum).max(), "width": float(np.argmax(spectrum))}


SPECTRUM = np.linspace(1.0, 2.0, 7)


def test_same_units_is_a_public_constant():
    assert lazyusid.SAME_UNITS == SAME_UNITS == "same"


@pytest.mark.parametrize(
    "declared",
    [
        {"peak": {"units": "same"}},
        {"peak": {"units": SAME_UNITS, "dtype": "f4"}},
        {"peak": Output("peak", units="same")},
    ],
)
def test_same_units_become_the_input_units_when_outputs_are_inferred(declared):
    (out,), _ = infer_outputs(peak, SPECTRUM, {}, declared, False, input_units="mV")
    assert out.units == "mV"
    assert out.to_dict()["units"] == "mV"  # what the token is computed from


def test_same_units_of_an_input_without_units_are_arbitrary_units():
    (out,), _ = infer_outputs(peak, SPECTRUM, {}, {"peak": {"units": "same"}}, False)
    assert out.units == DEFAULT_UNITS == "a. u."
    (out,), _ = infer_outputs(peak, SPECTRUM, {}, {"peak": {"units": "same"}}, False, input_units="")
    assert out.units == ""  # dimensionless input: dimensionless output


def test_other_outputs_keep_their_declared_units():
    outs, _ = infer_outputs(
        peak_and_width,
        SPECTRUM,
        {},
        {"peak": {"units": "same"}, "width": {"units": "Hz"}},
        False,
        input_units="V",
    )
    assert [o.units for o in outs] == ["V", "Hz"]
    outs, _ = infer_outputs(
        peak_and_width, SPECTRUM, {}, {"peak": {"units": "same"}, "width": "f8"}, False, input_units="V"
    )
    assert [o.units for o in outs] == ["V", DEFAULT_UNITS]


def _results_dataset(path, name):
    with h5py.File(path, "r") as f:
        found = []
        f.visititems(lambda key, obj: found.append(key) if key.endswith("/" + name) and "-" in key else None)
        (key,) = found
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f[key].attrs.items()}


def test_same_units_stored_in_hdf5_are_the_source_units(write_usid):
    scan = write_usid(units="pm")
    data = lazyusid.open_usid(scan.path, scan.dataset)
    assert data.attrs["units"] == "pm"
    amp = lazyusid.map_spectra(data, peak, outputs={"peak": {"units": "same"}}, store=scan.path, cores=1)
    assert amp.attrs["units"] == "pm"
    attrs = _results_dataset(scan.path, "peak")
    assert attrs["units"] == "pm"
    reopened = lazyusid.open_usid(scan.path, amp.attrs["usid_store"].rpartition(":")[2] + "/peak")
    assert reopened.attrs["units"] == "pm"
    np.testing.assert_array_equal(
        amp.values, np.abs(scan.data).max(axis=-1)
    )  # a plain NumPy reduction is the reference

    # the token holds the resolved units: declaring them by name is the same computation
    again = lazyusid.map_spectra(data, peak, outputs={"peak": {"units": "pm"}}, store=scan.path, cores=1)
    assert again.attrs["usid_rows_computed"] == 0
    assert again.attrs["usid_token"] == amp.attrs["usid_token"]
    other = lazyusid.map_spectra(data, peak, store=scan.path, cores=1)  # "a. u.": another result
    assert other.attrs["usid_token"] != amp.attrs["usid_token"]
    assert other.attrs["units"] == DEFAULT_UNITS


def test_same_units_in_a_zarr_store(write_usid, tmp_path):
    scan = write_usid(units="nA")
    data = lazyusid.open_usid(scan.path, scan.dataset)
    store = tmp_path / "out.zarr"
    amp = lazyusid.map_spectra(data, peak, outputs={"peak": {"units": "same"}}, store=store, cores=1)
    assert amp.attrs["units"] == "nA"
    assert xr.open_zarr(store, consolidated=False)["peak"].attrs["units"] == "nA"


def test_same_units_on_the_lazy_result_and_apply_at(write_usid):
    scan = write_usid(units="V")
    data = lazyusid.open_usid(scan.path, scan.dataset)
    declared = {"peak": {"units": "same"}, "width": {"units": "same"}}
    lazy = lazyusid.map_spectra(data, peak_and_width, outputs=declared, cores=1)
    assert lazy["peak"].attrs["units"] == "V" and lazy["width"].attrs["units"] == "V"
    single = lazyusid.map_spectra(data, peak, outputs={"peak": {"units": "same"}}, cores=1)
    assert single.attrs["units"] == "V"
    value = lazyusid.apply_at(data, peak, {"Y": 1, "X": 2}, outputs={"peak": {"units": "same"}})
    assert value == np.abs(scan.data[1, 2]).max()


def test_same_units_of_a_numpy_input_are_arbitrary_units():
    values = np.random.default_rng(0).random((3, 4, 5))
    data = xr.DataArray(values, dims=("Y", "X", "Frequency"))
    amp = lazyusid.map_spectra(data, peak, outputs={"peak": {"units": "same"}}, cores=1)
    assert amp.attrs["units"] == DEFAULT_UNITS
    np.testing.assert_array_equal(amp.values, np.abs(values).max(axis=-1))


@pytest.mark.parametrize("target", ["scan.h5", "out.zarr"])
def test_a_stored_result_names_its_quantity_and_units_as_open_usid_does(write_usid, tmp_path, target):
    scan = write_usid(units="V")
    data = lazyusid.open_usid(scan.path, scan.dataset)
    declared = {"peak": {"units": "same"}, "width": {"units": "Hz"}}
    stored = lazyusid.map_spectra(data, peak_and_width, outputs=declared, store=tmp_path / target, cores=1)
    for name, units in (("peak", "V"), ("width", "Hz")):
        attrs = stored[name].attrs
        assert (attrs["quantity"], attrs["long_name"], attrs["units"]) == (name, name, units)
        plotted = stored[name].plot()  # xarray labels the colour bar with long_name [units]
        assert plotted.colorbar.ax.get_ylabel() == f"{name} [{units}]"
        plt.close(plotted.figure)
    if target.endswith(".h5"):  # the same as the USID main dataset says, read by open_usid
        reopened = lazyusid.open_usid(scan.path, stored.attrs["usid_store"].rpartition(":")[2] + "/peak")
        assert {k: reopened.attrs[k] for k in ("quantity", "long_name", "units")} == {
            k: stored["peak"].attrs[k] for k in ("quantity", "long_name", "units")
        }
