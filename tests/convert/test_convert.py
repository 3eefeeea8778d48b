"""`convert`: PyTorch and scikit-learn to ONNX, verified against the source framework."""

from __future__ import annotations

import math

import joblib
import numpy as np
import onnx_ir as ir
import pytest
import torch

from modelpress.convert import InputSpec, _verify, convert_file, load_source, parse_input_spec
from modelpress.errors import ConversionError, ModelLoadError, NumericMismatchError, UsageError
from modelpress.ir import io
from modelpress.runtime.compare import run_model
from tests.convert import _models

M = "tests.convert._models"


def _dims(value: ir.Value) -> list:
    return [d if isinstance(d, int) else d.value for d in value.shape]


# --- example input specs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x=1x3x224x224", InputSpec("x", (1, 3, 224, 224), "float32")),
        ("input_ids=2x16:int64", InputSpec("input_ids", (2, 16), "int64")),
        ("mask=4:bool", InputSpec("mask", (4,), "bool")),
        ("t=scalar:float64", InputSpec("t", (), "float64")),
    ],
)
def test_parse_input_spec(text, expected):
    assert parse_input_spec(text) == expected
    assert parse_input_spec(str(expected)) == expected


@pytest.mark.parametrize("text", ["x", "x=", "=1x3", "x=1x0x3", "x=1x3:complex64", "x=1,3", "x=-1x3"])
def test_parse_input_spec_rejects_malformed_specs(text):
    with pytest.raises(UsageError, match="example input"):
        parse_input_spec(text)


# --- PyTorch ----------------------------------------------------------------------------


def test_torch_factory_round_trip_with_dynamic_batch(tmp_path):
    out = tmp_path / "cnn.onnx"
    report = convert_file(f"{M}:small_cnn", out, example_inputs=["x=1x3x16x16"])

    assert report.kind == "torch" and report.framework.startswith("torch ")
    # Two seeds at the example batch and one at batch 2: all within 1e-4 of torch.
    assert [c.feed for c in report.checks] == ["seed 0, batch 1", "seed 1, batch 1", "seed 2, batch 2"]
    assert all(c.ok and c.max_rel <= 1e-4 for c in report.checks)
    model = io.load(out)
    assert _dims(model.graph.inputs[0]) == ["batch", 3, 16, 16]
    assert _dims(model.graph.outputs[0]) == ["batch", 5]
    assert "BatchNormalization" not in report.ops  # do_constant_folding folded it into the Conv

    # Independently of the converter's own check: a batch size it never tried.
    x = np.random.default_rng(7).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = _models.small_cnn().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_model(out, {"x": x})["output"], expected, rtol=1e-4, atol=1e-5)


def test_static_batch_keeps_the_example_shape(tmp_path):
    report = convert_file(
        f"{M}:small_cnn", tmp_path / "m.onnx", example_inputs=["x=2x3x8x8"], dynamic_batch=False
    )
    assert _dims(io.load(tmp_path / "m.onnx").graph.inputs[0]) == [2, 3, 8, 8]
    assert len(report.checks) == 2 and not report.dynamic_batch


def test_torch_two_inputs_dict_outputs_and_integer_output(tmp_path):
    out = tmp_path / "two.onnx"
    report = convert_file(f"{M}:two_heads", out, example_inputs=["ids=2x7:int64", "feats=2x6"])
    assert [o.name for o in report.outputs] == ["score", "argmax"]
    assert [i.dtype for i in report.inputs] == ["int64", "float"]
    # The extra batch is 3 because the example batch is already 2.
    assert report.checks[-1].feed == "seed 2, batch 3"
    argmax_checks = [c for c in report.checks if c.output == "argmax"]
    assert argmax_checks and all(c.tolerance == "exact" and c.ok for c in argmax_checks)


def test_output_names_override_and_count_mismatch(tmp_path):
    report = convert_file(
        f"{M}:two_heads",
        tmp_path / "a.onnx",
        example_inputs=["ids=1x3:int64", "feats=1x6"],
        output_names=["s", "k"],
    )
    assert [o.name for o in report.outputs] == ["s", "k"]
    with pytest.raises(UsageError, match="1 output name"):
        convert_file(
            f"{M}:two_heads",
            tmp_path / "b.onnx",
            example_inputs=["ids=1x3:int64", "feats=1x6"],
            output_names=["s"],
        )


def test_saved_module_needs_the_trust_flag(tmp_path):
    saved = tmp_path / "cnn.pt"
    torch.save(_models.small_cnn(), saved)
    out = tmp_path / "cnn.onnx"

    with pytest.raises(UsageError, match="--trust-pickle") as error:
        convert_file(saved, out, example_inputs=["x=1x3x8x8"])
    assert "runs any code" in str(error.value)
    assert not out.exists()

    report = convert_file(saved, out, example_inputs=["x=1x3x8x8"], trust_pickle=True)
    assert report.kind == "torch" and all(c.ok for c in report.checks) and out.exists()


@pytest.mark.parametrize("trust", [False, True])
def test_state_dict_file_is_named_as_such(tmp_path, trust):
    saved = tmp_path / "weights.pth"
    torch.save(_models.small_cnn().state_dict(), saved)
    with pytest.raises(UsageError, match="state dict"):
        convert_file(saved, tmp_path / "m.onnx", example_inputs=["x=1x3x8x8"], trust_pickle=trust)


def test_unsupported_operator_is_named_with_a_hint(tmp_path, capfd):
    out = tmp_path / "svd.onnx"
    with pytest.raises(ConversionError) as error:
        convert_file(f"{M}:svd", out, example_inputs=["x=2x3x3"])
    message = str(error.value)
    assert "'aten::linalg_svd'" in message and "opset 17" in message
    assert "register_custom_op_symbolic" in message
    assert error.value.exit_code == 8
    assert not out.exists()
    # torch dumps the traced graph on stdout when the export fails; the library keeps it quiet.
    captured = capfd.readouterr()
    assert "Torch IR graph" not in captured.out + captured.err


def test_batch_size_frozen_by_tracing_is_caught(tmp_path):
    out = tmp_path / "frozen.onnx"
    with pytest.raises(
        NumericMismatchError, match=r"seed 2, batch 2\): shape \(1, 3\) != source shape \(2, 3\)"
    ):
        convert_file(f"{M}:frozen_batch", out, example_inputs=["x=1x3"])
    assert not out.exists()
    # With a static batch there is nothing to get wrong.
    convert_file(f"{M}:frozen_batch", out, example_inputs=["x=1x3"], dynamic_batch=False)
    assert out.exists()


def test_graph_that_fails_on_onnxruntime_at_another_batch(tmp_path):
    with pytest.raises(ConversionError, match=r"batch 2.*--static-batch"):
        convert_file(f"{M}:frozen_reshape", tmp_path / "r.onnx", example_inputs=["x=1x3"])


def test_failed_conversion_leaves_an_existing_destination_untouched(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(NumericMismatchError):
        convert_file(f"{M}:frozen_batch", out, example_inputs=["x=1x3"])
    assert out.read_bytes() == b"previous"


def test_torch_source_errors(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(UsageError, match="needs its example inputs"):
        convert_file(f"{M}:small_cnn", out)
    with pytest.raises(UsageError, match=r"failed on the example inputs \(x \[1, 4\] float32\)"):
        convert_file(f"{M}:small_cnn", out, example_inputs=["x=1x4"])
    with pytest.raises(UsageError, match="more than once"):
        convert_file(f"{M}:small_cnn", out, example_inputs=["x=1x3x8x8", "x=1x3x8x8"])


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("no/such/file.pt", "no such file"),
        ("tests.convert.no_such_module:f", "cannot import module"),
        (f"{M}:no_such_factory", "has no callable 'no_such_factory'"),
        (f"{M}:not_a_model", "neither a torch.nn.Module nor a scikit-learn estimator"),
        (f"{M}:broken_factory", "the factory raised RuntimeError: the factory is broken"),
    ],
)
def test_bad_sources(tmp_path, source, match):
    with pytest.raises(UsageError, match=match):
        load_source(source)


def test_unknown_file_type_and_onnx_passthrough(tmp_path):
    weird = tmp_path / "model.h5"
    weird.write_bytes(b"x")
    with pytest.raises(UsageError, match=r"unknown model file type '\.h5'"):
        load_source(weird)
    first = tmp_path / "first.onnx"
    convert_file(f"{M}:small_cnn", first, example_inputs=["x=1x3x8x8"])
    report = convert_file(first, tmp_path / "copy.onnx")
    assert report.kind == "onnx" and report.checks == []
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError):
        load_source(broken)


# --- scikit-learn -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


def test_sklearn_logistic_regression_factory(tmp_path, digits):
    out = tmp_path / "lr.onnx"
    report = convert_file(f"{M}:digits_logistic_regression", out)
    assert report.kind == "sklearn" and "skl2onnx" in report.framework
    assert [o.name for o in report.outputs] == ["label", "probabilities"]
    by_output = {c.output: c for c in report.checks}
    assert by_output["label"].tolerance == "exact"
    assert by_output["probabilities"].tolerance == "max abs 1e-05"
    assert all(c.ok for c in report.checks)
    assert _dims(io.load(out).graph.inputs[0]) == [None, 64]

    # Real digits, not the random rows of the check: every label equal, probabilities close.
    x, _ = digits
    estimator = _models.digits_logistic_regression()
    outputs = run_model(out, {"input": (x / 16.0).astype(np.float32)})
    np.testing.assert_array_equal(outputs["label"], estimator.predict(x / 16.0))
    np.testing.assert_allclose(outputs["probabilities"], estimator.predict_proba(x / 16.0), atol=1e-5)


def test_sklearn_random_forest_from_joblib_needs_trust(tmp_path, digits):
    saved = tmp_path / "forest.joblib"
    joblib.dump(_models.digits_random_forest(), saved)
    out = tmp_path / "forest.onnx"
    with pytest.raises(UsageError, match="--trust-pickle"):
        convert_file(saved, out)
    report = convert_file(saved, out, trust_pickle=True, example_inputs=["pixels=4x64"])
    assert report.inputs[0].name == "pixels" and all(c.ok for c in report.checks)

    x, _ = digits
    outputs = run_model(out, {"pixels": x.astype(np.float32)})
    np.testing.assert_array_equal(outputs["label"], joblib.load(saved).predict(x))


def test_sklearn_errors(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(UsageError, match="not fitted"):
        convert_file(f"{M}:unfitted_ridge", out)
    with pytest.raises(UsageError, match="has 10 features, the estimator was fitted on 64"):
        convert_file(f"{M}:digits_random_forest", out, example_inputs=["input=1x10"])
    with pytest.raises(UsageError, match="one float32 matrix"):
        convert_file(f"{M}:digits_random_forest", out, example_inputs=["input=1x64:int64"])
    with pytest.raises(UsageError, match="takes one input"):
        convert_file(f"{M}:digits_random_forest", out, example_inputs=["a=1x64", "b=1x64"])


def test_sklearn_estimator_without_converter_is_named(tmp_path):
    from sklearn.base import BaseEstimator, RegressorMixin

    class Unknown(RegressorMixin, BaseEstimator):
        def fit(self, x, y):
            self.n_features_in_ = x.shape[1]
            return self

        def predict(self, x):
            return x[:, 0]

    import sys
    import types

    module = types.ModuleType("custom_estimators_for_test")
    module.make = lambda: Unknown().fit(np.zeros((2, 3)), np.zeros(2))
    sys.modules["custom_estimators_for_test"] = module
    try:
        with pytest.raises(ConversionError, match=r"no converter for .*Unknown.*update_registered_converter"):
            convert_file("custom_estimators_for_test:make", tmp_path / "u.onnx")
    finally:
        del sys.modules["custom_estimators_for_test"]


# --- the checks themselves --------------------------------------------------------------


def test_label_check_accepts_only_ties():
    ref, cand = np.array([0, 1, 2]), np.array([0, 2, 2])
    tie = np.array([[1.0, 0, 0], [0, 0.5, 0.5], [0, 0, 1]])
    assert _verify.check_labels("label", "f", ref, cand, ref_scores=tie, tie_tolerance=1e-5).ok
    clear = np.array([[1.0, 0, 0], [0, 0.9, 0.1], [0, 0, 1]])
    check = _verify.check_labels("label", "f", ref, cand, ref_scores=clear, tie_tolerance=1e-5)
    assert not check.ok and check.index == (1,) and "1 of 3 labels differ" in check.note


def test_close_check_rules():
    ok = _verify.check_close("y", "f", np.array([1.0, -2.0]), np.array([1.0, -2.0001], np.float32), rtol=1e-4)
    assert ok.ok and math.isclose(ok.max_rel, 5e-5, rel_tol=1e-2)
    bad = _verify.check_close("y", "f", np.array([0.5]), np.array([0.5001]), atol=1e-5)
    assert not bad.ok and bad.tolerance == "max abs 1e-05"
    reshaped = _verify.check_close("y", "f", np.ones(3), np.ones((3, 1)), rtol=1e-4)
    assert reshaped.ok and "read as (3, 1)" in reshaped.note
    ints = _verify.check_close("k", "f", np.array([1, 2]), np.array([1, 3]), rtol=1e-4)
    assert not ints.ok and ints.tolerance == "exact" and ints.index == (1,)
    nan = _verify.check_close("y", "f", np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), rtol=0.0)
    assert nan.ok
    with pytest.raises(NumericMismatchError, match="output 'k'"):
        _verify.raise_on_failure([ok, ints], source="src", framework="torch")
