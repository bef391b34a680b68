"""The dask-based peers of the peers benchmark: LiberTEM, HyperSpy and xarray, one small adapter each.

HyperSpy and xarray read the USID main dataset through :func:`lazyusid.open_usid`
(``xr.open_dataset(engine="h5netcdf")`` cannot open USID files: their object-reference
attributes), with dask chunks of at most 16 MiB and at least 8 of them (dask's 128 MiB
default would make one chunk of a small file). LiberTEM reads the file with its own HDF5
dataset reader (``sig_dims=1``: a spectrum is a "frame"). The LocalClusters are the ones a
user would start (2 single-threaded worker processes, default settings), with the
scheduler's ``worker-ttl`` disabled so that a frozen benchmark process keeps its workers.
"""

from __future__ import annotations

import logging

import numpy as np

from .common import MAIN
from .peer_tools import BLOCK_BYTES, Adapter

try:  # a UDF class must be importable by LiberTEM's worker processes
    from libertem.udf import UDF
except ImportError:  # libertem not installed: the adapter reports it
    UDF = object


class MaxOverSpectrumUDF(UDF):
    """Workload C as a LiberTEM UDF: ``abs(tile).max(-1)`` per tile, kept as the maximum over sig tiles."""

    def get_result_buffers(self):
        return {"peak": self.buffer(kind="nav", dtype=np.float32)}

    def process_tile(self, tile):
        self.results.peak[:] = np.maximum(self.results.peak, np.abs(tile).max(axis=-1))


def no_worker_ttl() -> None:
    """A scheduler frozen with its workers (SIGSTOP, SIGCONT) must not drop them for missed heartbeats."""
    import dask

    dask.config.set({"distributed.scheduler.worker-ttl": None})


def local_cluster():
    """A 2-process LocalCluster, made the default client (what dask-based libraries compute on)."""
    from distributed import Client, LocalCluster

    no_worker_ttl()
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    )
    return Client(cluster)


def dask_source(path: str):
    """``open_usid(path)`` with chunks of at most 16 MiB and at least 8 of them."""
    import h5py

    import lazyusid

    with h5py.File(path, "r") as f:
        nbytes = f[MAIN].size * f[MAIN].dtype.itemsize
    return lazyusid.open_usid(path, chunk_bytes=max(1, min(BLOCK_BYTES, nbytes // 8)))


class DaskPeer(Adapter):
    """Shared by the dask-based peers: threads (dask's default scheduler) or a LocalCluster."""

    def __init__(self, cluster: bool):
        self.cluster = cluster
        self.client = None

    def start(self):
        if self.cluster:
            self.client = local_cluster()

    def close(self):
        if self.client is not None:
            cluster = self.client.cluster
            self.client.close()
            cluster.close()


class XArray(DaskPeer):
    """``xr.apply_ufunc(f, data, dask="parallelized")`` (``vectorize=True`` for a per-spectrum function)."""

    def imports(self):
        import xarray  # noqa: F401

        import lazyusid  # noqa: F401

        if self.cluster:
            import distributed  # noqa: F401

    def run(self, kind, func, path, tmp, opts):
        import xarray as xr

        data = dask_source(path)
        dtype = np.float64 if kind == "spectrum" else np.abs(np.zeros(1, data.dtype)).dtype
        result = xr.apply_ufunc(
            func,
            data,
            input_core_dims=[[data.dims[-1]]],
            vectorize=kind == "spectrum",
            dask="parallelized",
            output_dtypes=[dtype],
        )
        scheduler = {} if self.cluster else {"scheduler": "threads"}
        return np.asarray(result.compute(**scheduler).values).ravel()


class HyperSpy(DaskPeer):
    """A lazy HyperSpy signal of the dataset: ``s.map(f)`` per spectrum, ``abs(s).max(axis=-1)`` for blocks."""

    def imports(self):
        import hyperspy.api as hs

        import lazyusid  # noqa: F401

        self.hs = hs
        if self.cluster:
            import distributed  # noqa: F401

    def run(self, kind, func, path, tmp, opts):
        data = dask_source(path).data
        cls = self.hs.signals.ComplexSignal1D if np.iscomplexobj(data) else self.hs.signals.Signal1D
        signal = cls(data).as_lazy()
        if kind == "spectrum":
            result = signal.map(func, inplace=False, show_progressbar=False)
        else:
            result = abs(signal).max(axis=-1)
        result.compute(show_progressbar=False)
        return np.asarray(result.data).ravel()


class LiberTEM(Adapter):
    """``Context.make_with("dask", cpus=2)``; ``ctx.map(f)`` per spectrum, :class:`MaxOverSpectrumUDF` for C."""

    def imports(self):
        from libertem.api import Context

        self.context = Context

    def start(self):
        no_worker_ttl()
        self.ctx = self.context.make_with("dask", cpus=2)

    def run(self, kind, func, path, tmp, opts):
        dataset = self.ctx.load("hdf5", path=path, ds_path=MAIN, sig_dims=1)
        if kind == "spectrum":
            return np.asarray(self.ctx.map(dataset=dataset, f=func).data).ravel()
        return np.asarray(self.ctx.run_udf(dataset=dataset, udf=MaxOverSpectrumUDF())["peak"].data).ravel()

    def close(self):
        self.ctx.close()


def make(tool: str) -> Adapter:
    tools = {
        "libertem": LiberTEM,
        "hyperspy-threads": lambda: HyperSpy(False),
        "hyperspy-cluster": lambda: HyperSpy(True),
        "xarray-threads": lambda: XArray(False),
        "xarray-cluster": lambda: XArray(True),
    }
    if tool not in tools:
        raise ValueError(f"unknown peer tool {tool!r}; choose from {sorted(tools)}")
    return tools[tool]()
