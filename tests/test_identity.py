"""Identity of a computation: canonical digests, function identities and tokens (docs/design.md, decision 7)."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import textwrap

import h5py
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lazyusid
from lazyusid.core.function import SpectralFunction
from lazyusid.core.identity import (
    UnhashableParameterError,
    computation_token,
    digest,
    function_identity,
    readable,
    to_json,
)
from lazyusid.core.outputs import Output
from lazyusid.io.fingerprint import content_fingerprint, sampled_rows

# ---------------------------------------------------------------------------
# strategies: the parameter values lazyusid promises to identify

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
arrays = hnp.arrays(
    dtype=st.sampled_from(["<i1", "<u2", "<i8", "<f4", "<f8", "<c8", "?"]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
)
values = st.recursive(
    scalars | arrays,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


def exec_function(source: str, name: str = "f", module: str = "user_module"):
    """Define the functions in ``source`` in a fresh namespace (as a user's script would) and return one."""
    namespace = {"__name__": module, "np": np}
    exec(textwrap.dedent(source), namespace)
    return namespace[name]


# ---------------------------------------------------------------------------
# digest


@given(values)
def test_equal_values_give_equal_digests(value):
    assert digest(value) == digest(copy.deepcopy(value))


@given(st.dictionaries(st.text(max_size=5), scalars, min_size=2, max_size=6))
def test_dict_key_order_is_irrelevant(mapping):
    reordered = dict(reversed(list(mapping.items())))
    assert list(reordered) != list(mapping)
    assert digest(reordered) == digest(mapping)


def test_numbers_of_different_types_differ():
    ones = [
        1,
        1.0,
        True,
        1 + 0j,
        np.int64(1),
        np.int32(1),
        np.uint8(1),
        np.float32(1),
        np.complex64(1),
        np.array(1),
        np.array([1]),
        np.array(1.0),
        "1",
        b"1",
        [1],
        (1,),
        {"a": 1},
        {1},
    ]
    digests = [digest(v) for v in ones]
    assert len(set(digests)) == len(ones), [repr(v) for v in ones]


def test_containers_and_keys_differ():
    assert digest({1: "a"}) != digest({"1": "a"})
    assert digest([]) != digest(()) != digest({}) != digest(None)
    assert digest([[1, 2], [3]]) != digest([[1], [2, 3]])  # lengths are part of the encoding
    assert digest(["ab"]) != digest(["a", "b"])
    assert digest(0.0) != digest(-0.0)  # conservative: may recompute, never reuses wrongly
    assert digest(float("nan")) == digest(float("nan"))


@given(st.lists(scalars | arrays, max_size=5))
def test_lists_and_tuples_differ(items):
    assert digest(items) != digest(tuple(items))
    assert digest([items]) != digest([tuple(items)])


@given(
    hnp.arrays(dtype=st.sampled_from(["<i4", "<f8", "<c16"]), shape=hnp.array_shapes(max_side=5)), st.data()
)
def test_arrays_differing_in_one_element_differ(arr, data):
    index = data.draw(st.tuples(*(st.integers(0, n - 1) for n in arr.shape)))
    changed = arr.copy()
    changed[index] = 1 if arr[index] == 0 else 0
    assert digest(changed) != digest(arr)


@given(hnp.arrays(dtype="<i4", shape=hnp.array_shapes(min_dims=1, max_side=5)))
def test_arrays_differing_in_dtype_or_shape_differ(arr):
    assert digest(arr.astype("<i8")) != digest(arr)
    assert digest(arr.astype(">i4")) != digest(arr)  # same values, other bytes: conservative
    assert digest(arr.astype("<f4")) != digest(arr)
    assert digest(arr[..., None]) != digest(arr)
    assert digest(arr[None]) != digest(arr[..., None]) or arr.shape[-1] == 1
    flat = arr.reshape(-1)
    assert digest(flat.reshape(-1, 1)) != digest(flat.reshape(1, -1)) or flat.size == 1


def test_array_digest_ignores_memory_layout():
    arr = np.arange(12.0).reshape(3, 4)
    assert digest(np.asfortranarray(arr)) == digest(arr)
    assert digest(arr.T.copy().T) == digest(arr)
    assert digest(arr[:, ::2]) == digest(np.ascontiguousarray(arr[:, ::2]))


def test_structured_arrays_differ_by_fields():
    a = np.zeros(2, dtype=[("a", "<f8"), ("b", "<f8")])
    b = np.zeros(2, dtype=[("x", "<i8"), ("y", "<i8")])
    assert a.tobytes() == b.tobytes()
    assert digest(a) != digest(b)
    assert digest(a.dtype) != digest(b.dtype)


def test_sets_are_identified_whatever_their_order():
    assert digest({"b", "a", "c"}) == digest({"c", "a", "b"})
    assert digest({1, 2}) != digest({1, 3})
    assert digest(frozenset({1})) != digest([1])


@pytest.mark.parametrize(
    ("value", "where", "what"),
    [
        (object(), r"value", r"builtins\.object"),
        ({"a": [1, object()]}, r"value\['a'\]\[1\]", r"builtins\.object"),
        ({"x": range(3)}, r"value\['x'\]", r"builtins\.range"),
    ],
)
def test_unsupported_values_raise_a_helpful_error(value, where, what):
    with pytest.raises(
        UnhashableParameterError, match=rf"^{where} is a {what}, which lazyusid cannot identify.*pass numbers"
    ) as info:
        digest(value)
    assert isinstance(info.value, TypeError)


def test_object_arrays_are_refused():
    with pytest.raises(UnhashableParameterError, match=r"value\[0\]: object arrays .* use a numeric dtype"):
        digest([np.array([1, "a"], dtype=object)])


def test_unsupported_parameter_is_named_in_the_token_error():
    fn = SpectralFunction(np.abs, {"model": object()}, (Output("amp"),))
    with pytest.raises(UnhashableParameterError, match=r"^params\['model'\] is a builtins\.object"):
        computation_token(tool="amp", function=fn, source={})


# ---------------------------------------------------------------------------
# stable across processes: no hash(), no pickle

MODULE = """
import functools
import numpy as np

SCALE = 3.0


def helper(s):
    return s * SCALE


def fit(spectrum, k=2, *, mode="max"):
    return helper(spectrum).max() * k


def make(offset):
    def shifted(s):
        return fit(s) + offset

    return shifted


VALUES = [
    None, True, 1, 1.5, 2j, "text", b"bytes", [1, (2, 3)], {"b": 1, "a": [np.float32(2)]},
    {"set", "of", "strings", "in", "hash", "order"}, frozenset({1, 2, 3}),
    np.arange(6, dtype="<i2").reshape(2, 3), np.float32(0.5), np.dtype("<c8"), slice(1, 9, 2),
]
FUNCTIONS = [fit, make(1.0), functools.partial(fit, k=4), np.abs, np.mean, len]
"""

REPORT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import idmod
from lazyusid.core.function import SpectralFunction
from lazyusid.core.outputs import Output
from lazyusid.core.identity import computation_token, digest, function_identity

fn = SpectralFunction(idmod.fit, {"k": 2, "band": idmod.VALUES[11]}, (Output("amp", (), "f4"),))
print(json.dumps({
    "values": [digest(v) for v in idmod.VALUES],
    "functions": [function_identity(f) for f in idmod.FUNCTIONS],
    "token": computation_token(tool="fit", function=fn, source={"dataset": "/a", "shape": [2, 3]})[0],
}))
"""


def test_tokens_are_identical_in_fresh_processes(tmp_path):
    (tmp_path / "idmod.py").write_text(MODULE)
    (tmp_path / "report.py").write_text(REPORT)
    reports = []
    for seed in ("0", "12345"):  # a different str hash() per process would show in the sets
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, str(tmp_path / "report.py"), str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        reports.append(json.loads(run.stdout))
    assert reports[0] == reports[1]
    assert len(set(reports[0]["values"])) == len(reports[0]["values"])
    assert len({f["code_sha256"] for f in reports[0]["functions"]}) == len(reports[0]["functions"])


# ---------------------------------------------------------------------------
# function identity


BODY = """
def f(spectrum, k=2):
    return spectrum.max() * k
"""


def test_same_code_gives_the_same_identity():
    a, b = exec_function(BODY), exec_function(BODY)
    assert a is not b
    assert function_identity(a) == function_identity(b)
    assert function_identity(a) == {"module": "user_module", "qualname": "f", "code_sha256": digest_of(a)}


def digest_of(func) -> str:
    return function_identity(func)["code_sha256"]


@pytest.mark.parametrize(
    "changed",
    [
        "def f(spectrum, k=2):\n    return spectrum.min() * k\n",  # another method
        "def f(spectrum, k=2):\n    return spectrum.max() * k + 1\n",  # another constant
        "def f(spectrum, k=3):\n    return spectrum.max() * k\n",  # another default
        "def f(spectrum, *, k=2):\n    return spectrum.max() * k\n",  # keyword-only default
        "def f(spectrum, k=2):\n    return spectrum.max() * k * 1.0\n",  # 1.0 is not 1
        "def f(spectrum, k=2):\n    return (lambda s: s.max())(spectrum) * k\n",  # nested code
        "def f(spectrum, k=2):\n    out = spectrum.max()\n    return out * k\n",  # a renamed local
    ],
)
def test_a_changed_body_under_the_same_name_changes_the_identity(changed):
    before, after = exec_function(BODY), exec_function(changed)
    assert before.__qualname__ == after.__qualname__ == "f"
    assert digest_of(before) != digest_of(after)


def test_nested_function_bodies_count():
    a = exec_function("def f(s):\n    def g(x):\n        return x + 1\n    return g(s)\n")
    b = exec_function("def f(s):\n    def g(x):\n        return x + 2\n    return g(s)\n")
    assert digest_of(a) != digest_of(b)


def test_helper_functions_and_global_constants_count():
    uses_helper = "def helper(s):\n    return s * {}\n\ndef f(s):\n    return helper(s).max()\n"
    assert digest_of(exec_function(uses_helper.format(2))) == digest_of(exec_function(uses_helper.format(2)))
    assert digest_of(exec_function(uses_helper.format(2))) != digest_of(exec_function(uses_helper.format(3)))
    uses_constant = "SCALE = {}\n\ndef f(s):\n    return s.max() * SCALE\n"
    assert digest_of(exec_function(uses_constant.format(2))) != digest_of(
        exec_function(uses_constant.format(3))
    )
    assert digest_of(exec_function(uses_constant.format(2))) != digest_of(
        exec_function(uses_constant.format(2.0))
    )


def test_globals_that_cannot_be_encoded_count_by_class():
    f = exec_function(
        "import threading\nLOCK = threading.Lock()\n\ndef f(s):\n    with LOCK:\n        return s\n"
    )
    g = exec_function(
        "import threading\nLOCK = threading.Lock()\n\ndef f(s):\n    with LOCK:\n        return s\n"
    )
    assert digest_of(f) == digest_of(g)


def test_recursive_functions_are_identified():
    rec = exec_function("def f(n):\n    return 0 if n <= 0 else f(n - 1) + 1\n")
    assert digest_of(rec) == digest_of(exec_function("def f(n):\n    return 0 if n <= 0 else f(n - 1) + 1\n"))

    def outer(step):
        def countdown(n):
            return 0 if n <= 0 else countdown(n - step) + 1

        return countdown

    assert digest_of(outer(1)) == digest_of(outer(1))
    assert digest_of(outer(1)) != digest_of(outer(2))


def make_scaler(k):
    def scaled(spectrum):
        return spectrum.max() * k

    return scaled


def scale(spectrum, k=2, *, offset=0.0):
    return spectrum.max() * k + offset


def test_closures_count():
    assert digest_of(make_scaler(2)) == digest_of(make_scaler(2))
    assert digest_of(make_scaler(2)) != digest_of(make_scaler(3))
    assert digest_of(make_scaler(2)) != digest_of(make_scaler(2.0))
    assert digest_of(make_scaler(np.arange(3))) != digest_of(make_scaler(np.arange(3) + [0, 0, 1]))


def test_partials_count():
    assert digest_of(functools.partial(scale, k=2)) == digest_of(functools.partial(scale, k=2))
    assert digest_of(functools.partial(scale, k=2)) != digest_of(functools.partial(scale, k=3))
    assert digest_of(functools.partial(scale, k=2)) != digest_of(scale)
    assert digest_of(functools.partial(scale, offset=1)) != digest_of(functools.partial(scale, offset=1.0))
    assert digest_of(functools.partial(functools.partial(scale, k=2), offset=1)) != digest_of(
        functools.partial(scale, k=2)
    )
    identity = function_identity(functools.partial(scale, k=2))
    assert (identity["module"], identity["qualname"]) == (__name__, "scale")


class Scaler:
    def __init__(self, k):
        self.k = k

    def __call__(self, spectrum):
        return spectrum.max() * self.k

    def halve(self, spectrum):
        return spectrum.max() * self.k / 2


class SlotScaler:
    __slots__ = ("__private", "k")

    def __init__(self, k):
        self.k = k
        self.__private = -k

    def __call__(self, spectrum):
        return spectrum.max() * self.k


def test_callable_objects_and_methods_count_their_state():
    assert digest_of(Scaler(2)) == digest_of(Scaler(2))
    assert digest_of(Scaler(2)) != digest_of(Scaler(3))
    assert digest_of(Scaler(2).halve) != digest_of(Scaler(3).halve)
    assert digest_of(Scaler(2).halve) != digest_of(Scaler(2))
    assert digest_of(SlotScaler(2)) == digest_of(SlotScaler(2))
    assert digest_of(SlotScaler(2)) != digest_of(SlotScaler(3))


def test_classes_of_modules_that_cannot_be_imported():
    """A class defined by exec'd code (a script loader, a cell runner) names a module nobody can import."""
    source = """
    class Model:
        def __init__(self, k):
            self.k = k

        def __call__(self, s):
            return s * self.k
    """
    namespace = {"__name__": "not_an_importable_module"}
    exec(textwrap.dedent(source), namespace)
    model = namespace["Model"]
    assert digest_of(model(2)) == digest_of(model(2))
    assert digest_of(model(2)) != digest_of(model(3))
    assert digest({"cls": model}) == digest({"cls": model})


def test_builtin_functions_and_bound_builtin_methods():
    assert digest_of(np.abs) != digest_of(np.sqrt)
    assert digest_of(np.abs) == digest_of(np.abs)
    assert digest_of(np.arange(3.0).dot) != digest_of((np.arange(3.0) + 1).dot)
    assert digest_of(np.mean) == digest_of(np.mean)  # a library function: its code and numpy's version
    assert function_identity(len)["qualname"] == "len"


# ---------------------------------------------------------------------------
# computation token


def token_of(**change) -> str:
    spec = {
        "tool": "fit",
        "func": scale,
        "params": {"k": 2},
        "outputs": (Output("amp", (), "f4"),),
        "vectorized": False,
        "source": {"dataset": "/Measurement_000/Channel_000/Raw_Data", "shape": [4, 5, 9]},
    }
    spec.update(change)
    fn = SpectralFunction(spec["func"], spec["params"], spec["outputs"], vectorized=spec["vectorized"])
    return computation_token(tool=spec["tool"], function=fn, source=spec["source"])[0]


def test_token_is_stable_and_covers_every_part():
    base = token_of()
    assert base == token_of() and len(base) == 64
    variants = [
        token_of(tool="fit2"),
        token_of(func=make_scaler(2)),
        token_of(params={"k": 2.0}),
        token_of(params={"k": True}),
        token_of(params={"k": 2, "offset": 0.0}),
        token_of(outputs=(Output("amp", (), "f8"),)),
        token_of(outputs=(Output("peak", (), "f4"),)),
        token_of(vectorized=True),
        token_of(source={"dataset": "/Measurement_000/Channel_000/Raw_Data", "shape": [4, 5, 8]}),
        token_of(source={"dataset": "/Measurement_001/Channel_000/Raw_Data", "shape": [4, 5, 9]}),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_identity_is_readable_json():
    params = {"k": 2, "band": np.arange(3.0), "big": np.zeros(1000), "nan": float("nan"), "c": 1j, "s": "x"}
    fn = SpectralFunction(scale, params, (Output("amp"),))
    _, identity = computation_token(tool="fit", function=fn, source={"dataset": "/a"})
    text = to_json(identity)
    back = json.loads(text)
    assert back["tool"] == "fit"
    assert back["function"]["qualname"] == "scale"
    assert back["params"]["band"] == {"dtype": "<f8", "shape": [3], "values": [0.0, 1.0, 2.0]}
    assert back["params"]["big"]["sha256"] == digest(np.zeros(1000))
    assert back["params"]["nan"] == "nan"
    assert readable({"t": (1, 2)}) == {"t": [1, 2]}


# ---------------------------------------------------------------------------
# NumPy scalars by dtype: np.float64(1.0) is not 1.0 (NumPy 2 promotion computes other numbers)


@pytest.mark.parametrize(
    ("numpy_value", "python_value"),
    [
        (np.float64(1.0), 1.0),
        (np.int64(1), 1),
        (np.bool_(True), True),
        (np.complex128(1j), 1j),
        (np.str_("a"), "a"),
        (np.bytes_(b"a"), b"a"),
    ],
)
def test_numpy_scalars_differ_from_the_python_values_they_subclass_or_equal(numpy_value, python_value):
    assert numpy_value == python_value
    assert digest(numpy_value) != digest(python_value)
    assert digest([numpy_value]) != digest([python_value])
    assert digest({"k": numpy_value}) != digest({"k": python_value})
    assert digest(numpy_value) == digest(type(numpy_value)(python_value))  # still stable by value


def test_numpy_scalars_of_different_dtypes_differ():
    ones = [1.0, np.float16(1), np.float32(1), np.float64(1), np.longdouble(1), 1, np.int32(1), np.int64(1)]
    assert len({digest(v) for v in ones}) == len(ones)
    assert digest(np.float64(1.0)) != digest(np.float64(2.0))


def test_tokens_of_numpy_and_python_parameters_differ():
    def token(k):
        fn = SpectralFunction(scale, {"k": k}, (Output("amp", (), "f8"),))
        return computation_token(tool="scale", function=fn, source={"dataset": "/a"})

    (python, _), (numpy, identity) = token(1.0), token(np.float64(1.0))
    assert python != numpy
    assert identity["params"]["k"] == {"dtype": "<f8", "shape": [], "values": 1.0}
    assert identity["format_version"] >= 2  # tokens of format 1 conflated the two: they never match now


def summed(spectrum, k):
    """float32 spectrum × k: float32 products for a Python float, float64 for np.float64 (NumPy 2)."""
    return float((spectrum * k).sum())


def test_a_stored_result_for_a_python_float_is_not_returned_for_np_float64(write_usid, tmp_path):
    source = write_usid(dtype="f4")
    data = lazyusid.open_usid(source.path)
    store = os.fspath(tmp_path / "results.h5")
    spectra = source.data_2d
    k = 1 / 3
    loops = {
        kind: np.array([float((s * value).sum()) for s in spectra]).reshape(16, 24)
        for kind, value in (("python", k), ("numpy", np.float64(k)))
    }
    assert not np.array_equal(loops["python"], loops["numpy"])  # the two really compute other numbers

    first = lazyusid.map_spectra(data, summed, params={"k": k}, store=store, cores=1, progress=False)
    np.testing.assert_array_equal(first.values, loops["python"])
    second = lazyusid.map_spectra(
        data, summed, params={"k": np.float64(k)}, store=store, cores=1, progress=False
    )
    assert second.attrs["usid_token"] != first.attrs["usid_token"]
    assert second.attrs["usid_rows_computed"] == 16 * 24
    np.testing.assert_array_equal(second.values, loops["numpy"])


# ---------------------------------------------------------------------------
# content fingerprint of a file-backed input


def write_dataset(path, values, **kwargs) -> str:
    with h5py.File(path, "a") as f:
        if "d" in f:
            del f["d"]
        f.create_dataset("d", data=values, **kwargs)
    return os.fspath(path)


def rewrite_in_place(path, row, value) -> None:
    with h5py.File(path, "r+") as f:
        f["d"][row] = value


def test_fingerprint_sees_a_change_in_sampled_rows(tmp_path):
    values = np.arange(1000 * 3, dtype="f4").reshape(1000, 3)
    path = write_dataset(tmp_path / "a.h5", values)
    before = content_fingerprint(path, "/d")
    assert len(before) == 64 and content_fingerprint(path, "d") == before
    rows = sampled_rows(1000)
    assert rows[0] == 0 and rows[-1] == 999 and 60 <= len(rows) <= 70
    assert np.all(np.diff(rows) > 0)
    seen = {before}
    for row in (0, 999, int(rows[len(rows) // 2])):
        rewrite_in_place(path, row, -1.0)
        now = content_fingerprint(path, "/d")
        assert now not in seen  # recomputed: not the memo of the old file
        seen.add(now)


def test_fingerprint_cannot_see_a_change_confined_to_unsampled_rows(tmp_path):
    """The documented limit (docs/checkpoints.md): only the sampled rows are read."""
    values = np.zeros((1000, 3), dtype="f4")
    path = write_dataset(tmp_path / "a.h5", values)
    before = content_fingerprint(path, "/d")
    unsampled = sorted(set(range(1000)) - set(sampled_rows(1000).tolist()))[5]
    rewrite_in_place(path, unsampled, 7.0)
    assert content_fingerprint(path, "/d") == before


def test_fingerprint_covers_shape_dtype_and_storage_layout(tmp_path):
    values = np.random.default_rng(0).standard_normal((50, 8)).astype("f4")
    variants = {
        "contiguous": ("a.h5", values, {}),
        "chunked": ("b.h5", values, {"chunks": (10, 8)}),
        "other chunks": ("c.h5", values, {"chunks": (5, 8)}),
        "gzip": ("d.h5", values, {"chunks": (10, 8), "compression": "gzip"}),
        "gzip 9": ("e.h5", values, {"chunks": (10, 8), "compression": "gzip", "compression_opts": 9}),
        "float64": ("f.h5", values.astype("f8"), {}),
        "transposed shape": ("g.h5", values.reshape(8, 50), {}),
    }
    prints = {
        k: content_fingerprint(write_dataset(tmp_path / f, v, **kw), "/d")
        for k, (f, v, kw) in variants.items()
    }
    assert len(set(prints.values())) == len(prints), prints
    # the same content and layout in another file: the same fingerprint (the path is identified apart)
    assert content_fingerprint(write_dataset(tmp_path / "copy.h5", values), "/d") == prints["contiguous"]


def test_fingerprint_of_small_odd_datasets(tmp_path):
    cases = [np.zeros((0, 4)), np.arange(3.0), np.float32(2.5), np.zeros((1, 2, 3), "c8")]
    prints = [content_fingerprint(write_dataset(tmp_path / f"{i}.h5", v), "/d") for i, v in enumerate(cases)]
    assert len(set(prints)) == len(prints)
    with pytest.raises(KeyError):
        content_fingerprint(write_dataset(tmp_path / "x.h5", np.zeros(2)), "/missing")


def test_fingerprint_of_a_compressed_dataset_sees_sampled_rows_and_every_chunk_column(tmp_path):
    values = np.random.default_rng(1).standard_normal((400, 12)).astype("f4")
    path = write_dataset(tmp_path / "z.h5", values, chunks=(16, 5), compression="gzip")
    seen = {content_fingerprint(path, "/d")}
    rows = sampled_rows(400)
    for row, col in ((0, 0), (399, 11), (int(rows[30]), 7)):
        with h5py.File(path, "r+") as f:
            f["d"][row, col] += 1
        now = content_fingerprint(path, "/d")
        assert now not in seen
        seen.add(now)
    # a dataset with chunks never written (the fill value) has a fingerprint too
    with h5py.File(path, "a") as f:
        f.create_dataset("sparse", shape=(400, 12), dtype="f4", chunks=(16, 12), compression="gzip")
        f["sparse"][:16] = 1
    assert content_fingerprint(path, "/sparse") not in seen
