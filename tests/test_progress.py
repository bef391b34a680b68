"""The progress bar in a Jupyter notebook: a widget with ipywidgets, an updating text bar without.

Real kernels (nbclient + ipykernel) run a stored computation of a function
that sleeps per spectrum, in-process (``cores=1``) and in blocks, so the bar
lives for a few seconds over a dozen blocks whatever the machine's load.
"""

from __future__ import annotations

import nbformat
import pytest
from kernels import execute, percentages, stream

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

SETUP = """\
import time

import lazyusid

lazyusid.datasets.make_be_pfm("scan.h5", n_x=12, n_y=10)


def slow_peak(spectrum):
    time.sleep(0.02)
    return float(abs(spectrum).max())
"""
RUN = 'amp = lazyusid.map_spectra(lazyusid.open_usid("scan.h5"), slow_peak, cores=1, positions_per_block=10, store="scan.h5")'


def run_notebook(tmp_path, hide_ipywidgets: bool):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in ("import lazyusid", SETUP, RUN)]
    return execute(nb, tmp_path, hide_ipywidgets=hide_ipywidgets).cells


def test_without_ipywidgets_no_warning_at_import_and_the_text_bar_updates(tmp_path):
    imported, _, ran = run_notebook(tmp_path, hide_ipywidgets=True)
    assert imported.outputs == [], imported.outputs  # no "IProgress not found" (tqdm.auto's warning)
    assert not [o for o in ran.outputs if o.output_type == "display_data"], "a widget without ipywidgets"
    shown = percentages(stream(ran, "stderr"))
    assert len(set(shown)) > 1 and shown[-1] == 100, f"the text bar did not update: {shown}"


def test_with_ipywidgets_a_widget_whose_text_ends_at_100_percent(tmp_path):
    pytest.importorskip("ipywidgets")
    imported, _, ran = run_notebook(tmp_path, hide_ipywidgets=False)
    assert imported.outputs == [], imported.outputs
    (widget,) = [o for o in ran.outputs if o.output_type == "display_data"]
    assert "application/vnd.jupyter.widget-view+json" in widget.data
    # what a saved notebook shows where widgets do not render (GitHub, nbconvert): the final state
    assert percentages(widget.data["text/plain"]) == [100], widget.data["text/plain"]
    assert not percentages(stream(ran, "stderr")), "a text bar beside the widget"
