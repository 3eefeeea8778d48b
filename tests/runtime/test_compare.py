"""modelpress.runtime.compare and session: error measures, every dtype, mismatches, refusals."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import InvalidModelError, ModelLoadError, NumericMismatchError, UsageError
from modelpress.ir import io
from modelpress.runtime.compare import Comparison, OutputDiff, compare_models, run_model
from modelpress.runtime.session import create_session

X = np.arange(6, dtype=np.float32).reshape(2, 3)


def _model(body: str, inputs: str = "float[2, 3] x", outputs: str = "float[2, 3] y", **consts) -> ir.Model:
    model = io.from_text(
        f"""
        <ir_version: 9, opset_import: ["" : 21]>
        g ({inputs}) => ({outputs}) {{ {body} }}
        """
    )
    for name, array in consts.items():
        if array.dtype == object:
            tensor = ir.StringTensor(
                np.array([s.encode() for s in array.ravel()]), shape=ir.Shape(array.shape), name=name
            )
        else:
            tensor = ir.tensor(array, name=name)
        value = ir.Value(name=name, const_value=tensor)
        model.graph.initializers[name] = value
        # Re-point the node inputs that the text parser created for the constant.
        for node in model.graph:
            for index, used in enumerate(node.inputs):
                if used is not None and used.name == name and used is not value:
                    node.replace_input_with(index, value)
    return model


def _add(c: np.ndarray) -> ir.Model:
    return _model("y = Add(x, c)", c=c.astype(np.float32))


def _mul(c: np.ndarray) -> ir.Model:
    return _model("y = Mul(x, c)", c=c.astype(np.float32))


def _only(comparison: Comparison) -> OutputDiff:
    assert len(comparison.diffs) == 1
    return comparison.diffs[0]


DTYPES = [
    "float",
    "float16",
    "double",
    "bfloat16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
    "string",
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_identical_models_have_zero_error_for_every_dtype(dtype):
    model = _model("y = Identity(x)", f"{dtype}[batch, 3] x", f"{dtype}[batch, 3] y")
    comparison = compare_models(model, model.clone(), seeds=(0, 1), dim_values={"batch": 4})
    assert [(d.name, d.seed) for d in comparison.diffs] == [("y", 0), ("y", 1)]
    assert comparison.max_abs == 0.0
    assert comparison.max_rel == 0.0
    comparison.check(0.0)


def test_bfloat16_outputs_come_back_as_bfloat16():
    model = _model("y = Cast<to = 16>(x)", outputs="bfloat16[2, 3] y")
    outputs = run_model(model, {"x": X})
    assert outputs["y"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(outputs["y"].astype(np.float32), X)


def test_bfloat16_difference_is_measured():
    reference = _model("y = Cast<to = 16>(x)", outputs="bfloat16[2, 3] y")
    candidate = _model(
        "d = Add(x, c)\n y = Cast<to = 16>(d)",
        outputs="bfloat16[2, 3] y",
        c=np.array([[0, 0, 0], [0, 0.5, 0]], np.float32),
    )
    diff = _only(compare_models(reference, candidate, feeds={"x": X}))
    assert (diff.max_abs, diff.max_rel, diff.index) == (0.5, 0.1, (1, 1))


def test_known_difference_gives_exact_errors_and_index():
    delta = np.zeros((2, 3), np.float32)
    delta[1, 2] = 0.5
    diff = _only(compare_models(_add(np.zeros((2, 3))), _add(delta), feeds={"x": X}))
    assert diff.name == "y"
    assert diff.seed is None
    assert diff.max_abs == 0.5
    assert diff.max_rel == 0.5 / 5.0  # relative to the largest |reference| of the output
    assert diff.index == (1, 2)
    assert diff.note == ""


def test_random_feeds_record_their_seed():
    comparison = compare_models(_add(np.zeros((2, 3))), _add(np.full((2, 3), 1e-3)), seeds=(4, 5))
    assert [d.seed for d in comparison.diffs] == [4, 5]
    assert all(d.max_abs == pytest.approx(1e-3, rel=1e-3) for d in comparison.diffs)


def test_nan_at_the_same_positions_counts_as_equal():
    x = X.copy()
    x[0, 1] = np.nan
    diff = _only(compare_models(_mul(np.ones((2, 3))), _mul(np.ones((2, 3))), feeds={"x": x}))
    assert (diff.max_abs, diff.max_rel) == (0.0, 0.0)


def test_nan_at_different_positions_is_an_infinite_error():
    c = np.ones((2, 3))
    c[1, 1] = np.nan
    diff = _only(compare_models(_mul(np.ones((2, 3))), _mul(c), feeds={"x": X}))
    assert math.isinf(diff.max_abs)
    assert math.isinf(diff.max_rel)
    assert diff.index == (1, 1)
    assert "NaN at different positions" in diff.note


def test_equal_infinities_match_and_inf_against_finite_does_not():
    x = X.copy()
    x[0, 2] = np.inf
    same = _only(compare_models(_mul(np.ones((2, 3))), _mul(np.ones((2, 3))), feeds={"x": x}))
    assert same.max_abs == 0.0
    c = np.ones((2, 3))
    c[1, 0] = np.inf
    different = _only(compare_models(_mul(np.ones((2, 3))), _mul(c), feeds={"x": X}))
    assert math.isinf(different.max_abs)
    assert different.index == (1, 0)


def test_shape_mismatch():
    candidate = _model("y = Transpose<perm = [1, 0]>(x)", outputs="float[3, 2] y")
    diff = _only(compare_models(_model("y = Identity(x)"), candidate, feeds={"x": X}))
    assert math.isinf(diff.max_rel)
    assert diff.note == "shape (3, 2) != (2, 3)"


def test_dtype_mismatch():
    candidate = _model("y = Cast<to = 11>(x)", outputs="double[2, 3] y")
    diff = _only(compare_models(_model("y = Identity(x)"), candidate, feeds={"x": X}))
    assert math.isinf(diff.max_rel)
    assert diff.note == "dtype float64 != float32"


def test_missing_output():
    candidate = _model("z = Identity(x)", outputs="float[2, 3] z")
    diff = _only(compare_models(_model("y = Identity(x)"), candidate, feeds={"x": X}))
    assert (diff.name, diff.note) == ("y", "output missing from candidate")
    assert math.isinf(diff.max_rel)


def test_integer_outputs_must_match_exactly():
    reference = _model("y = Identity(x)", "int64[2, 3] x", "int64[2, 3] y")
    candidate = _model("y = Add(x, c)", "int64[2, 3] x", "int64[2, 3] y", c=np.array([[0, 0, 0], [0, 1, 0]]))
    diff = _only(compare_models(reference, candidate, seeds=(0,)))
    assert math.isinf(diff.max_rel)
    assert diff.index == (1, 1)
    assert diff.note == "non-float values differ"


def test_string_outputs_differ():
    reference = _model("y = Identity(x)", "string[2] x", "string[2] y")
    feeds = {"x": np.array(["a", "b"], dtype=object)}
    assert _only(compare_models(reference, reference, feeds=feeds)).max_rel == 0.0
    candidate = _model("y = Identity(k)", "string[2] x", "string[2] y", k=np.array(["a", "c"], dtype=object))
    diff = _only(compare_models(reference, candidate, feeds=feeds))
    assert diff.index == (1,)


def test_sequence_outputs_are_compared_element_wise():
    outputs = "seq(float[2, 3]) s"
    reference = _model("s = SequenceConstruct(x, x)", outputs=outputs)
    candidate = _model(
        "d = Add(x, c)\n s = SequenceConstruct(x, d)", outputs=outputs, c=np.full((2, 3), 0.25, np.float32)
    )
    assert _only(compare_models(reference, reference.clone(), feeds={"x": X})).max_abs == 0.0
    diff = _only(compare_models(reference, candidate, feeds={"x": X}))
    assert diff.max_abs == 0.25
    shorter = _model("s = SequenceConstruct(x)", outputs=outputs)
    assert _only(compare_models(reference, shorter, feeds={"x": X})).note == "sequence length differs"


def test_check_raises_naming_the_output_seed_and_errors():
    delta = np.zeros((2, 3), np.float32)
    delta[0, 1] = 1.0
    comparison = compare_models(_add(np.zeros((2, 3))), _add(delta), seeds=(7,))
    assert not comparison.within(1e-4)
    with pytest.raises(NumericMismatchError) as info:
        comparison.check(1e-4, what="the optimized model")
    message = str(info.value)
    assert message.startswith("the optimized model differs from the reference on output 'y' (seed 7)")
    assert "max abs error 1 at index (0, 1)" in message
    comparison.check(1e9)


def test_worst_and_json_pick_the_largest_error_per_output():
    comparison = Comparison(
        [
            OutputDiff("y", 0, 0.1, 0.01, (0,)),
            OutputDiff("y", 1, 0.3, 0.03, (2,)),
            OutputDiff("z", 0, 0.0, 0.0, None),
        ]
    )
    assert comparison.worst()["y"].seed == 1
    assert comparison.max_rel == 0.03
    assert comparison.max_abs == 0.3
    assert comparison.to_json() == [
        {"output": "y", "seed": 1, "max_abs": 0.3, "max_rel": 0.03, "index": [2], "note": ""},
        {"output": "z", "seed": 0, "max_abs": 0.0, "max_rel": 0.0, "index": None, "note": ""},
    ]
    assert Comparison([]).max_rel == 0.0


def test_several_given_feeds():
    feeds = [{"x": X}, {"x": X * 2}]
    comparison = compare_models(_add(np.zeros((2, 3))), _add(np.ones((2, 3))), feeds=feeds)
    assert [d.max_abs for d in comparison.diffs] == [1.0, 1.0]
    assert [d.max_rel for d in comparison.diffs] == [1 / 5, 1 / 10]


def test_models_as_bytes_and_paths(tmp_path):
    path = io.save(_add(np.zeros((2, 3))), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    comparison = compare_models(path, io.to_bytes(_add(np.zeros((2, 3)))), feeds={"x": X})
    assert comparison.max_abs == 0.0


def test_model_loaded_with_external_data_runs_from_another_directory(tmp_path, monkeypatch):
    path = io.save(_add(np.ones((2, 3))), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    outputs = run_model(io.load(path), {"x": X})
    np.testing.assert_array_equal(outputs["y"], X + 1)


def test_large_models_go_through_a_temporary_file(monkeypatch):
    monkeypatch.setattr(io, "PROTOBUF_LIMIT_BYTES", 16)
    outputs = run_model(_add(np.ones((2, 3))), {"x": X})
    np.testing.assert_array_equal(outputs["y"], X + 1)


def test_dynamic_dims_are_bound_for_random_feeds():
    model = _model("y = Identity(x)", "float[batch, 3] x", "float[batch, 3] y")
    comparison = compare_models(model, model, dim_values={"batch": 0})
    assert comparison.max_abs == 0.0


def test_missing_feed_is_a_usage_error():
    with pytest.raises(UsageError, match=r"no feed for input.*x"):
        compare_models(_add(np.zeros((2, 3))), _add(np.zeros((2, 3))), feeds={"other": X})


def test_feed_of_the_wrong_dtype_is_reported():
    with pytest.raises(InvalidModelError, match="onnxruntime failed to run the model"):
        run_model(_add(np.zeros((2, 3))), {"x": X.astype(np.int32)})


def test_model_failing_at_run_time_is_reported():
    broken = _model("y = Reshape(x, s)", s=np.array([4, 4], np.int64))
    with pytest.raises(InvalidModelError, match="onnxruntime failed to run"):
        compare_models(_model("y = Identity(x)"), broken, feeds={"x": X})


def test_session_refuses_garbage_and_unknown_levels(tmp_path):
    with pytest.raises(ModelLoadError, match="<bytes>: onnxruntime cannot load the model"):
        create_session(b"not a model")
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=f"{path}: onnxruntime cannot load"):
        create_session(path)
    with pytest.raises(UsageError, match="unknown onnxruntime optimization level 'fast'"):
        create_session(_add(np.zeros((2, 3))), level="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "layout", "all"])
def test_every_optimization_level_runs(level):
    outputs = run_model(_add(np.ones((2, 3))), {"x": X}, level=level, threads=1)
    np.testing.assert_array_equal(outputs["y"], X + 1)
