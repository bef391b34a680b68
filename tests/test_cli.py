"""The `lazyusid` command line, end to end on small generated files."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import lazyusid
from lazyusid.cli import main
from lazyusid.tutorial import PEAK_WIDTHS, peak_amplitude


def test_demo_stores_results_plots_and_returns_them_on_rerun(tmp_path, capsys, pyusid):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "6x4", "--out", str(out), "--no-progress"]) == 0
    for name in ("be_pfm.h5", "peak_amplitude.png", "tested_spectrum.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "tested peak_amplitude" in printed and "spectra/s" in printed and "checkpointed into" in printed

    data = lazyusid.open_usid(out / "be_pfm.h5")
    reference = np.array([[peak_amplitude(s, PEAK_WIDTHS) for s in row] for row in data.values])
    with h5py.File(out / "be_pfm.h5") as f:
        (group,) = [g for g in f["Measurement_000/Channel_000"] if g.startswith("Raw_Data-peak_amplitude_")]
        results = f["Measurement_000/Channel_000"][group]
        assert pyusid.hdf_utils.check_if_main(results["peak_amplitude"])
        assert results["completed_positions"][()].all()
        np.testing.assert_array_equal(results["peak_amplitude"][:, 0], reference.ravel())

    assert main(["demo", "--size", "6x4", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "found the stored result of this very computation" in printed and "spectra/s" not in printed
    with h5py.File(out / "be_pfm.h5") as f:
        assert [g for g in f["Measurement_000/Channel_000"] if "-" in g] == [group]


def test_demo_refuses_a_file_of_another_size(tmp_path, capsys):
    assert main(["demo", "--size", "3x2", "--out", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["demo", "--size", "4x2", "--out", str(tmp_path), "--no-progress"]) == 1
    assert "holds 2x3 positions; remove it or use --out" in capsys.readouterr().err


def test_tree_and_info_list_results_groups(tmp_path, capsys):
    path = tmp_path / "scan.h5"
    lazyusid.datasets.make_be_pfm(path, n_x=5, n_y=3, n_freq=7)
    assert main(["tree", str(path)]) == 0
    assert "USID main: Y=3 × X=5 | Frequency=7" in capsys.readouterr().out
    lazyusid.map_spectra(
        lazyusid.open_usid(path), lambda s, k: np.abs(s).max() * k, params={"k": 2}, store=path, tool="Peak"
    )
    assert main(["info", str(path), "Raw_Data"]) == 0
    printed = capsys.readouterr().out
    assert "Piezoresponse [V]" in printed and "Frequency" in printed
    assert (
        "results Raw_Data-Peak_000: tool=Peak, 15/15 positions done (complete), lazyusid; parameters: k=2"
        in printed
    )


def test_errors_are_one_line_with_nonzero_exit(tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    assert main(["info", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lazyusid info: error: no such file") and err.count("\n") == 1
    text = tmp_path / "notes.txt"
    text.write_text("not hdf5")
    for command in ("tree", "info"):
        assert main([command, os.fspath(text)]) == 1
        err = capsys.readouterr().err
        assert "is not an HDF5 file" in err and err.count("\n") == 1
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    assert main(["info", str(plain)]) == 1
    assert "holds no USID main dataset" in capsys.readouterr().err
    lazyusid.datasets.make_be_pfm(tmp_path / "scan.h5", n_x=2, n_y=2, n_freq=5)
    assert main(["info", str(tmp_path / "scan.h5"), "Nope"]) == 1
    assert "'Nope' is not in the file" in capsys.readouterr().err
    assert main(["demo", "--size", "big", "--out", str(tmp_path)]) == 1
    assert "--size must look like 128x128" in capsys.readouterr().err


@pytest.mark.parametrize("args", [[], ["demo"], ["tree"], ["info"]])
def test_help_everywhere(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*args, "--help"])
    assert exc.value.code == 0
    assert "usage: lazyusid" in capsys.readouterr().out


def test_bad_arguments_exit_2_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "lazyusid")
    done = subprocess.run([exe, "tree", str(tmp_path / "missing.h5")], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("lazyusid tree: error: no such file")


def test_info_lists_the_fields_of_a_record_result(tmp_path, capsys):
    path = tmp_path / "scan.h5"
    lazyusid.datasets.make_be_pfm(path, n_x=4, n_y=3, n_freq=7)
    sho = np.dtype({"names": ["Amplitude", "Quality Factor"], "formats": ["f4", "f4"]})

    def guess(spectrum):
        return np.array((np.abs(spectrum).max(), np.abs(spectrum).mean()), dtype=sho)[()]

    data = lazyusid.open_usid(path)
    lazyusid.map_spectra(data, guess, outputs={"fit": {"dtype": sho, "units": "V"}}, store=path, cores=1)
    assert main(["info", str(path)]) == 0  # the measurement and the result
    printed = capsys.readouterr().out
    assert "/Raw_Data-guess_000/fit: records of Amplitude [V], Quality Factor [V]" in printed
    assert "Y" in printed and "X" in printed
