"""examples/getting_started.ipynb runs in a real Jupyter kernel, and shows the right things.

The notebook is executed with nbclient (ipykernel) in an empty directory,
where it generates its scan. Its cells are found by what they do (so cells
added later do not shift them), and their outputs are checked against a
plain NumPy loop over the raw spectra read with h5py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

import nbformat
from kernels import execute, stream

from lazyusid.datasets import MAIN_DATASET
from lazyusid.tutorial import peak_amplitude

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "getting_started.ipynb"
N_Y, N_X = 12, 16  # the notebook's scan
RESULT = MAIN_DATASET + "-peak_amplitude_000/peak_amplitude"


def cell_running(cells, code: str):
    """The one code cell whose source contains ``code``."""
    (cell,) = [c for c in cells if c.cell_type == "code" and code in c.source]
    return cell


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    where = tmp_path_factory.mktemp("notebook")
    shutil.copy(NOTEBOOK, where / NOTEBOOK.name)
    nb = execute(nbformat.read(where / NOTEBOOK.name, as_version=4), where)
    return nb.cells, where


def test_the_stored_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(
        not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"
    )


def test_every_cell_runs_and_the_stored_values_match_a_numpy_loop(executed):
    cells, where = executed
    with h5py.File(where / "scan.h5", "r") as f:
        raw = f[MAIN_DATASET][()]
        stored = f[RESULT][:, 0]
    expected = np.array([peak_amplitude(spectrum) for spectrum in raw])
    np.testing.assert_allclose(stored, expected, rtol=1e-6)
    tested = cell_running(cells, "data.usid.test(")
    assert float(stream(tested, "stdout")) == pytest.approx(expected[3 * N_X + 5], rel=1e-6)


def test_opening_shows_the_dataset(executed):
    cells, _ = executed
    shown = cell_running(cells, "open_usid(").outputs[-1].data["text/plain"]
    assert "xarray.DataArray" in shown and f"Y: {N_Y}" in shown and f"X: {N_X}" in shown


def test_the_plan_is_printed(executed):
    cells, _ = executed
    printed = stream(cell_running(cells, "usid.plan("), "stdout")
    assert printed.startswith("BlockPlan(") and f"({N_Y * N_X} in all)" in printed


def test_the_map_computes_every_position_and_the_rerun_none(executed):
    cells, _ = executed
    first = stream(cell_running(cells, "amp = data.usid.map("), "stdout")
    assert re.match(
        rf"{N_Y * N_X} positions computed into .*scan\.h5:{MAIN_DATASET}-peak_amplitude_000\n$", first
    )
    again = stream(cell_running(cells, "again = data.usid.map("), "stdout")
    assert again == "0 positions computed: the stored result, returned\n"


def test_the_plot_is_an_image(executed):
    cells, _ = executed
    outputs = cell_running(cells, "amp.plot()").outputs
    assert any("image/png" in o.get("data", {}) for o in outputs), outputs


def test_the_pipeline_step_uses_each_positions_peak_and_its_rerun_computes_nothing(executed):
    cells, where = executed
    first = stream(cell_running(cells, "rel = data.usid.map("), "stdout").splitlines()
    assert first[0].startswith(f"{N_Y * N_X} positions computed into ")
    assert first[1] == "['mean_relative', 'peak_amplitude']"
    again = stream(cell_running(cells, "rel2 = data.usid.map("), "stdout")
    assert again.startswith("0 positions computed")
    with h5py.File(where / "scan.h5", "r") as f:
        raw = f[MAIN_DATASET][()]
        stored = f[MAIN_DATASET + "-mean_relative_000/mean_relative"][:, 0]
    expected = np.array([np.abs(s).mean() / peak_amplitude(s) for s in raw])
    np.testing.assert_allclose(stored, expected, rtol=1e-6)
