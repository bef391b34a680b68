"""The seed tutorial's ``PeakFinder``: a pyUSID 0.0.12 ``Process`` subclass, as the reference.

pyUSID's "Process" tutorial finds the peak of every spectrum with
``scipy.signal.find_peaks_cwt`` and stores its amplitude in a results group
``<Main>-Peak_Finding_NNN`` next to the source. This is that class, with
the per-spectrum function computing exactly what
:func:`lazyusid.tutorial.peak_amplitude` computes (the amplitude of the
peak closest to the centre; 0 when there is none), so the benchmarks can
compare the two engines on identical work and identical results.

Run it on a USID file (it writes the results group into that file)::

    python examples/pyusid_peak_finder.py scan.h5 [--cores 2] [--dataset /Measurement_000/Channel_000/Raw_Data]

pyUSID is optional for lazyusid users: ``pip install pyUSID==0.0.12``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

np.product = np.prod  # noqa: NPY003, NPY201 - pyUSID 0.0.12 (and sidpy) call np.product, gone in NumPy 2

import h5py  # noqa: E402
import pyUSID as usid  # noqa: E402
from scipy.signal import find_peaks_cwt  # noqa: E402
from sidpy.hdf.hdf_utils import write_simple_attrs  # noqa: E402

#: the widths the tutorial passes to ``find_peaks_cwt`` (its ``linspace(20, 60, 30)``)
PEAK_WIDTHS = np.linspace(20, 60, 30)
MAIN_DATASET = "/Measurement_000/Channel_000/Raw_Data"


class PeakFinder(usid.Process):
    """Amplitude of the peak closest to the centre of every spectrum (pyUSID's tutorial class)."""

    def __init__(self, h5_main, **kwargs):
        super().__init__(h5_main, "Peak_Finding", parms_dict={"algorithm": "find_all_peaks"}, **kwargs)

    def test(self, pixel_ind):
        """The result for one position."""
        return self._map_function(self.h5_main[pixel_ind])

    def _create_results_datasets(self):
        self.h5_results_grp = usid.hdf_utils.create_results_group(self.h5_main, self.process_name)
        write_simple_attrs(self.h5_results_grp, self.parms_dict)
        self.h5_results = usid.hdf_utils.write_main_dataset(
            self.h5_results_grp,
            (self.h5_main.shape[0], 1),
            "Peak_Response",
            "Amplitude",
            "V",
            None,  # position dimensions: reuse the source's ancillary datasets
            usid.Dimension("Empty", "a. u.", 1),
            dtype=np.float32,
            h5_pos_inds=self.h5_main.h5_pos_inds,
            h5_pos_vals=self.h5_main.h5_pos_vals,
        )

    def _write_results_chunk(self):
        pos_in_batch = self._get_pixels_in_current_batch()
        self.h5_results[pos_in_batch, 0] = np.array(self._results)

    @staticmethod
    def _map_function(spectra, *args, **kwargs):
        magnitude = np.abs(spectra)
        peaks = find_peaks_cwt(magnitude, PEAK_WIDTHS)
        if len(peaks) == 0:
            return 0.0
        centre = magnitude.size // 2
        closest = peaks[np.argmin(np.abs(np.asarray(peaks) - centre))]
        return float(magnitude[closest])


def find_peaks(path: str, dataset: str = MAIN_DATASET, cores: int = 2) -> np.ndarray:
    """Run :class:`PeakFinder` on ``path`` (results stored in the file); return the amplitudes."""
    with h5py.File(path, "r+") as f:
        finder = PeakFinder(usid.USIDataset(f[dataset]), cores=cores, verbose=False)
        group = finder.compute()
        return group["Peak_Response"][:, 0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a USID HDF5 file (the results group is written into it)")
    parser.add_argument("--dataset", default=MAIN_DATASET, help="HDF5 path of the main dataset")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    tic = time.perf_counter()
    amplitudes = find_peaks(args.path, args.dataset, args.cores)
    print(
        f"{amplitudes.size} peak amplitudes in {time.perf_counter() - tic:.1f} s; mean {amplitudes.mean():.4g} V"
    )


if __name__ == "__main__":
    main()
