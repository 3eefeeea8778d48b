"""modelpress.runtime.feeds: dims binding, every dtype, determinism, refusals."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.runtime import feeds
from modelpress.runtime.feeds import DEFAULT_DIM, input_specs, random_feeds

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 3, seq] x, int64[batch] ids, float[?, 2] u) => (float[batch, 3, seq] y) {
    y = Identity(x)
}
"""

DTYPES = {
    "float": np.float32,
    "float16": np.float16,
    "double": np.float64,
    "bfloat16": ml_dtypes.bfloat16,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "bool": np.bool_,
    "string": np.object_,
}


def _identity(dtype: str, dims: str = "[2, 3]") -> ir.Model:
    return io.from_text(
        f"""
        <ir_version: 9, opset_import: ["" : 21]>
        g ({dtype}{dims} x) => ({dtype}{dims} y) {{ y = Identity(x) }}
        """
    )


def test_default_binds_every_dynamic_dim():
    specs = input_specs(io.from_text(DYNAMIC))
    assert specs == {
        "x": (np.dtype(np.float32), (DEFAULT_DIM, 3, DEFAULT_DIM)),
        "ids": (np.dtype(np.int64), (DEFAULT_DIM,)),
        "u": (np.dtype(np.float32), (DEFAULT_DIM, 2)),
    }


def test_dims_bound_by_name_and_star():
    specs = input_specs(io.from_text(DYNAMIC), {"batch": 5, "*": 7})
    assert specs["x"][1] == (5, 3, 7)
    assert specs["ids"][1] == (5,)
    assert specs["u"][1] == (7, 2)  # the unnamed dim follows "*"


def test_dims_bound_by_name_only_leave_others_at_default():
    specs = input_specs(io.from_text(DYNAMIC), {"seq": 4})
    assert specs["x"][1] == (DEFAULT_DIM, 3, 4)


def test_dims_bound_to_zero_give_empty_feeds():
    feed = random_feeds(io.from_text(DYNAMIC), dim_values={"batch": 0})
    assert feed["x"].shape == (0, 3, DEFAULT_DIM)


def test_negative_static_dim_is_treated_as_dynamic():
    model = _identity("float")
    model.graph.inputs[0].shape = ir.Shape([-1, 3])
    assert input_specs(model, {"*": 4})["x"][1] == (4, 3)


def test_initializer_backed_inputs_are_not_fed():
    model = io.from_text(DYNAMIC)
    ids = model.graph.inputs[1]
    ids.const_value = ir.tensor(np.zeros(2, np.int64), name="ids")
    model.graph.initializers["ids"] = ids
    assert set(input_specs(model)) == {"x", "u"}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_random_feeds_cover_every_dtype(dtype):
    feed = random_feeds(_identity(dtype), seed=3)["x"]
    assert feed.dtype == np.dtype(DTYPES[dtype])
    assert feed.shape == (2, 3)
    if dtype == "string":
        assert all(isinstance(item, str) for item in feed.ravel())


def test_scalar_string_input_is_an_array():
    feed = random_feeds(_identity("string", ""))["x"]
    assert isinstance(feed, np.ndarray)
    assert feed.shape == ()
    assert feed.dtype == object


@pytest.mark.parametrize("dtype", ["int8", "int64", "uint8"])
def test_integers_are_small_non_negative_indices(dtype):
    feed = random_feeds(_identity(dtype, "[1000]"), int_high=5)["x"]
    assert feed.min() >= 0
    assert feed.max() < 5


def test_same_seed_same_feeds_other_seed_other_feeds():
    model = io.from_text(DYNAMIC)
    first, again, other = random_feeds(model, 0), random_feeds(model, 0), random_feeds(model, 1)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["x"], other["x"])


def test_non_tensor_input_is_refused():
    model = io.from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (seq(float[2]) s) => (float[2] y) { y = SequenceAt(s, i) }
        """
    )
    with pytest.raises(UsageError, match=r"input 's' has type .*not a tensor.*pass feeds explicitly"):
        input_specs(model)


def test_unknown_rank_is_refused():
    model = _identity("float")
    model.graph.inputs[0].shape = None
    with pytest.raises(UsageError, match="input 'x' has no shape"):
        random_feeds(model)


def test_absurd_static_dims_are_refused_before_allocating():
    model = _identity("float", "[1099511627776, 1099511627776]")
    with pytest.raises(UsageError, match=r"input 'x' would have shape .* over the .* cap"):
        random_feeds(model)


def test_absurd_bound_dims_are_refused(monkeypatch):
    monkeypatch.setattr(feeds, "MAX_FEED_ELEMENTS", 100)
    with pytest.raises(UsageError, match="bind its dynamic dims smaller"):
        random_feeds(io.from_text(DYNAMIC), dim_values={"batch": 50})


@pytest.mark.parametrize("size", [-1, 2.5, "8"])
def test_bad_bound_sizes_are_refused(size):
    with pytest.raises(UsageError, match="dynamic dim 'batch' bound to"):
        input_specs(io.from_text(DYNAMIC), {"batch": size})
