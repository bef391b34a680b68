"""What a file's results groups hold, in words: for ``lazyusid info`` and anyone listing results.

The sinks own the results-group format; faces ask here instead of reading
its attributes themselves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from .base import FAILED, MARKERS
from .hdf5_group import RESERVED_ATTRS


@dataclass(frozen=True)
class ResultsInfo:
    """One results group: its name, tool, completion, origin and parameters (as short texts)."""

    name: str
    tool: str
    rows_done: int | None
    n_rows: int | None
    by_lazyusid: bool
    params: dict[str, str] = field(default_factory=dict)
    #: what it was computed from: ``name <- dataset or store`` per input (lazyusid groups only)
    inputs: list[str] = field(default_factory=list)
    #: positions where the function raised (``on_error="skip"``), or None
    failed: int | None = None

    def __str__(self) -> str:
        if self.n_rows is None:
            status = f"no {MARKERS}"
        else:
            complete = " (complete)" if self.rows_done == self.n_rows else " (partial)"
            status = f"{self.rows_done}/{self.n_rows} positions done{complete}"
        origin = "lazyusid" if self.by_lazyusid else "not lazyusid"
        params = ", ".join(f"{k}={v}" for k, v in self.params.items()) or "none"
        failed = f", {self.failed} failed" if self.failed else ""
        text = f"results {self.name}: tool={self.tool}, {status}{failed}, {origin}; parameters: {params}"
        if self.inputs:
            text += "; inputs: " + ", ".join(self.inputs)
        return text


def results_of(dset: h5py.Dataset) -> list[h5py.Group]:
    """The results groups ``<Main>-<Tool>_NNN`` next to a main dataset (pyUSID's layout)."""
    parent, base = dset.parent, dset.name.rsplit("/", 1)[-1]
    return [parent[k] for k in parent if k.startswith(base + "-") and isinstance(parent.get(k), h5py.Group)]


def describe_results(grp: h5py.Group) -> ResultsInfo:
    """Read a results group's bookkeeping (any tool's, not only lazyusid's)."""
    params = {}
    for key, value in grp.attrs.items():
        if key in RESERVED_ATTRS or isinstance(value, h5py.Reference):
            continue
        if isinstance(value, np.ndarray) and value.size > 4:
            text = f"<{value.size} values, {value.dtype}, {value.min():.4g} … {value.max():.4g}>"
        else:
            text = (
                value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value).replace("\n", "")
            )
        params[key] = text if len(text) <= 40 else text[:37] + "..."
    done = grp.get(MARKERS)
    rows_done = n_rows = None
    if isinstance(done, h5py.Dataset) and done.size:
        rows_done, n_rows = int(done[()].astype(bool).sum()), int(done.size)
    tool = grp.attrs.get("tool", "?")
    tool = tool.decode("utf-8", "replace") if isinstance(tool, bytes) else str(tool)
    inputs = []
    text = grp.attrs.get("lazyusid_inputs")
    if text is not None:
        for rec in json.loads(text.decode() if isinstance(text, bytes) else text):
            where = rec.get("dataset") or rec.get("store") or "values in memory"
            if rec.get("file") and os.path.abspath(rec["file"]) != os.path.abspath(grp.file.filename):
                where = f"{rec['file']}:{where}"
            inputs.append(f"{rec['name']} <- {where}")
    failed = grp.get(FAILED)
    n_failed = int(np.count_nonzero(failed[()])) if isinstance(failed, h5py.Dataset) else None
    return ResultsInfo(
        grp.name.rsplit("/", 1)[-1],
        tool,
        rows_done,
        n_rows,
        "lazyusid_token" in grp.attrs,
        params,
        inputs,
        n_failed,
    )
