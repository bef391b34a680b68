"""The ground truth of a synthetic file: what it was generated from, stored beside the data and read back."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import h5py
import numpy as np

from ..errors import DatasetSelectionError
from ..usid.files import PathLike, open_file
from .models import polarisation, sho_response

#: HDF5 path of the main dataset both generators write
MAIN_DATASET = "/Measurement_000/Channel_000/Raw_Data"
#: HDF5 group holding the ground-truth maps
GROUND_TRUTH_GROUP = "/Ground_Truth"


UNITS = {
    "amplitude": "V",
    "frequency": "Hz",
    "quality_factor": "",
    "phase": "rad",
    "coercive_voltage": "V",
    "frequencies": "Hz",
    "dc_offsets": "V",
}
DESCRIPTIONS = {
    "amplitude": "SHO amplitude A (the response far below resonance; |R(w0)| = A*Q)",
    "frequency": "SHO resonance frequency w0",
    "quality_factor": "SHO quality factor Q",
    "phase": "SHO phase",
    "coercive_voltage": "coercive voltage Vc of the hysteresis loop",
    "frequencies": "excitation frequencies (the Frequency dimension)",
    "dc_offsets": "DC offset at each step (the DC_Offset dimension)",
}


@dataclass(frozen=True, eq=False, repr=False)
class BEGroundTruth:
    """The parameters a BE-PFM file was generated from.

    The four maps have shape ``(n_y, n_x)`` (float32, read-only); the data at
    ``(y, x)`` are ``sho_response(frequencies, amplitude[y, x],
    frequency[y, x], quality_factor[y, x], phase[y, x])`` plus complex
    Gaussian noise of standard deviation ``noise_std``.

    Attributes
    ----------
    amplitude : numpy.ndarray
        SHO amplitude ``A`` in V (the response far below resonance; the
        on-resonance amplitude is ``A · Q``).
    frequency : numpy.ndarray
        Resonance frequency ``w0`` in Hz.
    quality_factor : numpy.ndarray
        Quality factor ``Q`` (dimensionless).
    phase : numpy.ndarray
        Phase ``φ`` in radians.
    frequencies : numpy.ndarray
        The excitation frequencies in Hz (float64), the ``Frequency`` dimension.
    noise : float
        Relative noise level: ``noise_std / mean(A · Q)``.
    noise_std : float
        Standard deviation of the complex noise in V: ``E|n|² = noise_std²``,
        the real and imaginary parts each having ``noise_std / √2``.
    seed : int
        Seed the file was generated from.
    """

    MAPS: ClassVar[tuple[str, ...]] = ("amplitude", "frequency", "quality_factor", "phase")

    amplitude: np.ndarray
    frequency: np.ndarray
    quality_factor: np.ndarray
    phase: np.ndarray
    frequencies: np.ndarray
    noise: float
    noise_std: float
    seed: int

    def __post_init__(self) -> None:
        shape = None
        for name in self.MAPS:
            value = np.array(getattr(self, name), dtype=np.float32, order="C")
            if value.ndim != 2 or (shape is not None and value.shape != shape):
                raise ValueError(
                    f"{name} must be a 2-D (n_y, n_x) map like the others, got shape {value.shape}"
                )
            shape = value.shape
            value.flags.writeable = False
            object.__setattr__(self, name, value)
        for name in ("frequencies", "dc_offsets"):
            if hasattr(self, name):
                value = np.array(getattr(self, name), dtype=np.float64)
                value.flags.writeable = False
                object.__setattr__(self, name, value)
        object.__setattr__(self, "noise", float(self.noise))
        object.__setattr__(self, "noise_std", float(self.noise_std))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_y, n_x)``: the shape of every map."""
        return self.amplitude.shape

    def model(self, rows: slice = slice(None)) -> np.ndarray:
        """The noise-free data of the ``Y`` rows ``rows``, complex128.

        Shape ``(n_rows, n_x, n_freq)`` (BEPS: ``(n_rows, n_x, n_dc, n_freq)``):
        the N-D data of the file without noise, computed one row at a time.
        """
        js = range(*rows.indices(self.shape[0]))
        out = np.empty((len(js), self.shape[1], *self._spec_shape), dtype=np.complex128)
        for i, j in enumerate(js):
            out[i] = self._model_row(j)
        return out

    @property
    def _spec_shape(self) -> tuple[int, ...]:
        return (self.frequencies.size,)

    def _model_row(self, j: int) -> np.ndarray:
        return sho_response(
            self.frequencies, self.amplitude[j], self.frequency[j], self.quality_factor[j], self.phase[j]
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None  # type: ignore[assignment]  # holds arrays: equal values, no hash

    def __repr__(self) -> str:
        n_y, n_x = self.shape
        spec = " × ".join(str(n) for n in self._spec_shape)
        return (
            f"{type(self).__name__}(n_y={n_y}, n_x={n_x}, spectrum={spec}, "
            f"noise={self.noise:g}, noise_std={self.noise_std:.3g} V, seed={self.seed})"
        )


@dataclass(frozen=True, eq=False, repr=False)
class BEPSGroundTruth(BEGroundTruth):
    """The parameters a BEPS file was generated from.

    As :class:`BEGroundTruth`, plus a ``coercive_voltage`` map (V). The data
    at ``(y, x, k)`` are ``polarisation(dc_offsets, coercive_voltage[y, x],
    switching_width=switching_width)[k]`` times the SHO response at
    ``(y, x)``, plus noise.

    Attributes
    ----------
    coercive_voltage : numpy.ndarray
        Coercive voltage ``Vc`` in V, shape ``(n_y, n_x)``.
    dc_offsets : numpy.ndarray
        The DC offset at each step in V (float64), the ``DC_Offset`` dimension.
    switching_width : float
        Voltage width in V of the tanh switching of the polarisation.
    """

    MAPS: ClassVar[tuple[str, ...]] = (*BEGroundTruth.MAPS, "coercive_voltage")

    coercive_voltage: np.ndarray
    dc_offsets: np.ndarray
    switching_width: float

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "switching_width", float(self.switching_width))

    def polarisation(self, rows: slice = slice(None)) -> np.ndarray:
        """Polarisation of the ``Y`` rows ``rows`` at every DC step, shape ``(n_rows, n_x, n_dc)``."""
        return polarisation(
            self.dc_offsets, self.coercive_voltage[rows], switching_width=self.switching_width
        )

    @property
    def _spec_shape(self) -> tuple[int, ...]:
        return (self.dc_offsets.size, self.frequencies.size)

    def _model_row(self, j: int) -> np.ndarray:
        loop = polarisation(self.dc_offsets, self.coercive_voltage[j], switching_width=self.switching_width)
        return loop[:, :, None] * super()._model_row(j)[:, None, :]


def load_ground_truth(path: PathLike) -> BEGroundTruth:
    """Read the ground truth stored by :func:`make_be_pfm` or :func:`make_beps`.

    Returns
    -------
    BEGroundTruth or BEPSGroundTruth
        Equal (``==``) to what the generator returned.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    lazyusid.DatasetSelectionError
        If the file has no ``/Ground_Truth`` group written by these generators.

    Examples
    --------
    >>> make_be_pfm("be.h5", n_x=8, n_y=8) == load_ground_truth("be.h5")  # doctest: +SKIP
    True
    """
    with open_file(path) as f:
        group = f.get(GROUND_TRUTH_GROUP)
        generator = _text(group.attrs.get("generator")) if isinstance(group, h5py.Group) else None
        classes = {"make_be_pfm": BEGroundTruth, "make_beps": BEPSGroundTruth}
        if generator not in classes:
            raise DatasetSelectionError(
                f"{f.filename!r} holds no ground truth: expected a group {GROUND_TRUTH_GROUP!r} written by "
                "lazyusid.datasets.make_be_pfm or make_beps"
            )
        cls = classes[generator]
        kwargs = {}
        for fld in fields(cls):
            if fld.name in group:
                kwargs[fld.name] = group[fld.name][()]
            else:
                kwargs[fld.name] = group.attrs[fld.name]
    return cls(**kwargs)


# --- arguments ---------------------------------------------------------------


def write_truth(f: h5py.File, truth: BEGroundTruth, generator: str) -> None:
    """Plain datasets (no ``quantity``, no ancillaries: never USID main datasets)."""
    group = f.create_group(GROUND_TRUTH_GROUP)
    group.attrs["generator"] = generator
    group.attrs["description"] = (
        f"parameters lazyusid.datasets.{generator} generated {MAIN_DATASET} from; "
        "read them with lazyusid.datasets.load_ground_truth"
    )
    for fld in fields(truth):
        value = getattr(truth, fld.name)
        if isinstance(value, np.ndarray):
            dset = group.create_dataset(fld.name, data=value)
            dset.attrs["units"] = UNITS[fld.name]
            dset.attrs["description"] = DESCRIPTIONS[fld.name]
        else:
            group.attrs[fld.name] = value


def _text(value):
    return value.decode() if isinstance(value, bytes) else value
