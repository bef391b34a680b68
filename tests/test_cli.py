"""The `lazyusid` command line, end to end on small generated files."""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

import lazyusid
from lazyusid.cli import main
from lazyusid.tutorial import PEAK_WIDTHS, peak_amplitude


def test_demo_writes_results_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "6x4", "--out", str(out), "--no-progress"]) == 0
    for name in ("be_pfm.h5", "peak_amplitude.nc", "peak_amplitude.png", "tested_spectrum.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "spectra/s" in printed and "tested peak_amplitude" in printed
    data = lazyusid.open_usid(out / "be_pfm.h5")
    reference = np.array([[peak_amplitude(s, PEAK_WIDTHS) for s in row] for row in data.values])
    stored = xr.open_dataarray(out / "peak_amplitude.nc", engine="h5netcdf")
    np.testing.assert_allclose(stored.values, reference)


def test_tree_and_info(tmp_path, capsys):
    path = tmp_path / "scan.h5"
    lazyusid.datasets.make_be_pfm(path, n_x=5, n_y=3, n_freq=7)
    assert main(["tree", str(path)]) == 0
    assert "USID main: Y=3 × X=5 | Frequency=7" in capsys.readouterr().out
    assert main(["info", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "Piezoresponse [V]" in printed and "Frequency" in printed


def test_errors_are_one_line_with_nonzero_exit(tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    assert main(["info", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lazyusid info: error: no such file") and err.count("\n") == 1
    text = tmp_path / "notes.txt"
    text.write_text("not hdf5")
    assert main(["tree", os.fspath(text)]) == 1
    assert "is not an HDF5 file" in capsys.readouterr().err
    assert main(["demo", "--size", "big", "--out", str(tmp_path)]) == 1
    assert "--size must look like 128x128" in capsys.readouterr().err
