"""The engine's options are explicit keyword-only parameters, defined once (lazyusid.options), on every face."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import lazyusid
from lazyusid.core.describe import short
from lazyusid.options import CALL, RUN, STORE, parameters

ENGINE = [p.name for p in parameters(CALL, RUN)]


@pytest.mark.parametrize(
    "func, groups",
    [
        (lazyusid.map_spectra, (CALL, RUN, STORE)),
        (lazyusid.plan_spectra, (CALL, RUN)),
        (lazyusid.apply_at, (CALL,)),
    ],
)
def test_signatures_show_every_option_typed_and_keyword_only(func, groups):
    sig = inspect.signature(func)
    for p in parameters(*groups):
        got = sig.parameters[p.name]
        assert got.kind is inspect.Parameter.KEYWORD_ONLY
        assert got.default == p.default
        assert got.annotation is not inspect.Parameter.empty, p.name
        assert f"{p.name} :" in func.__doc__, f"{p.name} undocumented in {func.__name__}"


def test_accessor_methods_show_the_same_options(usid_file):
    data = lazyusid.open_usid(usid_file.path)
    for method, func in ((data.usid.map, lazyusid.map_spectra), (data.usid.plan, lazyusid.plan_spectra)):
        names = list(inspect.signature(method).parameters)
        assert names == list(inspect.signature(func).parameters)[1:]  # minus data
        assert all(o in names for o in ENGINE)


def test_unknown_option_is_refused_with_the_list(usid_file):
    data = lazyusid.open_usid(usid_file.path)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'core_dim'.*'core_dims'"):
        lazyusid.map_spectra(data, np.sum, core_dim="Frequency")
    with pytest.raises(TypeError):
        lazyusid.map_spectra(data)  # func missing, as for any function


def test_parameters_in_messages_are_compact():
    text = short({"k": 2, "w": np.zeros((300, 4)), "name": "x" * 500})
    assert "array(shape=(300, 4), dtype=float64)" in text and "0., 0." not in text
    assert len(text) <= 300


def test_failing_function_error_shows_arrays_by_shape(usid_file):
    data = lazyusid.open_usid(usid_file.path)

    def fails(spectrum, weights):
        raise ValueError("boom")

    with pytest.raises(lazyusid.SpectralFunctionError) as info:
        lazyusid.apply_at(data, fails, params={"weights": np.ones((50, 50))})
    assert "array(shape=(50, 50), dtype=float64)" in str(info.value) and "1., 1." not in str(info.value)
