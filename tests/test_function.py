"""SpectralFunction and Output: inferring outputs, evaluating blocks, errors that name the position."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

import lazyusid
from lazyusid.function import Output, SpectralFunction, infer_outputs

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
