"""Defects of the pipeline API (issue 13) found while writing ``examples/be_sho_pipeline.py``.

Each test is marked ``xfail(strict=True)`` until the lead engineer fixes the
code it names (``lazyusid/compute.py`` is lead-owned): then it passes, the
strict marker turns that into a failure, and the marker is removed.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import lazyusid

N_Y, N_X, N_F = 5, 7, 11
SECONDS = 0.05  # per spectrum: 35 positions ~1.75 s (above INLINE_SECONDS = 1 s), 2 positions ~0.1 s


@pytest.fixture
def scan(write_usid):
    return write_usid(
        pos_dims=[lazyusid.Dimension("Y", "m", N_Y), lazyusid.Dimension("X", "m", N_X)],
        spec_dims=[lazyusid.Dimension("Frequency", "Hz", N_F)],
    )


def slow(spectrum):
    time.sleep(SECONDS)
    return float(np.abs(spectrum).sum())


@pytest.mark.xfail(
    strict=True,
    reason="compute.prepare_map estimates the run time from all positions, not the ROI's: a refit of "
    "a few failed positions (roi=fit.usid.failed) starts the worker processes (0.5-15 s) for "
    "milliseconds of work",
)
def test_small_roi_of_a_slow_function_runs_in_this_thread(scan):
    data = lazyusid.open_usid(scan.path)
    everywhere = lazyusid.plan_spectra(data, slow, cores=2)
    assert "worker processes" in everywhere.scheduler  # the whole grid is worth the processes
    roi = np.zeros((N_Y, N_X), bool)
    roi[2, 3:5] = True
    two = lazyusid.plan_spectra(data, slow, cores=2, roi=roi)
    assert two.scheduler.startswith("this thread"), two.scheduler
