"""map_spectra and apply_at: the same results as a plain NumPy loop, lazily, in-process and on workers.

References are plain NumPy loops over the positions; data are real USID
files written with :func:`lazyusid.write_main` and opened with
:func:`lazyusid.open_usid`, plus plain NumPy and dask arrays.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import dask
import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import lazyusid
import lazyusid.io.open
import lazyusid.run.schedulers
from lazyusid import Dimension, Output
from lazyusid.compute import prepare_map

PROPERTY = settings(max_examples=20, deadline=None)


@pytest.fixture(scope="session", autouse=True)
def _stop_lazyusid_workers():
    """Close the worker processes lazyusid starts for per-spectrum functions, once, at the end."""
    yield
    lazyusid.shutdown()


# ---------------------------------------------------------------------------
# Data


def write_scan(directory, pos: dict, spec: dict, *, seed: int = 0, marker: tuple | None = None):
    """Write a float32 USID file; ``pos`` and ``spec`` map dimension names to sizes, slowest first.

    ``marker=(flat_position, value)`` sets the first point of that spectrum to
    ``value``. Returns ``(path, N-D data)``; the data is never zero.
    """
    shape = (*pos.values(), *spec.values())
    rng = np.random.default_rng(seed)
    data = (rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)).astype("f4")
    if marker is not None:
        flat, value = marker
        data.reshape(int(np.prod(tuple(pos.values()))), -1)[flat, 0] = value
    pos_dims = [Dimension(name, "m", np.linspace(0, 1e-7 * n, n)) for name, n in pos.items()]
    spec_dims = [
        Dimension(name, "V", np.linspace(-1, 1, n) * (i + 1)) for i, (name, n) in enumerate(spec.items())
    ]
    path = os.path.join(directory, "scan.h5")
    with h5py.File(path, "w") as f:
        lazyusid.write_main(
            f.create_group("Measurement_000/Channel_000"),
            data,
            name="Raw_Data",
            quantity="Amplitude",
            units="V",
            pos_dims=pos_dims,
            spec_dims=spec_dims,
        )
    return path, data


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """Y=24 × X=16 positions (384: not divisible by 7), Frequency=9; a marker at flat position 250."""
    path, data = write_scan(
        tmp_path_factory.mktemp("scan"), {"Y": 24, "X": 16}, {"Frequency": 9}, marker=(250, 99.0)
    )
    return path, data


@pytest.fixture(scope="module")
def scan_2spec(tmp_path_factory):
    """Y=5 × X=3 positions, two spectroscopic dimensions DC_Offset=4 × Frequency=6."""
    return write_scan(tmp_path_factory.mktemp("scan2"), {"Y": 5, "X": 3}, {"DC_Offset": 4, "Frequency": 6})


# ---------------------------------------------------------------------------
# Functions (module level, so worker processes can import them)


def _rows(block):
    return block.reshape(len(block), -1)


def peak(spectrum):
    return np.abs(spectrum).max()


def peak_v(block):
    return np.abs(_rows(block)).max(axis=1)


def extremes(spectrum):
    return np.array([spectrum.min(), spectrum.max(), spectrum.mean()])


def extremes_v(block):
    r = _rows(block)
    return np.stack([r.min(axis=1), r.max(axis=1), r.mean(axis=1)], axis=1)


def moments(spectrum):
    return spectrum.mean(), np.array([spectrum.min(), spectrum.max()])


def moments_v(block):
    r = _rows(block)
    return r.mean(axis=1), np.stack([r.min(axis=1), r.max(axis=1)], axis=1)


def moments_dict(spectrum):
    return {"mean": spectrum.mean(), "range": np.array([spectrum.min(), spectrum.max()])}


def moments_dict_v(block):
    mean, bounds = moments_v(block)
    return {"mean": mean, "range": bounds}


#: kind -> (per-spectrum function, the same vectorised, outputs=)
FUNCTIONS = {
    "scalar": (peak, peak_v, None),
    "vector": (extremes, extremes_v, None),
    "tuple": (moments, moments_v, ["mean", "range"]),
    "dict": (moments_dict, moments_dict_v, None),
}


def fails_at_marker(spectrum, threshold=50.0):
    if spectrum.ravel()[0] > threshold:
        raise ValueError(f"spectrum starts at {spectrum.ravel()[0]:g}")
    return spectrum.sum()


def fails_at_marker_v(block, threshold=50.0):
    if (_rows(block)[:, 0] > threshold).any():
        raise ValueError("a spectrum in this block is bad")
    return _rows(block).sum(axis=1)


def log_peak(spectrum):
    """Fails on all-zero input: inference must use a real spectrum, not zeros."""
    if not np.any(spectrum):
        raise ValueError("all-zero spectrum")
    return np.log(np.abs(spectrum).max())


def slow_peak(spectrum):
    time.sleep(0.005)
    return np.abs(spectrum).max()


def sleepy_peak(spectrum):
    time.sleep(0.03)
    return np.abs(spectrum).max()


def peak_and_pid(spectrum):
    return np.abs(spectrum).max(), os.getpid()


# ---------------------------------------------------------------------------
# Reference and comparison


def reference(func, data, core_axes, names=None) -> dict:
    """A plain NumPy loop: ``func`` on every spectrum over ``core_axes``.

    Returns ``{name: array}`` with the loop axes first (name ``None`` for a
    single output).
    """
    data = np.asarray(data)
    core_axes = [a % data.ndim for a in core_axes]
    loop_axes = [a for a in range(data.ndim) if a not in core_axes]
    moved = data.transpose(loop_axes + core_axes)
    loop_shape = moved.shape[: len(loop_axes)]
    columns: dict = {}
    for index in np.ndindex(*loop_shape):
        result = func(moved[index])
        if isinstance(result, dict):
            parts = result
        elif isinstance(result, tuple):
            parts = dict(zip(names, result))
        else:
            parts = {None: result}
        for name, value in parts.items():
            columns.setdefault(name, []).append(np.asarray(value))
    return {name: np.stack(v).reshape(loop_shape + v[0].shape) for name, v in columns.items()}


def assert_matches(result, expected: dict, *, exact: bool = False):
    """``result`` (computed) holds the reference values, shapes and dtypes."""
    if None in expected:
        assert isinstance(result, xr.DataArray)
        pairs = [(result, expected[None])]
    else:
        assert isinstance(result, xr.Dataset)
        assert list(result.data_vars) == list(expected)
        pairs = [(result[name], expected[name]) for name in expected]
    for got, want in pairs:
        values = got.values
        assert values.shape == want.shape
        assert values.dtype == want.dtype
        if exact:
            np.testing.assert_array_equal(values, want)
        else:
            np.testing.assert_allclose(values, want, rtol=2e-6, atol=1e-6)


def core_axes_of(arr: xr.DataArray, core_dims) -> list[int]:
    core_dims = arr.attrs["usid_spectroscopic_dims"] if core_dims is None else core_dims
    return [arr.dims.index(d) for d in core_dims]


# ---------------------------------------------------------------------------
# Results equal a NumPy loop: property tests


@dataclass
class Case:
    pos: dict
    spec: dict
    core_dims: tuple | None
    kind: str
    vectorized: bool
    positions_per_block: int | None
    fit: int | None  # positions that the budget must hold, when a budget is given
    seed: int


@st.composite
def usid_cases(draw):
    pos = {"Y": draw(st.integers(1, 5)), "X": draw(st.integers(1, 6))}
    if draw(st.booleans()):
        spec = {"DC_Offset": draw(st.integers(1, 3)), "Frequency": draw(st.integers(1, 6))}
        core_dims = draw(st.sampled_from([None, ("Frequency",), ("DC_Offset",), ("Frequency", "DC_Offset")]))
    else:
        spec = {"Frequency": draw(st.integers(1, 8))}
        core_dims = draw(st.sampled_from([None, ("Frequency",)]))
    n_positions = pos["Y"] * pos["X"]
    sizing = draw(st.sampled_from(["default", "positions_per_block", "budget"]))
    return Case(
        pos=pos,
        spec=spec,
        core_dims=core_dims,
        kind=draw(st.sampled_from(sorted(FUNCTIONS))),
        vectorized=draw(st.booleans()),
        positions_per_block=draw(st.integers(1, n_positions + 2))
        if sizing == "positions_per_block"
        else None,
        fit=draw(st.integers(1, n_positions)) if sizing == "budget" else None,
        seed=draw(st.integers(0, 2**16)),
    )


@PROPERTY
@given(case=usid_cases())
def test_usid_results_equal_numpy_loop(tmp_path_factory, case):
    path, data = write_scan(tmp_path_factory.mktemp("prop"), case.pos, case.spec, seed=case.seed)
    arr = lazyusid.open_usid(path)
    per_spectrum, vectorised, names = FUNCTIONS[case.kind]
    kwargs = dict(
        core_dims=case.core_dims,
        outputs=names,
        vectorized=case.vectorized,
        positions_per_block=case.positions_per_block,
    )
    func = vectorised if case.vectorized else per_spectrum
    if case.fit is not None:
        plan = lazyusid.plan_spectra(arr, func, **kwargs)
        kwargs["budget"] = case.fit * plan.bytes_per_position * plan.blocks_in_flight

    spectral_map = prepare_map(arr, func, **kwargs)
    plan = spectral_map.plan
    assert plan.projected_bytes <= plan.budget_bytes
    if case.fit is not None:
        assert plan.positions_per_block <= case.fit
    result = spectral_map.result()

    core_axes = core_axes_of(arr, case.core_dims)
    loop_dims = tuple(d for i, d in enumerate(arr.dims) if i not in core_axes)
    for var in [result] if isinstance(result, xr.DataArray) else result.data_vars.values():
        assert var.dims[: len(loop_dims)] == loop_dims
    for d in loop_dims:
        np.testing.assert_array_equal(result[d].values, arr[d].values)
    assert_matches(result.compute(), reference(per_spectrum, data, core_axes, names))


@st.composite
def array_cases(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    core = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    if draw(st.booleans()):  # negative axis numbers count from the end
        core = [a - ndim for a in core]
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    return shape, tuple(core), chunks


@PROPERTY
@given(
    case=array_cases(),
    use_dask=st.booleans(),
    kind=st.sampled_from(sorted(FUNCTIONS)),
    vectorized=st.booleans(),
    positions_per_block=st.none() | st.integers(1, 50),
)
def test_array_results_equal_numpy_loop(case, use_dask, kind, vectorized, positions_per_block):
    shape, core, chunks = case
    data = np.random.default_rng(len(shape)).uniform(-2, 2, shape)
    per_spectrum, vectorised, names = FUNCTIONS[kind]
    source = da.from_array(data, chunks=chunks) if use_dask else data
    result = lazyusid.map_spectra(
        source,
        vectorised if vectorized else per_spectrum,
        core_dims=core,
        outputs=names,
        vectorized=vectorized,
        positions_per_block=positions_per_block,
    )
    loop_dims = tuple(f"dim_{i}" for i in range(len(shape)) if i not in [a % len(shape) for a in core])
    first = result if isinstance(result, xr.DataArray) else next(iter(result.data_vars.values()))
    assert first.dims[: len(loop_dims)] == loop_dims
    assert_matches(result.compute(), reference(per_spectrum, data, core, names))


# ---------------------------------------------------------------------------
# Results equal a NumPy loop: the awkward shapes, named


@pytest.mark.parametrize("vectorized", [False, True], ids=["per-spectrum", "vectorised"])
@pytest.mark.parametrize("kind", sorted(FUNCTIONS))
def test_blocks_that_do_not_divide_the_positions(scan, kind, vectorized):
    path, data = scan
    per_spectrum, vectorised, names = FUNCTIONS[kind]
    spectral_map = prepare_map(
        lazyusid.open_usid(path),
        vectorised if vectorized else per_spectrum,
        outputs=names,
        vectorized=vectorized,
        positions_per_block=7,
    )
    assert spectral_map.plan.n_positions == 384
    assert spectral_map.plan.n_blocks == 55  # 54 of 7 and one of 6
    assert_matches(
        spectral_map.result().compute(), reference(per_spectrum, data, [2], names), exact=not vectorized
    )


@pytest.mark.parametrize("vectorized", [False, True], ids=["per-spectrum", "vectorised"])
@pytest.mark.parametrize("kind", sorted(FUNCTIONS))
def test_single_position(tmp_path, kind, vectorized):
    path, data = write_scan(tmp_path, {"Y": 1, "X": 1}, {"Frequency": 5})
    per_spectrum, vectorised, names = FUNCTIONS[kind]
    func = vectorised if vectorized else per_spectrum
    result = lazyusid.map_spectra(lazyusid.open_usid(path), func, outputs=names, vectorized=vectorized)
    assert_matches(result.compute(), reference(per_spectrum, data, [2], names))

    # no loop dimension at all: one spectrum as a 1-D array
    spectrum = data[0, 0]
    result = lazyusid.map_spectra(spectrum, func, core_dims=0, outputs=names, vectorized=vectorized)
    assert_matches(result.compute(), reference(per_spectrum, spectrum, [0], names))


@pytest.mark.parametrize(
    ("core_dims", "result_dims"),
    [
        (("Frequency",), ("Y", "X", "DC_Offset")),
        (("DC_Offset",), ("Y", "X", "Frequency")),
        (None, ("Y", "X")),
        (("Frequency", "DC_Offset"), ("Y", "X")),
    ],
)
@pytest.mark.parametrize("vectorized", [False, True], ids=["per-spectrum", "vectorised"])
def test_two_spectroscopic_dimensions(scan_2spec, core_dims, result_dims, vectorized):
    path, data = scan_2spec
    arr = lazyusid.open_usid(path)
    assert arr.dims == ("Y", "X", "DC_Offset", "Frequency")
    result = lazyusid.map_spectra(
        arr, extremes_v if vectorized else extremes, core_dims=core_dims, vectorized=vectorized
    )
    assert result.dims == (*result_dims, f"{result.name}_dim_0")
    for d in result_dims:
        np.testing.assert_array_equal(result[d].values, arr[d].values)
        assert result[d].attrs["units"] == arr[d].attrs["units"]
    assert_matches(result.compute(), reference(extremes, data, core_axes_of(arr, core_dims)))
    if core_dims in [("Frequency",), ("DC_Offset",)]:  # one core axis: np.apply_along_axis agrees
        axis = arr.dims.index(core_dims[0])
        np.testing.assert_allclose(
            result.values, np.moveaxis(np.apply_along_axis(extremes, axis, data), axis, -1)
        )


# ---------------------------------------------------------------------------
# Result structure


def test_one_output_is_a_dataarray_named_by_the_function(scan):
    path, _ = scan
    arr = lazyusid.open_usid(path)
    result = lazyusid.map_spectra(arr, peak)
    assert isinstance(result, xr.DataArray)
    assert result.name == "peak"
    assert result.dims == ("Y", "X")
    assert isinstance(result.data, da.Array)
    assert result.dtype == np.float32  # inferred from the real spectrum: float32 data
    assert result.attrs["usid_function"] == "peak"
    assert result.attrs["usid_file"] == arr.attrs["usid_file"]
    assert "Frequency" not in result.coords
    for d in ("Y", "X"):
        xr.testing.assert_identical(result[d].variable, arr[d].variable)


def test_several_outputs_are_a_dataset(scan):
    path, _ = scan
    arr = lazyusid.open_usid(path)
    ds = lazyusid.map_spectra(arr, moments, outputs=["mean", "range"])
    assert isinstance(ds, xr.Dataset)
    assert list(ds.data_vars) == ["mean", "range"]
    assert ds["mean"].dims == ("Y", "X")
    assert ds["range"].dims == ("Y", "X", "range_dim_0")
    assert ds.sizes["range_dim_0"] == 2
    assert ds.attrs["usid_function"] == "moments"
    xr.testing.assert_identical(ds["X"].variable, arr["X"].variable)


def test_declared_dims_and_dtypes(scan):
    path, data = scan
    arr = lazyusid.open_usid(path)
    ds = lazyusid.map_spectra(arr, moments_dict, outputs={"mean": "float64", "range": {"dims": ("bound",)}})
    assert ds["mean"].dtype == np.float64
    assert ds["range"].dims == ("Y", "X", "bound")
    assert ds["range"].dtype == np.float32
    np.testing.assert_allclose(ds["mean"].values, data.mean(axis=-1), rtol=1e-6)

    ds = lazyusid.map_spectra(
        arr,
        moments,
        outputs={"mean": Output("mean", (), "f2"), "range": Output("range", (2,), "f8", ("bound",))},
    )
    assert (ds["mean"].dtype, ds["range"].dtype) == (np.float16, np.float64)
    assert ds["range"].dims == ("Y", "X", "bound")
    computed = ds.compute()
    np.testing.assert_array_equal(computed["range"].values[..., 1], data.max(axis=-1).astype("f8"))

    result = lazyusid.map_spectra(arr, peak, outputs={"amplitude": "float64"})
    assert isinstance(result, xr.DataArray)
    assert (result.name, result.dtype) == ("amplitude", np.float64)


def test_vector_output_gets_default_dim_names(scan_2spec):
    path, _ = scan_2spec
    result = lazyusid.map_spectra(lazyusid.open_usid(path), lambda s: s[:2, :3])
    assert result.name == "lambda"
    assert result.dims == ("Y", "X", "lambda_dim_0", "lambda_dim_1")
    assert result.shape == (5, 3, 2, 3)


# ---------------------------------------------------------------------------
# Laziness


def test_map_spectra_reads_only_the_inference_spectrum(scan, rows_read, raise_if_dask_computes):
    path, data = scan
    arr = lazyusid.open_usid(path)
    assert rows_read == []
    calls = []

    def counted_peak(spectrum):
        calls.append(spectrum.copy())
        return np.abs(spectrum).max()

    with raise_if_dask_computes(max_computes=0):
        result = lazyusid.map_spectra(arr, counted_peak, positions_per_block=7)
        ds = lazyusid.map_spectra(arr, moments_v, vectorized=True, outputs=["mean", "range"])
    # one read each, of the first position's row of the slowest dimension at most (X=16 spectra)
    assert len(rows_read) == 2
    assert all(start == 0 and 1 <= stop <= 16 for start, stop in rows_read)
    assert len(calls) == 1
    np.testing.assert_array_equal(calls[0], data[0, 0])  # a real spectrum: the first one

    rows_read.clear()
    with dask.config.set(scheduler="sync"):
        result.compute()
        ds.compute()
    assert len(calls) == 1 + 384
    assert sum(stop - start for start, stop in rows_read) == 2 * 384  # every spectrum read once per compute


def test_inference_uses_a_real_spectrum(tmp_path):
    # log_peak raises on an all-zero spectrum: inference on a zero template would fail
    path, data = write_scan(tmp_path, {"Y": 3, "X": 4}, {"Frequency": 6})
    arr = lazyusid.open_usid(path)
    result = lazyusid.map_spectra(arr, log_peak)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result.values, np.log(np.abs(data).max(axis=-1)), rtol=1e-6)
    assert lazyusid.apply_at(arr, log_peak, 0) == pytest.approx(np.log(np.abs(data[0, 0]).max()))

    # and a zero spectrum at one position is reported there
    with h5py.File(path, "r+") as f:
        f["Measurement_000/Channel_000/Raw_Data"][7] = 0
    result = lazyusid.map_spectra(lazyusid.open_usid(path), log_peak)
    with pytest.raises(lazyusid.SpectralFunctionError, match=r"position 7 \(Y=1, X=3\).*all-zero spectrum"):
        result.compute()


# ---------------------------------------------------------------------------
# apply_at


@pytest.mark.parametrize("vectorized", [False, True], ids=["per-spectrum", "vectorised"])
@pytest.mark.parametrize("kind", sorted(FUNCTIONS))
def test_apply_at_equals_the_full_result(scan, kind, vectorized):
    path, _ = scan
    arr = lazyusid.open_usid(path)
    _, vectorised, names = FUNCTIONS[kind]
    func = vectorised if vectorized else FUNCTIONS[kind][0]
    full = lazyusid.map_spectra(arr, func, outputs=names, vectorized=vectorized).compute()
    for position in ({"X": 13, "Y": 10}, 10 * 16 + 13, np.int64(10 * 16 + 13)):
        value = lazyusid.apply_at(arr, func, position, outputs=names, vectorized=vectorized)
        if isinstance(full, xr.DataArray):
            expected = full.isel(Y=10, X=13).values
            assert np.asarray(value).dtype == expected.dtype
            np.testing.assert_array_equal(value, expected)
        else:
            assert list(value) == list(full.data_vars)
            for name, v in value.items():
                expected = full[name].isel(Y=10, X=13).values
                assert np.asarray(v).dtype == expected.dtype
                np.testing.assert_array_equal(v, expected)


def test_apply_at_with_two_spectroscopic_dimensions(scan_2spec):
    path, data = scan_2spec
    arr = lazyusid.open_usid(path)
    value = lazyusid.apply_at(arr, extremes, {"Y": 4, "X": 1, "DC_Offset": 2}, core_dims="Frequency")
    np.testing.assert_array_equal(value, extremes(data[4, 1, 2]))
    value = lazyusid.apply_at(arr, extremes, {"Y": 4, "X": 1, "Frequency": 5}, core_dims="DC_Offset")
    np.testing.assert_array_equal(value, extremes(data[4, 1, :, 5]))


def test_apply_at_reads_one_spectrum_of_a_line_scan(tmp_path, rows_read):
    path, data = write_scan(tmp_path, {"X": 50}, {"Frequency": 9})
    arr = lazyusid.open_usid(path)
    assert lazyusid.apply_at(arr, peak, {"X": 37}) == peak(data[37])
    assert rows_read == [(37, 38)]


def test_apply_at_reads_one_row_of_the_slowest_dimension_at_most(scan, rows_read):
    path, data = scan
    arr = lazyusid.open_usid(path)
    assert lazyusid.apply_at(arr, peak, {"X": 13, "Y": 10}) == peak(data[10, 13])
    (start, stop), *rest = rows_read
    assert rest == []
    assert 10 * 16 <= start <= 10 * 16 + 13 < stop <= 11 * 16


def test_apply_at_reads_exactly_one_spectrum_of_a_grid(scan, rows_read):
    path, _ = scan
    lazyusid.apply_at(lazyusid.open_usid(path), peak, {"X": 13, "Y": 10})
    assert rows_read == [(173, 174)]


def test_apply_at_refuses_bad_positions(scan):
    path, _ = scan
    arr = lazyusid.open_usid(path)
    with pytest.raises(
        ValueError, match=r"index for each loop dimension \['Y', 'X'\]; missing \['Y'\], unknown \['Z'\]"
    ):
        lazyusid.apply_at(arr, peak, {"X": 1, "Z": 2})
    with pytest.raises(ValueError, match=r"missing \['X'\], unknown \[\]"):
        lazyusid.apply_at(arr, peak, {"Y": 1})
    with pytest.raises(IndexError, match=r"position X=16 is outside 0\.\.15"):
        lazyusid.apply_at(arr, peak, {"X": 16, "Y": 0})
    with pytest.raises(IndexError, match=r"position Y=-1 is outside 0\.\.23"):
        lazyusid.apply_at(arr, peak, {"X": 0, "Y": -1})
    with pytest.raises(
        IndexError, match=r"position 384 is outside 0\.\.383 \(flat index over \['Y', 'X'\]\)"
    ):
        lazyusid.apply_at(arr, peak, 384)
    with pytest.raises(ValueError, match=r"core_dims \['Energy'\] are not dimensions of the data"):
        lazyusid.apply_at(arr, peak, 0, core_dims="Energy")


def test_apply_at_names_the_failing_position(scan):
    path, _ = scan
    arr = lazyusid.open_usid(path)
    with pytest.raises(lazyusid.SpectralFunctionError, match=r"position 250 \(Y=15, X=10\)") as info:
        lazyusid.apply_at(arr, fails_at_marker, {"Y": 15, "X": 10})
    assert (info.value.position, info.value.coords) == (250, {"Y": 15, "X": 10})


# ---------------------------------------------------------------------------
# Errors


ERROR_MESSAGE = (
    r"fails_at_marker failed at position 250 \(Y=15, X=10\) with params \{'threshold': 50\.0\}: "
    r"ValueError: spectrum starts at 99"
)


def test_error_names_the_position_in_process(scan):
    path, _ = scan
    result = lazyusid.map_spectra(
        lazyusid.open_usid(path), fails_at_marker, params={"threshold": 50.0}, cores=1
    )
    with pytest.raises(lazyusid.SpectralFunctionError, match=ERROR_MESSAGE) as info:
        result.compute()
    assert info.value.position == 250
    assert info.value.coords == {"Y": 15, "X": 10}
    assert isinstance(info.value.__cause__, ValueError)


def test_vectorized_error_names_the_block(scan):
    path, _ = scan
    result = lazyusid.map_spectra(
        lazyusid.open_usid(path), fails_at_marker_v, vectorized=True, positions_per_block=7
    )
    # position 250 is in the block 245:252, which starts at Y=15, X=5
    with pytest.raises(
        lazyusid.SpectralFunctionError,
        match=r"the block of positions 245:252 \(Y=15, X=5\).*ValueError: a spectrum in this block is bad",
    ) as info:
        result.compute()
    assert info.value.position == 245


def test_error_at_the_first_position_names_it(tmp_path):
    path, _ = write_scan(tmp_path, {"Y": 2, "X": 3}, {"Frequency": 4}, marker=(0, 99.0))
    with pytest.raises(
        lazyusid.SpectralFunctionError, match=r"position 0 \(Y=0, X=0\).*spectrum starts at 99"
    ) as info:
        lazyusid.map_spectra(lazyusid.open_usid(path), fails_at_marker)
    assert (info.value.position, info.value.coords) == (0, {"Y": 0, "X": 0})


def test_error_names_the_position_on_worker_processes(scan, monkeypatch):
    monkeypatch.setattr(lazyusid.run.schedulers, "INLINE_SECONDS", 0.0)
    lazyusid.run.schedulers.shared_client(2)  # the pool is up: no start-up left to weigh against the work
    path, _ = scan
    spectral_map = prepare_map(
        lazyusid.open_usid(path), fails_at_marker, params={"threshold": 50.0}, cores=2, positions_per_block=32
    )
    assert spectral_map.scheduler.kind == "processes"
    with pytest.raises(lazyusid.SpectralFunctionError, match=ERROR_MESSAGE) as info:
        spectral_map.result().compute()
    assert info.value.position == 250
    assert info.value.coords == {"Y": 15, "X": 10}


def test_error_names_the_position_on_a_distributed_cluster(scan, dask_client):
    path, _ = scan
    result = lazyusid.map_spectra(
        lazyusid.open_usid(path), fails_at_marker, params={"threshold": 50.0}, client=dask_client
    )
    with pytest.raises(lazyusid.SpectralFunctionError, match=ERROR_MESSAGE) as info:
        dask_client.compute(result).result()
    assert (info.value.position, info.value.coords) == (250, {"Y": 15, "X": 10})


def wrong_count_at_marker(spectrum):
    if spectrum[0] > 50:
        return spectrum.mean(), spectrum.max(), spectrum.min()
    return spectrum.mean(), spectrum.max()


def wrong_shape_at_marker(spectrum):
    return spectrum[:1] if spectrum[0] > 50 else spectrum[:3]


@pytest.mark.parametrize(
    ("func", "outputs", "message"),
    [
        (wrong_count_at_marker, ["mean", "max"], r"expected 2 outputs \['mean', 'max'\], got a tuple of 3"),
        (wrong_shape_at_marker, None, r"output 'wrong_shape_at_marker' has shape \(1,\), expected \(3,\)"),
    ],
)
def test_unusable_result_at_one_position(scan, func, outputs, message):
    path, _ = scan
    result = lazyusid.map_spectra(lazyusid.open_usid(path), func, outputs=outputs)
    with pytest.raises(lazyusid.SpectralFunctionError, match=r"position 250 \(Y=15, X=10\).*" + message):
        result.compute()


# ---------------------------------------------------------------------------
# Parallel: a distributed cluster and the process pool give the same results


@pytest.fixture(scope="module")
def in_process(scan):
    """The reference run: per-spectrum and vectorised, in this process."""
    path, _ = scan
    arr = lazyusid.open_usid(path)
    with dask.config.set(scheduler="sync"):
        return {
            "per-spectrum": lazyusid.map_spectra(arr, moments, outputs=["mean", "range"], cores=1).compute(),
            "vectorised": lazyusid.map_spectra(
                arr, moments_v, outputs=["mean", "range"], vectorized=True, cores=1
            ).compute(),
        }


@pytest.mark.parametrize("vectorized", [False, True], ids=["per-spectrum", "vectorised"])
def test_distributed_cluster_gives_identical_results(scan, in_process, dask_client, vectorized):
    path, _ = scan
    arr = lazyusid.open_usid(path)
    func = moments_v if vectorized else moments
    expected = in_process["vectorised" if vectorized else "per-spectrum"]
    kwargs = dict(
        outputs=["mean", "range"], vectorized=vectorized, positions_per_block=50
    )  # 8 blocks, the last short

    result = lazyusid.map_spectra(arr, func, **kwargs)
    xr.testing.assert_identical(dask_client.compute(result).result(), expected)
    with dask.config.set(scheduler=dask_client):
        xr.testing.assert_identical(result.compute(), expected)

    result = lazyusid.map_spectra(arr, func, client=dask_client, **kwargs)
    xr.testing.assert_identical(dask_client.compute(result).result(), expected)
    xr.testing.assert_identical(result.compute(), expected)


def test_client_argument_evaluates_on_its_workers(scan, dask_client):
    path, data = scan
    workers = set(dask_client.run(os.getpid).values())
    result = lazyusid.map_spectra(
        lazyusid.open_usid(path),
        peak_and_pid,
        outputs=["peak", "pid"],
        client=dask_client,
        positions_per_block=50,
    )
    computed = result.compute()  # the default (threaded) scheduler; blocks still go to the client's workers
    assert set(np.unique(computed["pid"].values)) <= workers
    np.testing.assert_array_equal(computed["peak"].values, np.abs(data).max(axis=-1))


def test_process_pool_gives_identical_results(scan, in_process, monkeypatch):
    monkeypatch.setattr(lazyusid.run.schedulers, "INLINE_SECONDS", 0.0)
    lazyusid.run.schedulers.shared_client(2)  # the pool is up: no start-up left to weigh against the work
    path, _ = scan
    arr = lazyusid.open_usid(path)
    spectral_map = prepare_map(arr, moments, outputs=["mean", "range"], cores=2, positions_per_block=7)
    assert (spectral_map.scheduler.kind, spectral_map.scheduler.workers) == ("processes", 2)
    xr.testing.assert_identical(spectral_map.result().compute(), in_process["per-spectrum"])

    pids = prepare_map(arr, peak_and_pid, outputs=["peak", "pid"], cores=2).result().compute()["pid"].values
    pool = lazyusid.run.schedulers.shared_client(2)
    assert set(np.unique(pids)) <= set(pool.run(os.getpid).values())


def test_slow_per_spectrum_function_goes_to_worker_processes(scan):
    path, data = scan
    arr = lazyusid.open_usid(path)
    lazyusid.run.schedulers.shared_client(2)  # the pool is up: no start-up left to weigh against the work
    spectral_map = prepare_map(arr, slow_peak, cores=2)
    # at least 5 ms x 384 positions: estimated well over INLINE_SECONDS
    assert spectral_map.scheduler.kind == "processes"
    assert str(spectral_map.scheduler) == "2 worker processes"
    assert spectral_map.plan.scheduler == "2 worker processes"  # the plan shows what runs
    np.testing.assert_array_equal(spectral_map.result().values, np.abs(data).max(axis=-1))
    assert prepare_map(arr, slow_peak, cores=1).scheduler.kind == "sync"
    assert prepare_map(arr, peak_v, vectorized=True, cores=2).scheduler.kind == "threads"


# ---------------------------------------------------------------------------
# Parameters


ARRAY_PARAM = np.arange(9, dtype="f8")
PARAMS = {
    "scale": 2.5,
    "label": "amp",
    "window": [1, 2, 3],
    "options": {"mode": "fast", "n": 3},
    "weights": ARRAY_PARAM,
}


def check_params(scale, label, window, options, weights):
    assert type(scale) is float and scale == 2.5, scale
    assert type(label) is str and label == "amp", label
    assert type(window) is list and window == [1, 2, 3], window
    assert type(options) is dict and options == {"mode": "fast", "n": 3}, options
    assert type(weights) is np.ndarray and weights.dtype == np.float64, weights
    np.testing.assert_array_equal(weights, ARRAY_PARAM)


def weighted(spectrum, **params):
    check_params(**params)
    return params["scale"] * (spectrum * params["weights"]).sum()


def weighted_v(block, **params):
    check_params(**params)
    return params["scale"] * (block * params["weights"]).sum(axis=1)


def test_params_are_passed_through_unchanged(scan, monkeypatch, dask_client):
    path, data = scan
    arr = lazyusid.open_usid(path)
    expected = 2.5 * (data * ARRAY_PARAM).sum(axis=-1)
    for func, vectorized in ((weighted, False), (weighted_v, True)):
        result = lazyusid.map_spectra(arr, func, params=PARAMS, vectorized=vectorized)
        np.testing.assert_allclose(result.values, expected, rtol=1e-5)
        value = lazyusid.apply_at(arr, func, {"Y": 3, "X": 4}, params=PARAMS, vectorized=vectorized)
        np.testing.assert_allclose(value, expected[3, 4], rtol=1e-5)
    # pickled to worker processes and back
    result = lazyusid.map_spectra(arr, weighted, params=PARAMS, client=dask_client)
    np.testing.assert_allclose(dask_client.compute(result).result().values, expected, rtol=1e-5)
    monkeypatch.setattr(lazyusid.run.schedulers, "INLINE_SECONDS", 0.0)
    lazyusid.run.schedulers.shared_client(2)  # the pool is up: no start-up left to weigh against the work
    spectral_map = prepare_map(arr, weighted, params=PARAMS, cores=2)
    assert spectral_map.scheduler.kind == "processes"
    np.testing.assert_allclose(spectral_map.result().values, expected, rtol=1e-5)
    assert PARAMS["window"] == [1, 2, 3]  # the caller's objects are not modified


# ---------------------------------------------------------------------------
# Progress


def test_progress_bar_for_a_long_run(capfd):
    data = np.ones((48, 4))
    result = lazyusid.map_spectra(
        data, sleepy_peak, core_dims=1, positions_per_block=6, cores=1, progress=True
    )
    capfd.readouterr()
    result.compute()  # on the plan's scheduler (this thread); 48 x 30 ms: longer than the bar's 1 s delay
    err = capfd.readouterr().err
    assert "sleepy_peak" in err
    assert "8/8" in err
    assert "block" in err


def test_no_progress_bar_when_disabled(capfd):
    data = np.ones((48, 4))
    result = lazyusid.map_spectra(
        data, sleepy_peak, core_dims=1, positions_per_block=6, cores=1, progress=False
    )
    result.compute(scheduler="sync")
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_an_active_default_client_is_used(scan):
    """The user's current default client (e.g. dask-jobqueue's) runs the blocks, stored or lazy."""
    from distributed import Client, LocalCluster

    path, data = scan
    arr = lazyusid.open_usid(path)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:  # set as the default
            plan = lazyusid.plan_spectra(arr, peak_and_pid, outputs=["peak", "pid"])
            assert plan.scheduler == f"the distributed Client at {client.scheduler.address}"
            result = lazyusid.map_spectra(arr, peak_and_pid, outputs=["peak", "pid"]).compute()
    np.testing.assert_array_equal(result["peak"].values, np.abs(data).max(axis=-1))
    assert lazyusid.plan_spectra(arr, peak_and_pid, outputs=["peak", "pid"]).scheduler != plan.scheduler
