"""The peak finder on a dask.distributed cluster: a LocalCluster here, a SLURM cluster on HPC.

lazyusid runs on any ``distributed.Client`` passed as ``client=``. This
script starts a ``LocalCluster`` of worker processes (or connects to a
running scheduler with ``--scheduler``) and runs the seed tutorial's peak
finder (``lazyusid.tutorial.peak_amplitude``) on a synthetic BE-PFM file
twice:

1. lazily: ``lazyusid.map_spectra(data, f, client=client)`` builds the graph,
   ``.compute()`` runs it on the cluster, and every worker reads its own
   blocks from the file (so on a real cluster the file must be on a shared
   file system, at the same path);
2. into the file: ``data.usid.map(f, client=client, store=path)``. Here this
   process reads each block, sends it to a worker, and writes the finished
   block with its checkpoint flag: HDF5 has a single writer, this process.

Both give the same map, which is plotted.

On an HPC cluster with SLURM, replace the ``LocalCluster`` with a
dask-jobqueue ``SLURMCluster`` (``pip install dask-jobqueue``; not run here).
Every SLURM job starts ``processes`` worker processes of one thread each:
per-spectrum Python functions hold the GIL, so they want processes, not
threads::

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    import lazyusid
    from lazyusid.tutorial import PEAK_WIDTHS, peak_amplitude

    cluster = SLURMCluster(
        queue="regular",            # partition: #SBATCH -p
        account="my_project",       # #SBATCH -A
        cores=32,                   # cores per job
        processes=32,               # worker processes per job (one thread each)
        memory="64GiB",             # memory per job, shared by its worker processes
        walltime="01:00:00",
        local_directory="/tmp",     # node-local scratch for spilling
    )
    cluster.scale(jobs=4)           # 4 SLURM jobs: 128 workers
    client = Client(cluster)
    client.wait_for_workers(128)    # jobs wait in the queue; blocks need workers

    data = lazyusid.open_usid("/shared/scan.h5")
    amplitude = data.usid.map(
        peak_amplitude, params={"widths": PEAK_WIDTHS}, client=client, cores=128, store="/shared/scan.h5"
    )

(all of it under ``if __name__ == "__main__":``). Run the script on a login
node or in a small batch job of its own: it is the client, which submits the
worker jobs, reads the input and writes the results. No MPI is needed.
``print(cluster.job_script())`` shows the batch script dask-jobqueue submits.
``cores=`` is the cluster's thread count: with ``client=`` it sets how many
blocks are in flight, and defaults to this machine's cores. See
``docs/scaling.md``.

Usage::

    python examples/cluster.py                               # 128 x 128 positions, 2 workers
    python examples/cluster.py --size 32x24 --workers 2 --out /tmp/cluster
    python examples/cluster.py --scheduler tcp://10.0.0.5:8786   # a running scheduler

Writes into ``--out``: ``be_pfm_cluster.h5`` (data and results) and
``cluster_peak_amplitude.png``.
"""

from __future__ import annotations

import argparse
import os
import time

import h5py
import numpy as np

import lazyusid
from lazyusid.datasets import make_be_pfm
from lazyusid.plots import label, map_axes
from lazyusid.tutorial import PEAK_WIDTHS, peak_amplitude


def parse_size(text: str) -> tuple[int, int]:
    """``"32x24"`` → ``(32, 24)``: positions along X and Y."""
    try:
        n_x, n_y = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 128x128 (NXxNY), got {text!r}") from None
    if n_x < 1 or n_y < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return n_x, n_y


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(128, 128), help="positions as NXxNY (128x128)")
    parser.add_argument("--out", default="lazyusid-examples", help="directory for the file and the plot")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster (2)")
    parser.add_argument("--scheduler", default=None, help="address of a running scheduler to use instead")
    return parser.parse_args(argv)


def source_file(path: str, n_x: int, n_y: int) -> None:
    """Generate the synthetic BE-PFM file, unless one of this size is there already."""
    if os.path.exists(path):
        with h5py.File(path, "r") as f:
            if f["Ground_Truth/amplitude"].shape == (n_y, n_x):
                print(f"using the existing {path} ({n_y} x {n_x} positions)")
                return
    tic = time.perf_counter()
    make_be_pfm(path, n_x=n_x, n_y=n_y, seed=0, overwrite=True)
    print(
        f"wrote synthetic BE-PFM data ({n_y} x {n_x} positions x 119 frequencies) to {path} "
        f"in {time.perf_counter() - tic:.1f} s"
    )


def plot_map(amplitude, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    amplitude = amplitude.assign_attrs(long_name="peak amplitude")
    n_y, n_x = amplitude.shape
    fig, ax = plt.subplots(figsize=(5, 4.2 * n_y / n_x + 0.8), layout="constrained")
    im = map_axes(ax, amplitude, cmap="viridis")
    ax.set_title("Peak amplitude, computed on the cluster")
    fig.colorbar(im, ax=ax, label=label(amplitude))
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    from distributed import Client, LocalCluster

    n_x, n_y = args.size
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "be_pfm_cluster.h5")
    source_file(path, n_x, n_y)

    tic = time.perf_counter()
    if args.scheduler:
        cluster = None
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = Client(cluster)  # also dask's default scheduler from now on
    threads = sum(client.nthreads().values())
    print(
        f"cluster ready in {time.perf_counter() - tic:.1f} s: {threads} worker threads, "
        f"dashboard {client.dashboard_link}"
    )
    try:
        data = lazyusid.open_usid(path)
        params = {"widths": PEAK_WIDTHS}
        outputs = {"peak_amplitude": {"units": "same"}}  # in the data's units, V
        # cores= is how many blocks are in flight at once; by default it is this machine's core
        # count, not the cluster's, so give the cluster's thread count.
        print(data.usid.plan(peak_amplitude, params=params, outputs=outputs, client=client, cores=threads))

        # 1. lazily: the graph runs on the cluster and the workers read the file themselves
        tic = time.perf_counter()
        lazy = lazyusid.map_spectra(
            data, peak_amplitude, params=params, outputs=outputs, client=client, cores=threads
        )
        computed = lazy.compute()
        seconds = time.perf_counter() - tic
        print(
            f"lazy map on the cluster: {computed.size} spectra in {seconds:.1f} s "
            f"({computed.size / seconds:.0f} spectra/s)"
        )

        # 2. into the file: this process reads blocks and writes results, the workers compute
        tic = time.perf_counter()
        stored = data.usid.map(
            peak_amplitude, params=params, outputs=outputs, client=client, cores=threads, store=path
        )
        seconds = time.perf_counter() - tic
        rows, where = stored.attrs["usid_rows_computed"], stored.attrs["usid_store"]
        if rows:
            print(f"stored map on the cluster: {rows} spectra in {seconds:.1f} s into {where}")
        else:
            print(f"found the stored result of this very computation in {where} ({seconds:.2f} s)")
        same = np.array_equal(stored.values, computed.values)
        print(f"lazy and stored maps agree: {same}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

    png = os.path.join(args.out, "cluster_peak_amplitude.png")
    plot_map(stored.compute(), png)
    print(f"plot: {png}")


if __name__ == "__main__":  # worker processes import this script: work only here
    main(parse_args())
