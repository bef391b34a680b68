"""SpectralFunction and Output: inferring outputs, evaluating blocks, errors that name the position."""

from __future__ import annotations

import pickle
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazyusid
from lazyusid.core.function import SpectralFunction
from lazyusid.core.outputs import Output, infer_outputs
from lazyusid.errors import OutputDtypeError

SPECTRUM = np.linspace(1.0, 2.0, 7)
BLOCK = np.stack([SPECTRUM + i for i in range(5)])  # 5 positions


def amplitude(spectrum):
    return np.abs(spectrum).max()


def band(spectrum):
    return np.array([spectrum.min(), spectrum.max()])


def fit(spectrum):
    return spectrum.mean(), np.array([spectrum.min(), spectrum.max()]).astype("f4")


def fit_dict(spectrum):
    return {"mean": spectrum.mean(), "band": np.array([spectrum.min(), spectrum.max()])}


# ---------------------------------------------------------------------------
# Output


def test_output_defaults():
    out = Output("peaks", (3, 2), "f4")
    assert out.dims == ("peaks_dim_0", "peaks_dim_1")
    assert out.dtype == np.dtype("float32")
    assert out.nbytes == 24
    assert out.to_dict() == {
        "name": "peaks",
        "shape": [3, 2],
        "dtype": "<f4",
        "dims": ["peaks_dim_0", "peaks_dim_1"],
    }
    assert Output("amp").shape == ()
    assert Output("amp").dtype == np.float64
    assert Output("amp").nbytes == 8
    assert lazyusid.Output is Output


def test_output_dims_must_match_shape():
    with pytest.raises(ValueError, match=r"output 'peaks': 1 dims \('peak',\) for shape \(3, 2\)"):
        Output("peaks", (3, 2), dims=("peak",))


def test_output_is_a_hashable_value():
    assert Output("a", [3], "f8") == Output("a", (3,), np.float64)
    assert len({Output("a", (3,)), Output("a", (3,))}) == 1


# ---------------------------------------------------------------------------
# infer_outputs


def test_infer_scalar_output_named_after_the_function():
    outs, single = infer_outputs(amplitude, SPECTRUM, {}, None, False)
    assert single
    assert outs == (Output("amplitude", (), "f8"),)


def test_infer_lambda_gets_a_usable_name():
    outs, single = infer_outputs(lambda s: s.sum(), SPECTRUM, {}, None, False)
    assert single
    assert outs[0].name == "lambda"


def test_infer_vector_output():
    (out,), single = infer_outputs(band, SPECTRUM, {}, None, False)
    assert single
    assert (out.name, out.shape, out.dims) == ("band", (2,), ("band_dim_0",))


def test_infer_tuple_outputs_with_names_and_their_own_dtypes():
    outs, single = infer_outputs(fit, SPECTRUM, {}, ["mean", "band"], False)
    assert not single
    assert outs == (Output("mean", (), "f8"), Output("band", (2,), "f4"))


def test_infer_tuple_outputs_without_names():
    outs, _ = infer_outputs(fit, SPECTRUM, {}, None, False)
    assert [o.name for o in outs] == ["output_0", "output_1"]


def test_infer_dict_outputs():
    outs, single = infer_outputs(fit_dict, SPECTRUM, {}, None, False)
    assert not single
    assert [(o.name, o.shape) for o in outs] == [("mean", ()), ("band", (2,))]


def test_declared_dtype_and_dims():
    outs, _ = infer_outputs(
        fit, SPECTRUM, {}, {"mean": "float32", "band": {"dims": ("bound",), "dtype": "f8"}}, False
    )
    assert outs == (Output("mean", (), "f4"), Output("band", (2,), "f8", ("bound",)))


def test_declared_output_object_is_used_as_is():
    declared = Output("band", (2,), "f2", ("bound",))
    outs, _ = infer_outputs(fit, SPECTRUM, {}, {"mean": "f8", "band": declared}, False)
    assert outs[1] is declared


def test_single_output_renamed_by_a_one_element_list():
    outs, single = infer_outputs(amplitude, SPECTRUM, {}, ["amp"], False)
    assert single
    assert outs[0].name == "amp"


def test_vectorized_outputs_drop_the_positions_axis():
    outs, _ = infer_outputs(lambda b: (b.max(axis=1), b[:, :3]), BLOCK[:1], {}, ["max", "head"], True)
    assert [(o.name, o.shape) for o in outs] == [("max", ()), ("head", (3,))]


def test_wrong_number_of_names_is_an_error():
    with pytest.raises(
        ValueError, match=r"outputs names \['a', 'b', 'c'\] but the function returned 2 values"
    ):
        infer_outputs(fit, SPECTRUM, {}, ["a", "b", "c"], False)
    with pytest.raises(ValueError, match="but the function returned one value"):
        infer_outputs(amplitude, SPECTRUM, {}, ["a", "b"], False)


def test_string_outputs_are_refused():
    with pytest.raises(TypeError, match="output 'label' has dtype <U3; return numbers"):
        infer_outputs(lambda s: {"label": "abc"}, SPECTRUM, {}, None, False)


def test_inference_failure_names_the_function_params_and_cause():
    def broken(spectrum, factor):
        raise ZeroDivisionError("no can do")

    with pytest.raises(
        lazyusid.SpectralFunctionError,
        match=r"broken failed at position 0 .*while lazyusid inferred its outputs, with params \{'factor': 2\}: "
        r"ZeroDivisionError: no can do",
    ) as info:
        infer_outputs(broken, SPECTRUM, {"factor": 2}, None, False)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert info.value.position == 0


def test_inference_failure_names_the_position_given():
    def broken(spectrum):
        raise KeyError("k")

    with pytest.raises(lazyusid.SpectralFunctionError, match=r"at position 250 \(Y=10, X=10\)") as info:
        infer_outputs(broken, SPECTRUM, {}, None, False, position=250, coords={"Y": 10, "X": 10})
    assert info.value.position == 250
    assert info.value.coords == {"Y": 10, "X": 10}


# ---------------------------------------------------------------------------
# SpectralFunction.evaluate


def make(func, outputs=None, vectorized=False, params=None, sample=None):
    params = params or {}
    if sample is None:
        sample = BLOCK[:1] if vectorized else BLOCK[0]
    outs, single = infer_outputs(func, sample, params, outputs, vectorized)
    return SpectralFunction(func, params, outs, vectorized=vectorized, single=single)


@pytest.mark.parametrize(
    ("func", "outputs"), [(amplitude, None), (band, None), (fit, ["mean", "band"]), (fit_dict, None)]
)
def test_evaluate_equals_a_loop(func, outputs):
    fn = make(func, outputs)
    got = fn.evaluate(BLOCK)
    expected = [func(s) for s in BLOCK]
    if fn.single:
        expected = [[e] for e in expected]
    elif isinstance(expected[0], dict):
        expected = [list(e.values()) for e in expected]
    for i, (out, values) in enumerate(zip(got, zip(*expected))):
        assert out.dtype == fn.outputs[i].dtype
        np.testing.assert_array_equal(out, np.stack(values).astype(out.dtype))


def test_evaluate_vectorized():
    fn = make(lambda b: (b.max(axis=1), b[:, :3]), ["max", "head"], vectorized=True)
    top, head = fn.evaluate(BLOCK)
    np.testing.assert_array_equal(top, BLOCK.max(axis=1))
    np.testing.assert_array_equal(head, BLOCK[:, :3])


def test_a_large_block_reaches_a_vectorised_function_in_cache_sized_pieces():
    from lazyusid.core.function import PIECE_BYTES

    block = np.random.default_rng(0).standard_normal((10_000, 119)).astype("f4")  # 4.5 MiB
    seen = []

    def abs_max(b):
        seen.append(b.shape[0])
        if b[0, 0] == np.float32(1e6):
            raise ValueError("marked")
        return np.abs(b).max(-1)

    fn = SpectralFunction(abs_max, {}, (Output("m", (), "float32"),), vectorized=True)
    (out,) = fn.evaluate(block)
    np.testing.assert_array_equal(out, np.abs(block).max(-1))
    assert sum(seen) == 10_000 and len(seen) > 1
    assert max(seen) * 119 * 4 <= PIECE_BYTES
    # a failing piece is named by its own positions, not by the whole block's
    step, marked = seen[0], block.copy()
    marked[2 * step, 0] = 1e6
    with pytest.raises(lazyusid.SpectralFunctionError, match=rf"positions {2 * step}:{3 * step} "):
        fn.evaluate(marked)


def test_evaluate_casts_to_the_declared_dtype():
    fn = make(amplitude, {"amplitude": "float32"})
    (out,) = fn.evaluate(BLOCK)
    assert out.dtype == np.float32


def test_params_reach_the_function_unchanged():
    weights = np.arange(7.0)
    params = {"scale": 2.5, "label": "amp", "window": [1, 2], "options": {"mode": "fast"}, "weights": weights}
    seen = []

    def weighted(spectrum, scale, label, window, options, weights):
        seen.append((scale, label, window, options, weights))
        return scale * (spectrum * weights).sum()

    fn = make(weighted, params=params)
    (out,) = fn.evaluate(BLOCK)
    np.testing.assert_allclose(out, 2.5 * (BLOCK * weights).sum(axis=1))
    for scale, label, window, options, w in seen:
        assert (scale, label, window, options) == (2.5, "amp", [1, 2], {"mode": "fast"})
        assert w is weights


def raise_at_marker(spectrum):
    if spectrum[0] == 4.0:
        raise ValueError(f"bad spectrum starting {spectrum[0]}")
    return spectrum.sum()


def test_failure_names_flat_position_nd_indices_params_and_cause():
    fn = make(raise_at_marker)
    # BLOCK holds positions 10..14 of a (3, 6) grid; its row 3 (flat position 13) starts with the marker 4.0
    with pytest.raises(
        lazyusid.SpectralFunctionError,
        match=r"raise_at_marker failed at position 13 \(Y=2, X=1\) with params \{\}: "
        r"ValueError: bad spectrum starting 4\.0",
    ) as info:
        fn.evaluate(BLOCK, first=10, loop_shape=(3, 6), loop_dims=("Y", "X"))
    assert info.value.position == 13
    assert info.value.coords == {"Y": 2, "X": 1}
    assert isinstance(info.value.__cause__, ValueError)
    assert "Original traceback" in str(info.value)
    assert "raise_at_marker" in str(info.value).split("Original traceback")[1]


def test_vectorized_failure_names_the_block():
    def broken(block, k):
        raise RuntimeError("whole block bad")

    fn = SpectralFunction(broken, {"k": 1}, (Output("x"),), vectorized=True)
    with pytest.raises(
        lazyusid.SpectralFunctionError,
        match=r"the block of positions 10:15 \(Y=1, X=4\) with params \{'k': 1\}: RuntimeError: whole block bad",
    ) as info:
        fn.evaluate(BLOCK, first=10, loop_shape=(3, 6), loop_dims=("Y", "X"))
    assert info.value.position == 10


def test_wrong_number_of_outputs_at_one_position():
    def flaky(spectrum):
        if spectrum[0] == 3.0:
            return spectrum.mean(), spectrum.max(), spectrum.min()
        return spectrum.mean(), spectrum.max()

    fn = make(flaky, ["mean", "max"])
    with pytest.raises(
        lazyusid.SpectralFunctionError,
        match=r"position 2 .*expected 2 outputs \['mean', 'max'\], got a tuple of 3",
    ) as info:
        fn.evaluate(BLOCK, loop_shape=(5,), loop_dims=("X",))
    assert info.value.position == 2


def test_dict_missing_an_output_at_one_position():
    def flaky(spectrum):
        out = {"mean": spectrum.mean(), "max": spectrum.max()}
        if spectrum[0] == 2.0:
            del out["max"]
        return out

    fn = make(flaky)
    with pytest.raises(
        lazyusid.SpectralFunctionError, match=r"position 1 .*returned dict lacks outputs \['max'\]"
    ):
        fn.evaluate(BLOCK, loop_shape=(5,), loop_dims=("X",))


@pytest.mark.parametrize(
    "wrong",
    [np.zeros(2), np.zeros(1), np.zeros((3, 1)), 7.0],
    ids=["shorter", "broadcastable", "extra-axis", "scalar"],
)
def test_wrong_shape_at_one_position(wrong):
    def flaky(spectrum):
        return wrong if spectrum[0] == 5.0 else spectrum[:3]

    fn = make(flaky)
    assert fn.outputs[0].shape == (3,)
    expected = re.escape(f"output 'flaky' has shape {np.shape(wrong)}, expected (3,)")
    with pytest.raises(lazyusid.SpectralFunctionError, match="position 4 .*" + expected) as info:
        fn.evaluate(BLOCK, loop_shape=(5,), loop_dims=("X",))
    assert info.value.position == 4


def test_vectorized_wrong_shape():
    fn = SpectralFunction(lambda b: b[:-1, 0], {}, (Output("first"),), vectorized=True)
    with pytest.raises(
        lazyusid.SpectralFunctionError, match=r"output 'first' has shape \(4,\), expected \(5,\)"
    ):
        fn.evaluate(BLOCK)


def test_error_survives_pickling_with_its_attributes():
    err = lazyusid.SpectralFunctionError("f failed at position 3", position=3, coords={"X": 3})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is lazyusid.SpectralFunctionError
    assert str(back) == "f failed at position 3"
    assert (back.position, back.coords) == (3, {"X": 3})
    assert isinstance(back, RuntimeError)
    assert isinstance(back, lazyusid.LazyUSIDError)


# ---------------------------------------------------------------------------
# values that the output's dtype cannot hold: an error naming the position, never a silent cast


def zero_then_means(spectrum):
    """``0`` (a Python int) at the first spectrum of BLOCK, float means elsewhere: infers int64."""
    return 0 if spectrum[0] == 1.0 else spectrum.mean()


def test_a_float_after_an_inferred_int_is_an_error_naming_position_dtypes_and_fix():
    fn = make(zero_then_means)
    assert fn.outputs[0].dtype == np.int64
    with pytest.raises(OutputDtypeError) as info:
        fn.evaluate(BLOCK, first=10, loop_shape=(3, 6), loop_dims=("Y", "X"))
    message = str(info.value)
    assert "zero_then_means returned a value that output 'zero_then_means' cannot hold" in message
    assert "at position 11 (Y=1, X=5)" in message
    assert "int64, inferred from the value at position 0" in message
    assert f"a float64 ({float(BLOCK[1].mean())!r})" in message
    assert "outputs={'zero_then_means': 'float64'}" in message
    assert (info.value.position, info.value.coords) == (11, {"Y": 1, "X": 5})
    assert isinstance(info.value, lazyusid.SpectralFunctionError)
    assert isinstance(info.value, TypeError)
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is OutputDtypeError and (back.position, back.coords) == (11, {"Y": 1, "X": 5})
    # the fix the message names works, and equals a NumPy loop
    fixed = make(zero_then_means, {"zero_then_means": "float64"})
    (out,) = fixed.evaluate(BLOCK)
    np.testing.assert_array_equal(out, np.array([zero_then_means(s) for s in BLOCK], dtype="f8"))


@pytest.mark.parametrize(
    ("later", "what", "fix"),
    [
        (1.5 + 2j, "a complex128", "'complex128'"),
        (np.complex64(1j), "a complex64", "'complex128'"),
        ("2.5", "a str", None),
        (b"2.5", "a bytes", None),
        (np.array([1, 2])[0] * 0.5, "a float64", "'float64'"),
    ],
)
def test_values_that_would_lose_information_are_refused(later, what, fix):
    def flaky(spectrum):
        return later if spectrum[0] == 3.0 else int(spectrum[0])

    fn = make(flaky)
    with pytest.raises(OutputDtypeError, match=r"at position 2 \(X=2\)") as info:
        fn.evaluate(BLOCK, loop_shape=(5,), loop_dims=("X",))
    message = str(info.value)
    assert what in message
    if fix is None:
        assert "return numbers" in message
    else:
        assert f"outputs={{'flaky': {fix}}}" in message


def test_complex_into_a_float_output_is_refused_without_a_complex_warning():
    def flaky(spectrum):
        return spectrum.mean() * (1j if spectrum[0] == 2.0 else 1)

    fn = make(flaky)
    assert fn.outputs[0].dtype == np.float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's ComplexWarning was all a user got
        with pytest.raises(OutputDtypeError, match=r"position 1: .*outputs=\{'flaky': 'complex128'\}"):
            fn.evaluate(BLOCK)


def test_none_at_one_position_is_an_error_not_nan():
    def flaky(spectrum):
        return None if spectrum[0] == 4.0 else spectrum.mean()

    fn = make(flaky)
    with pytest.raises(
        OutputDtypeError, match=r"flaky returned None for output 'flaky' at position 3"
    ) as info:
        fn.evaluate(BLOCK)
    assert "np.nan" in str(info.value)
    assert info.value.position == 3


def test_none_when_inferring_outputs_is_refused_clearly():
    with pytest.raises(
        OutputDtypeError, match=r"returned None for output 'result' at position 7 .*while lazyusid inferred"
    ) as info:
        infer_outputs(lambda s: {"result": None}, SPECTRUM, {}, None, False, position=7)
    assert info.value.position == 7


@pytest.mark.parametrize(
    ("declared", "value", "ok"),
    [
        ("int64", 2**40, True),
        ("int32", 2**40, False),
        ("int32", np.int64(2**31), False),
        ("int32", np.int64(2**31 - 1), True),
        ("uint8", -1, False),
        ("uint8", np.int64(300), False),
        ("uint8", np.array([3, 256]), False),
        ("uint8", np.int16(255), True),
        ("int8", True, True),
        ("float32", 7, True),
        ("float32", np.float64(0.1), True),  # same kind: rounding to the declared precision is asked for
        ("bool", 1.0, False),
        ("int64", 1.0, False),
    ],
)
def test_integer_targets_check_the_value(declared, value, ok):
    shape = np.shape(value)

    def constant(spectrum):
        return np.zeros(shape, dtype=bool) if spectrum[0] == 1.0 else value

    outs, _ = infer_outputs(constant, BLOCK[0], {}, {"constant": declared}, False)
    fn = SpectralFunction(constant, {}, outs)
    if ok:
        (out,) = fn.evaluate(BLOCK)
        np.testing.assert_array_equal(
            out[1:], np.broadcast_to(np.asarray(value).astype(out.dtype), (4, *shape))
        )
    else:
        with pytest.raises(
            OutputDtypeError, match=rf"position 1: output 'constant' is {declared}, declared;"
        ):
            fn.evaluate(BLOCK)


def test_vectorized_values_are_checked_too():
    def rounded_then_not(block):
        return block[:, 0] if block.shape[0] > 1 else block[:, 0].astype(int)

    fn = make(rounded_then_not, vectorized=True)
    assert fn.outputs[0].dtype.kind == "i"
    with pytest.raises(OutputDtypeError, match=r"the block of positions 10:15 \(Y=1, X=4\)") as info:
        fn.evaluate(BLOCK, first=10, loop_shape=(3, 6), loop_dims=("Y", "X"))
    assert "a float64" in str(info.value)
    assert "outputs={'rounded_then_not': 'float64'}" in str(info.value)

    big = np.arange(5) * 100  # 0, 100, ..., 400: the first over 127 is at row 2
    fn = SpectralFunction(lambda b: big, {}, (Output("x", (), "int8"),), vectorized=True)
    with pytest.raises(
        OutputDtypeError, match=r"at position 12 \(Y=2, X=0\).*an int64 \(200\), outside the range of int8"
    ) as info:
        fn.evaluate(BLOCK, first=10, loop_shape=(3, 6), loop_dims=("Y", "X"))
    assert info.value.position == 12


def test_map_spectra_refuses_the_silent_int_cast():
    data = np.stack([SPECTRUM, SPECTRUM + 1, SPECTRUM + 2])[None]  # (1, 3, 7)

    def mean_or_zero(spectrum):
        return 0 if spectrum[0] == 1.0 else spectrum.mean()

    with pytest.raises(OutputDtypeError, match=r"outputs=\{'mean_or_zero': 'float64'\}"):
        lazyusid.map_spectra(data, mean_or_zero, cores=1, progress=False).compute()
    fixed = lazyusid.map_spectra(
        data, mean_or_zero, outputs={"mean_or_zero": "float64"}, cores=1, progress=False
    )
    np.testing.assert_array_equal(fixed.values, [[mean_or_zero(s) for s in data[0]]])


def test_int_subclasses_are_checked_by_value_without_iterating_a_range():
    import enum

    class Level(enum.IntEnum):
        LOW = 1
        HIGH = 2**40

    def level(spectrum):
        return 0 if spectrum[0] == 1.0 else (Level.LOW if spectrum[0] == 2.0 else Level.HIGH)

    fn = make(level)
    assert fn.outputs[0].dtype == np.int64
    (out,) = fn.evaluate(BLOCK)  # `Level.HIGH in range(-2**63, 2**63)` would iterate for ever
    np.testing.assert_array_equal(out, [0, 1, 2**40, 2**40, 2**40])
    narrow = SpectralFunction(level, {}, (Output("level", (), "int32"),))
    with pytest.raises(OutputDtypeError, match=r"position 2: .*outside the range of int32"):
        narrow.evaluate(BLOCK)


def test_a_declared_dtype_the_first_value_does_not_fit_is_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "results.h5"
    data = np.linspace(0.5, 2.0, 24).reshape(6, 4)
    with pytest.raises(OutputDtypeError, match=r"output 'v' is uint64, declared.*outputs=\{'v': 'float64'\}"):
        lazyusid.map_spectra(data, lambda s: s.mean(), core_dims=1, outputs={"v": "u8"}, store=target)
    assert not target.exists()


#: values of every class a scalar function returns, some that fit each dtype below and some that do not
VALUES = [
    1.5,
    -2.0,
    3,
    2**70,
    True,
    np.float32(0.25),
    np.float64(1e300),
    np.int64(-7),
    np.uint8(200),
    np.int8(-3),
    np.complex64(1j),
    np.array(2.5),
    np.array(4),
    1 + 0j,
    float("nan"),
]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 1e300 into float32: inf, as alone
@settings(max_examples=150, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(VALUES) - 1), min_size=1, max_size=40),
    dtype=st.sampled_from(["float64", "float32", "int64", "int8", "uint8", "bool", "complex64"]),
)
def test_a_block_stores_and_refuses_what_one_spectrum_at_a_time_does(picks, dtype):
    """The loop's shortcut for values of a class known to fit changes nothing: each value is judged as alone."""
    block = np.arange(len(picks), dtype=float)[:, None] * np.ones(3)

    def pick(spectrum):
        return VALUES[picks[int(spectrum[0])]]

    fn = SpectralFunction(pick, {}, (Output("pick", (), np.dtype(dtype)),))
    alone, refused = [], None
    for i in range(len(picks)):  # the reference: every value the first of its block
        try:
            alone.append(fn.evaluate(block[i : i + 1], first=i)[0][0])
        except OutputDtypeError as exc:
            refused = exc.position
            break
    if refused is None:
        np.testing.assert_array_equal(fn.evaluate(block)[0], np.array(alone, dtype=dtype))
    else:
        with pytest.raises(OutputDtypeError) as info:
            fn.evaluate(block)
        assert info.value.position == refused
