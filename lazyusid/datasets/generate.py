"""The generators: BE-PFM and BEPS files streamed to disk a block of ``Y`` rows at a time."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import h5py
import numpy as np

from ..usid.dimension import Dimension
from ..usid.files import PathLike
from ..usid.write import write_main
from .models import triangle
from .truth import MAIN_DATASET, BEGroundTruth, BEPSGroundTruth, write_truth

# bytes of main data generated and written at once (whole Y rows; at least one row)
_BLOCK_BYTES = 64 * 2**20


def make_be_pfm(
    path: PathLike,
    *,
    n_x: int = 128,
    n_y: int = 128,
    n_freq: int = 119,
    f_min: float = 300e3,
    f_max: float = 350e3,
    noise: float = 0.03,
    seed: int = 0,
    pixel_size: float = 20e-9,
    amplitude_range: tuple[float, float] = (2e-3, 6e-3),
    frequency_range: tuple[float, float] | None = None,
    quality_range: tuple[float, float] = (60.0, 250.0),
    phase_range: tuple[float, float] = (-math.pi / 2, math.pi / 2),
    overwrite: bool = False,
    chunks: tuple[int, int] | None = None,
) -> BEGroundTruth:
    """Write a synthetic BE-PFM USID file and return its ground truth.

    The main dataset ``/Measurement_000/Channel_000/Raw_Data`` (complex64,
    ``Piezoresponse`` in V) has position dimensions ``Y`` × ``X`` (metres,
    ``0, pixel_size, 2·pixel_size...``) and the spectroscopic dimension
    ``Frequency`` (Hz, ``n_freq`` evenly spaced values from ``f_min`` to
    ``f_max``). Each spectrum is ``sho_response(freqs, A, w0, Q, φ)`` plus
    complex Gaussian noise. The maps of ``A``, ``w0``, ``Q`` and ``φ`` are
    smooth (a few sinusoids of 0.3–1.5 periods across the image plus two
    Gaussian blobs, with random directions and phases from ``seed``) and
    each spans exactly its range. The file is written a block of ``Y`` rows
    at a time (about 64 MiB), so memory stays bounded whatever its size;
    only the float32 maps (16 bytes per position) are held whole.

    Parameters
    ----------
    path : str or os.PathLike
        File to create. Written to ``<path>.partial`` and renamed when
        complete, so an interrupted run never leaves a file at ``path``.
    n_x, n_y : int
        Number of positions along ``X`` (fast) and ``Y`` (slow).
    n_freq : int
        Number of frequency bins.
    f_min, f_max : float
        Excitation band in Hz.
    noise : float
        Standard deviation of the complex noise relative to the mean
        on-resonance amplitude: ``noise_std = noise · mean(A · Q)`` (V), so
        the mean signal-to-noise ratio at resonance is ``1 / noise``. The
        default 0.03 gives a visibly noisy spectrum with SNR ≈ 33 on average
        (≈ 5–100 across the image, as ``A · Q`` varies). 0 gives exact data.
    seed : int
        Non-negative seed of the maps and the noise.
    pixel_size : float
        Distance between positions in m (default 20 nm: 2.56 µm for 128).
    amplitude_range : (float, float)
        Range of ``A`` in V (default 2–6 mV; ``A · Q`` is 0.12–1.5 V).
    frequency_range : (float, float), optional
        Range of ``w0`` in Hz, inside the band. Default: the central 40 % of
        the band (315–335 kHz for 300–350 kHz).
    quality_range : (float, float)
        Range of ``Q`` (default 60–250).
    phase_range : (float, float)
        Range of ``φ`` in radians, within [−π, π] (default ±π/2).
    overwrite : bool
        Replace ``path`` if it exists (default: raise ``FileExistsError``).
    chunks : (int, int), optional
        HDF5 chunk shape ``(positions, spectroscopic points)`` of the main
        dataset. Default: contiguous, as instruments usually write it.

    Returns
    -------
    BEGroundTruth
        The maps, frequencies and noise; also stored in ``/Ground_Truth``.

    Examples
    --------
    >>> truth = make_be_pfm("be.h5", n_x=64, n_y=32)                    # doctest: +SKIP
    >>> data = lazyusid.open_usid("be.h5")                              # doctest: +SKIP
    >>> data.dims, data.shape                                           # doctest: +SKIP
    (('Y', 'X', 'Frequency'), (32, 64, 119))
    >>> fit = sho_response(data.Frequency.values, truth.amplitude,      # doctest: +SKIP
    ...                    truth.frequency, truth.quality_factor, truth.phase)
    """
    freqs = _check_be_args(n_x, n_y, n_freq, f_min, f_max, noise, seed, pixel_size, overwrite, path)
    ranges = _sho_ranges(f_min, f_max, amplitude_range, frequency_range, quality_range, phase_range)
    maps = _smooth_maps(seed, n_y, n_x, ranges)
    truth = BEGroundTruth(
        **maps, frequencies=freqs, noise=noise, noise_std=noise * _mean_on_resonance(maps), seed=seed
    )
    attrs = {
        "data_type": "BELineData",
        "BE_center_frequency_[Hz]": (f_min + f_max) / 2,
        "BE_band_width_[Hz]": f_max - f_min,
    }
    spec_dims = [Dimension("Frequency", "Hz", freqs)]
    _write_file(path, truth, spec_dims, pixel_size, attrs, "make_be_pfm", overwrite, chunks)
    return truth


def make_beps(
    path: PathLike,
    *,
    n_x: int = 32,
    n_y: int = 32,
    n_dc: int = 16,
    n_freq: int = 64,
    f_min: float = 300e3,
    f_max: float = 350e3,
    v_max: float = 10.0,
    noise: float = 0.03,
    seed: int = 0,
    pixel_size: float = 50e-9,
    amplitude_range: tuple[float, float] = (2e-3, 6e-3),
    frequency_range: tuple[float, float] | None = None,
    quality_range: tuple[float, float] = (60.0, 250.0),
    phase_range: tuple[float, float] = (-math.pi / 2, math.pi / 2),
    coercive_range: tuple[float, float] = (2.0, 6.0),
    switching_width: float = 1.0,
    overwrite: bool = False,
    chunks: tuple[int, int] | None = None,
) -> BEPSGroundTruth:
    """Write a synthetic BEPS (switching spectroscopy) USID file and return its ground truth.

    Like :func:`make_be_pfm`, with two spectroscopic dimensions:
    ``DC_Offset`` (V, slow) × ``Frequency`` (Hz, fast). The DC offset is one
    period of a triangle wave sampled at ``n_dc`` steps, ``V_k = v_max ·
    tri(k / n_dc)``: 0 → +v_max → −v_max → back towards 0 (the next period
    would start at 0). At step ``k`` the SHO response of a position is
    multiplied by its polarisation ``P_k`` in [−1, 1]
    (:func:`polarisation`): a hysteresis loop that switches up when ``V``
    rises above ``+Vc`` and down when it falls below ``−Vc``, so negative
    ``P`` flips the phase by π. The coercive voltage ``Vc`` is a smooth map
    like the SHO parameters. Noise as in :func:`make_be_pfm`.

    Defaults are small (32 × 32 positions, 16 DC steps, 64 frequencies:
    8 MiB) so tests and examples run quickly.

    Parameters
    ----------
    path, n_x, n_y, n_freq, f_min, f_max, noise, seed, overwrite, chunks
        As in :func:`make_be_pfm`.
    n_dc : int
        Number of DC steps in the triangle waveform (a multiple of 4 hits
        +v_max and −v_max exactly).
    v_max : float
        Amplitude of the DC waveform in V.
    pixel_size : float
        Distance between positions in m (default 50 nm).
    amplitude_range, frequency_range, quality_range, phase_range
        Ranges of the SHO maps, as in :func:`make_be_pfm`.
    coercive_range : (float, float)
        Range of ``Vc`` in V, within (0, v_max) (default 2–6 V for ±10 V).
    switching_width : float
        Voltage over which the polarisation switches (tanh width, V).

    Returns
    -------
    BEPSGroundTruth

    Examples
    --------
    >>> truth = make_beps("beps.h5")                                    # doctest: +SKIP
    >>> lazyusid.open_usid("beps.h5").dims                              # doctest: +SKIP
    ('Y', 'X', 'DC_Offset', 'Frequency')
    >>> truth.polarisation().shape                                      # doctest: +SKIP
    (32, 32, 16)
    """
    freqs = _check_be_args(n_x, n_y, n_freq, f_min, f_max, noise, seed, pixel_size, overwrite, path)
    _check_size("n_dc", n_dc)
    if not (np.isfinite(v_max) and v_max > 0):
        raise ValueError(f"v_max must be a positive number of volts, got {v_max!r}")
    if not (np.isfinite(switching_width) and switching_width > 0):
        raise ValueError(f"switching_width must be a positive number of volts, got {switching_width!r}")
    ranges = _sho_ranges(f_min, f_max, amplitude_range, frequency_range, quality_range, phase_range)
    ranges["coercive_voltage"] = _check_range("coercive_range", coercive_range, 0.0, v_max, open_low=True)
    maps = _smooth_maps(seed, n_y, n_x, ranges)
    dc = v_max * triangle(np.arange(n_dc) / n_dc)
    truth = BEPSGroundTruth(
        **maps,
        frequencies=freqs,
        noise=noise,
        noise_std=noise * _mean_on_resonance(maps),
        seed=seed,
        dc_offsets=dc,
        switching_width=switching_width,
    )
    attrs = {
        "data_type": "BEPSData",
        "VS_mode": "DC modulation mode",
        "VS_amplitude_[V]": v_max,
        "VS_steps_per_full_cycle": n_dc,
        "VS_number_of_cycles": 1,
        "BE_center_frequency_[Hz]": (f_min + f_max) / 2,
        "BE_band_width_[Hz]": f_max - f_min,
    }
    spec_dims = [Dimension("DC_Offset", "V", dc), Dimension("Frequency", "Hz", freqs)]
    _write_file(path, truth, spec_dims, pixel_size, attrs, "make_beps", overwrite, chunks)
    return truth


def _check_size(name: str, n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")


def _check_range(name: str, value, low: float, high: float, *, open_low: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    below = lo <= low if open_low else lo < low
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi or below or hi > high:
        bracket = "(" if open_low else "["
        raise ValueError(
            f"{name} must be a pair (low, high) with low <= high inside {bracket}{low:g}, {high:g}], "
            f"got {value!r}"
        )
    return lo, hi


def _check_be_args(n_x, n_y, n_freq, f_min, f_max, noise, seed, pixel_size, overwrite, path):
    """Validate the arguments shared by both generators; return the frequencies in Hz."""
    for name, n in (("n_x", n_x), ("n_y", n_y), ("n_freq", n_freq)):
        _check_size(name, n)
    if not (np.isfinite(f_min) and np.isfinite(f_max) and 0 < f_min < f_max):
        raise ValueError(f"need 0 < f_min < f_max (Hz), got f_min={f_min!r}, f_max={f_max!r}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a non-negative number (relative to mean A·Q), got {noise!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size must be a positive number of metres, got {pixel_size!r}")
    _check_target(path, overwrite)
    return np.linspace(f_min, f_max, n_freq)


def _sho_ranges(f_min, f_max, amplitude_range, frequency_range, quality_range, phase_range):
    if frequency_range is None:
        band = f_max - f_min
        frequency_range = (f_min + 0.3 * band, f_min + 0.7 * band)
    return {
        "amplitude": _check_range("amplitude_range", amplitude_range, 0.0, math.inf, open_low=True),
        "frequency": _check_range("frequency_range", frequency_range, f_min, f_max),
        "quality_factor": _check_range("quality_range", quality_range, 0.0, math.inf, open_low=True),
        "phase": _check_range("phase_range", phase_range, -math.pi, math.pi),
    }


def _check_target(path: PathLike, overwrite: bool) -> None:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; give the path of the file to create")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"{path!r} already exists; pass overwrite=True to replace it, or choose another path"
        )


# --- maps --------------------------------------------------------------------


def _smooth_maps(
    seed: int, n_y: int, n_x: int, ranges: dict[str, tuple[float, float]]
) -> dict[str, np.ndarray]:
    """Smooth float32 maps spanning exactly their ranges, computed one row at a time."""
    rng = np.random.default_rng([seed, 0])
    scale = max(n_x, n_y)
    x = np.arange(n_x, dtype=np.float64)
    maps = {}
    for name, (lo, hi) in ranges.items():
        # three plane waves of 0.3–1.5 periods across the image, two Gaussian blobs
        nu = rng.uniform(0.3, 1.5, 3) * 2 * np.pi / scale
        theta = rng.uniform(0, 2 * np.pi, 3)
        kx, ky = nu * np.cos(theta), nu * np.sin(theta)
        psi = rng.uniform(0, 2 * np.pi, 3)
        w_wave = rng.uniform(0.5, 1.0, 3)
        cx, cy = rng.uniform(0, n_x, 2), rng.uniform(0, n_y, 2)
        width = rng.uniform(0.1, 0.25, 2) * scale
        w_blob = rng.choice([-1.0, 1.0], 2) * rng.uniform(0.5, 1.0, 2)
        field = np.empty((n_y, n_x), dtype=np.float32)
        for j in range(n_y):
            waves = w_wave[:, None] * np.cos(kx[:, None] * x + (ky * j + psi)[:, None])
            blobs = w_blob[:, None] * np.exp(
                -((x - cx[:, None]) ** 2 + ((j - cy) ** 2)[:, None]) / (2 * width[:, None] ** 2)
            )
            field[j] = waves.sum(axis=0) + blobs.sum(axis=0)
        low, span = float(field.min()), float(field.max()) - float(field.min())
        for j in range(n_y):
            t = (field[j].astype(np.float64) - low) / span if span > 0 else np.full(n_x, 0.5)
            field[j] = np.clip(lo + (hi - lo) * t, lo, hi)
        maps[name] = field
    return maps


def _mean_on_resonance(maps: dict[str, np.ndarray]) -> float:
    """Mean of ``A · Q`` over the image, in float64, one row at a time."""
    amp, q = maps["amplitude"], maps["quality_factor"]
    total = sum(
        float(np.dot(a.astype(np.float64), b.astype(np.float64))) for a, b in zip(amp, q, strict=True)
    )
    return total / amp.size


# --- writing -----------------------------------------------------------------


def _write_file(
    path,
    truth: BEGroundTruth,
    spec_dims: Sequence[Dimension],
    pixel_size,
    attrs,
    generator,
    overwrite,
    chunks,
):
    """Write the file to ``<path>.partial``, then rename it to ``path``."""
    path = os.fspath(path)
    _check_target(path, overwrite)
    partial = path + ".partial"
    n_y, n_x = truth.shape
    try:
        with h5py.File(partial, "w") as f:
            channel = f.create_group(MAIN_DATASET.rsplit("/", 1)[0])
            measurement = channel.parent
            measurement.attrs.update(
                {**attrs, "grid_num_rows": n_y, "grid_num_cols": n_x, "num_bins": truth.frequencies.size}
            )
            measurement.attrs["synthetic"] = f"lazyusid.datasets.{generator}(seed={truth.seed})"
            channel.attrs["channel_type"] = "BE"
            dset = write_main(
                channel,
                None,
                dtype=np.complex64,
                name=MAIN_DATASET.rsplit("/", 1)[1],
                quantity="Piezoresponse",
                units="V",
                pos_dims=[
                    Dimension("Y", "m", np.arange(n_y) * pixel_size),
                    Dimension("X", "m", np.arange(n_x) * pixel_size),
                ],
                spec_dims=spec_dims,
                chunks=None if chunks is None else tuple(chunks),
            )
            _write_data(dset, truth)
            write_truth(f, truth, generator)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def _write_data(dset: h5py.Dataset, truth: BEGroundTruth) -> None:
    """Fill the 2-D main dataset a block of ``Y`` rows at a time.

    Each row is computed on its own (model, then noise from its own seed),
    so the data do not depend on the block size.
    """
    n_y, n_x = truth.shape
    n_spec = dset.shape[1]
    rows_per_block = max(1, min(n_y, _BLOCK_BYTES // (n_x * n_spec * dset.dtype.itemsize)))
    scale = np.float32(truth.noise_std / math.sqrt(2))
    block = np.empty((rows_per_block, n_x, n_spec), dtype=np.complex64)
    for start in range(0, n_y, rows_per_block):
        stop = min(n_y, start + rows_per_block)
        for j in range(start, stop):
            row = block[j - start]
            row[...] = truth._model_row(j).reshape(n_x, n_spec)
            if scale > 0:
                rng = np.random.default_rng([truth.seed, 1, j])
                noise = rng.standard_normal((n_x, 2 * n_spec), dtype=np.float32).view(np.complex64)
                noise *= scale
                row += noise
        dset[start * n_x : stop * n_x] = block[: stop - start].reshape(-1, n_spec)
