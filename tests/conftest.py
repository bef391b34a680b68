"""Shared fixtures: small real USID files, pyUSID as the reference, a dask cluster.

Fixtures for other test modules
-------------------------------
``usid_file``
    A small USID file written by :func:`lazyusid.write_main`: positions
    ``Y=16 × X=24`` (non-square, so a transposition shows), spectroscopic
    ``Frequency=9``, float32. A :class:`USIDFile` with ``path``, ``dataset``
    (HDF5 path), ``data`` (the N-D NumPy array written), ``pos_dims`` and
    ``spec_dims``.
``write_usid``
    Factory writing one main dataset with :func:`lazyusid.write_main` into a
    file of ``tmp_path`` (appending when the file exists) and returning a
    :class:`USIDFile`. Random data of the right N-D shape unless given.
``write_raw_usid``
    Factory writing a main dataset and its ancillaries *by hand* with h5py
    (no lazyusid code): for layouts lazyusid never writes itself, such as
    labels stored fastest first or positions that do not tile a grid.
``pyusid``
    The ``pyUSID`` module (session scope), imported with the NumPy 2 shim
    ``np.product = np.prod`` it needs to write files. Its warnings are
    silenced by the ``filterwarnings`` setting in ``pyproject.toml``.
``dask_client``
    A ``distributed.Client`` on a session-wide ``LocalCluster`` of 2 worker
    processes with 1 thread each. It is *not* the default scheduler (so
    other tests stay in-process): compute with ``x.compute(scheduler=dask_client)``
    or inside ``dask.config.set(scheduler=dask_client)``.
``raise_if_dask_computes``
    Context-manager factory (flox's pattern): a scheduler that counts calls
    and raises once more than ``max_computes`` happen.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import dask
import h5py
import numpy as np
import pytest

import lazyusid
import lazyusid.io.open
import lazyusid.io.rows
from lazyusid import Dimension

MAIN_GROUP = "Measurement_000/Channel_000"


@dataclass
class USIDFile:
    """A USID main dataset written for a test, with the data that went in."""

    path: str
    dataset: str
    data: np.ndarray  # N-D: position dims then spectroscopic dims, slowest first
    pos_dims: tuple = field(default_factory=tuple)
    spec_dims: tuple = field(default_factory=tuple)

    @property
    def data_2d(self) -> np.ndarray:
        n_pos = int(np.prod([len(d) for d in self.pos_dims])) if self.pos_dims else self.data.shape[0]
        return self.data.reshape(n_pos, -1)


def random_data(shape, dtype="f4", seed=0) -> np.ndarray:
    """Deterministic random data of any numeric dtype (complex gets an imaginary part)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def default_pos_dims():
    return (
        Dimension("Y", "m", np.linspace(0, 1.5e-6, 16)),
        Dimension("X", "m", np.linspace(0, 2.3e-6, 24)),
    )


def default_spec_dims():
    return (Dimension("Frequency", "Hz", np.linspace(300e3, 340e3, 9)),)


@pytest.fixture
def write_usid(tmp_path):
    """Factory: ``write_usid(pos_dims=..., spec_dims=..., data=None, ...) -> USIDFile``.

    Keyword arguments: ``filename`` (in ``tmp_path``, default ``"scan.h5"``;
    appended to when it exists), ``group`` (default
    ``"Measurement_000/Channel_000"``), ``name`` (``"Raw_Data"``), ``dtype``
    (``"f4"``, used for random data), ``seed``, ``quantity``, ``units``; any
    other keyword goes to :func:`lazyusid.write_main`.
    """

    def write(
        pos_dims=None,
        spec_dims=None,
        data=None,
        *,
        filename="scan.h5",
        group=MAIN_GROUP,
        name="Raw_Data",
        dtype="f4",
        seed=0,
        quantity="Amplitude",
        units="V",
        **kwargs,
    ) -> USIDFile:
        pos_dims = tuple(default_pos_dims() if pos_dims is None else pos_dims)
        spec_dims = tuple(default_spec_dims() if spec_dims is None else spec_dims)
        nd_shape = tuple(len(d) for d in pos_dims + spec_dims)
        if data is None:
            data = random_data(nd_shape, dtype, seed)
        path = os.fspath(tmp_path / filename)
        with h5py.File(path, "a") as f:
            dset = lazyusid.write_main(
                f.require_group(group),
                data,
                name=name,
                quantity=quantity,
                units=units,
                pos_dims=pos_dims,
                spec_dims=spec_dims,
                **kwargs,
            )
            dataset = dset.name
        expected = np.asarray(data).reshape(nd_shape)
        return USIDFile(path, dataset, expected, pos_dims, spec_dims)

    return write


@pytest.fixture
def usid_file(write_usid) -> USIDFile:
    """A small valid USID file: Y=16 × X=24 positions, Frequency=9, float32."""
    return write_usid()


@pytest.fixture
def write_raw_usid(tmp_path):
    """Factory writing a main dataset and its four ancillaries with plain h5py.

    ``write_raw_usid(data_2d, pos_inds, pos_vals, pos_labels, pos_units,
    spec_inds, spec_vals, spec_labels, spec_units, filename="raw.h5",
    group="Measurement_000/Channel_000", name="Raw_Data", pos_attrs=None,
    spec_attrs=None) -> (path, dataset)``. Position arrays are
    ``(N_pos, n_dims)``, spectroscopic ``(n_dims, N_spec)``, exactly as they
    go in the file. ``pos_attrs`` / ``spec_attrs`` add attributes to both
    position / both spectroscopic ancillary datasets.
    """

    def write(
        data_2d,
        pos_inds,
        pos_vals,
        pos_labels,
        pos_units,
        spec_inds,
        spec_vals,
        spec_labels,
        spec_units,
        *,
        filename="raw.h5",
        group=MAIN_GROUP,
        name="Raw_Data",
        pos_attrs=None,
        spec_attrs=None,
    ):
        path = os.fspath(tmp_path / filename)
        with h5py.File(path, "a") as f:
            g = f.require_group(group)
            main = g.create_dataset(name, data=data_2d)
            main.attrs["quantity"] = "Amplitude"
            main.attrs["units"] = "V"
            parts = (
                ("Position", pos_inds, pos_vals, pos_labels, pos_units, pos_attrs),
                ("Spectroscopic", spec_inds, spec_vals, spec_labels, spec_units, spec_attrs),
            )
            for prefix, inds, vals, labels, units, extra in parts:
                for kind, arr, dtype in (("Indices", inds, np.uint32), ("Values", vals, np.float32)):
                    ds = g.create_dataset(f"{prefix}_{kind}", data=np.asarray(arr, dtype=dtype))
                    ds.attrs["labels"] = np.array(labels, dtype="S")
                    ds.attrs["units"] = np.array(units, dtype="S")
                    for key, value in (extra or {}).items():
                        ds.attrs[key] = value
                    main.attrs[f"{prefix}_{kind}"] = ds.ref
            dataset = main.name
        return path, dataset

    return write


@pytest.fixture(scope="session")
def pyusid():
    """pyUSID, imported with the ``np.product`` shim it needs on NumPy 2."""
    with pytest.MonkeyPatch.context() as mp:
        if not hasattr(np, "product"):
            mp.setattr(np, "product", np.prod, raising=False)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pyUSID
        yield pyUSID


@pytest.fixture(scope="session")
def dask_client():
    """A 2-process, 1-thread-each LocalCluster client, started once per session.

    Not the default scheduler: use ``.compute(scheduler=dask_client)``.
    """
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=":0",  # a free port: None still binds 8787 (two test processes warn)
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


class CountingScheduler:
    """A synchronous dask scheduler that counts its calls and raises past a limit."""

    def __init__(self, max_computes: int = 0):
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many dask computations were scheduled: {self.total_computes} "
                f"(allowed: {self.max_computes})"
            )
        return dask.get(dsk, keys, **kwargs)


@pytest.fixture
def raise_if_dask_computes():
    """``with raise_if_dask_computes(max_computes=0) as sched: ...`` (flox's pattern)."""

    @contextlib.contextmanager
    def context(max_computes: int = 0):
        scheduler = CountingScheduler(max_computes)
        with dask.config.set(scheduler=scheduler):
            yield scheduler

    return context


@pytest.fixture
def rows_read(monkeypatch):
    """Record every ``(start, stop)`` of rows our readers read (``H5Source`` of dask reads, ``RowReader`` of
    block tasks; h5py untouched), in this process."""
    calls = []
    original = lazyusid.io.open.H5Source.read_rows
    direct = lazyusid.io.rows.RowReader.__call__

    def read_rows(self, start, stop):
        calls.append((start, stop))
        return original(self, start, stop)

    def call(self, start, stop):
        calls.append((start, stop))
        return direct(self, start, stop)

    monkeypatch.setattr(lazyusid.io.open.H5Source, "read_rows", read_rows)
    monkeypatch.setattr(lazyusid.io.rows.RowReader, "__call__", call)
    return calls
