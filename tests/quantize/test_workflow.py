"""quantize_model / quantize_file: numerics in units of the output scale, reports, refusals."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import CalibrationError, PreconditionError, UsageError
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.quantize import QuantSpec, quantize_file, quantize_model
from modelpress.runtime.compare import run_model
from tests.quantize import builders


def _output_scale(model: ir.Model, name: str) -> float:
    """The scale of the DequantizeLinear that produces graph output ``name``."""
    (value,) = [v for v in model.graph.outputs if v.name == name]
    dequantize = value.producer()
    assert dequantize.op_type == "DequantizeLinear"
    return float(dequantize.inputs[1].const_value.numpy())


@pytest.mark.parametrize("activation_dtype", ["uint8", "int8"])
def test_fused_integer_kernels_match_the_qdq_reference_within_one_output_scale(activation_dtype):
    """STYLE §4 quantization tolerance (PyTorch pt2e test_representation): the model as
    written (QDQ, simulated quantization at ORT_DISABLE_ALL) against the integer kernels
    onnxruntime runs at ORT_ENABLE_ALL; they differ by requantization rounding only."""
    model = builders.small_cnn()
    quantized, _ = quantize_model(
        model, QuantSpec(activation_dtype=activation_dtype), samples=builders.samples(model, count=4)
    )
    scale = _output_scale(quantized, "y")
    for feeds in builders.samples(model, count=4, seed=9):
        reference = run_model(quantized, feeds, level="disable")["y"]
        integer = run_model(quantized, feeds, level="all")["y"]
        assert np.abs(integer - reference).max() <= scale * 1.0001


def test_small_cnn_error_against_float_in_units_of_the_output_scale():
    """Against the float model the error also carries every earlier rounding, amplified by the
    weights: even one 3x3 Conv on N(0, 1) inputs reaches 2.7 output scales at its worst element
    (onnxruntime's quantizer gives the very same outputs, see test_ort_parity). The bound
    that holds layer count aside is on the RMS error: each of the model's rounding points adds
    about scale / sqrt(12)."""
    model = builders.small_cnn()
    data = builders.samples(model, count=8, batch=4)
    quantized, report = quantize_model(model, QuantSpec(), samples=data)
    scale = _output_scale(quantized, "y")
    errors = np.concatenate(
        [(run_model(quantized, f, level="all")["y"] - run_model(model, f)["y"]).ravel() for f in data]
    )
    assert np.sqrt(np.mean(errors**2)) <= 1.0 * scale
    assert np.abs(errors).max() <= 6.0 * scale
    assert report.calibration_samples == 32


def test_quantize_file_reports_sizes_ops_kernels_and_errors(tmp_path):
    source = io.save(builders.classifier(), tmp_path / "float.onnx")
    data = builders.samples(builders.classifier(), count=6)
    report = quantize_file(source, tmp_path / "q.onnx", QuantSpec(calibrator="entropy"), samples=data)
    assert (tmp_path / "q.onnx").exists()
    assert report.op_counts == {
        "Conv": {"quantized": 1, "float": 0},
        "Relu": {"quantized": 1, "float": 0},
        "GlobalAveragePool": {"quantized": 1, "float": 0},
        "Flatten": {"quantized": 1, "float": 0},
        "Gemm": {"quantized": 1, "float": 0},
        "MatMul": {"quantized": 1, "float": 0},
    }
    assert report.inserted == {
        "activation_qdq_pairs": 4,
        "int8_weights": 3,
        "int32_biases": 2,
        "clipped_bias_values": 0,
    }
    assert report.weight_bytes_after < report.weight_bytes_before / 2  # tiny model: scales weigh in
    assert report.integer_kernels["com.microsoft::QGemm"] == 1
    assert report.calibration_samples == report.eval_samples == 24
    errors = {e.name: e for e in report.errors}
    assert set(errors) == {"logits", "embedding"}
    assert errors["logits"].top1_agreement is not None and errors["logits"].top1_agreement >= 0.9
    assert 0 < errors["logits"].max_rel < 0.1
    json_report = report.to_json()
    assert json_report["spec"]["calibrator"] == "entropy" and json_report["errors"][0]["output"] == "logits"


def test_weight_only_needs_no_data_and_is_measured_on_random_feeds(tmp_path):
    source = io.save(builders.classifier(), tmp_path / "float.onnx")
    report = quantize_file(source, tmp_path / "w.onnx", QuantSpec(mode="weight-only"))
    assert report.eval_data.startswith("random feeds") and report.eval_samples == 6
    assert report.calibration_samples == 0
    assert "QuantizeLinear" not in report.ops_after
    assert all(e.max_rel < 0.05 for e in report.errors)


def test_num_samples_caps_calibration(tmp_path):
    source = io.save(builders.conv_relu(), tmp_path / "float.onnx")
    data = builders.samples(builders.conv_relu(), count=5, batch=4)
    report = quantize_file(source, tmp_path / "q.onnx", QuantSpec(), samples=data, num_samples=6)
    assert report.calibration_samples == 6


def test_the_input_model_is_not_modified():
    model = builders.small_cnn()
    before = io.to_bytes(model)
    quantize_model(model, QuantSpec(), samples=builders.samples(model))
    assert io.to_bytes(model) == before


def test_an_already_quantized_model_is_refused(tmp_path):
    model = builders.conv_relu()
    quantized, _ = quantize_model(model, QuantSpec(), samples=builders.samples(model))
    with pytest.raises(
        PreconditionError, match=r"already quantized: node '.*' is a (QuantizeLinear|DequantizeLinear)"
    ):
        quantize_model(quantized, QuantSpec(), samples=builders.samples(model))


def test_an_old_opset_is_refused_unless_upgraded():
    model = builders.conv_relu(opset=11)
    data = builders.samples(model)
    with pytest.raises(
        PreconditionError, match=r"opset 11; quantization needs opset >= 13 .* --upgrade-opset"
    ):
        quantize_model(model, QuantSpec(), samples=data)
    upgraded, report = quantize_model(model, QuantSpec(), samples=data, upgrade_opset=True)
    assert upgraded.opset_imports[""] == 13 and report.inserted["int8_weights"] == 1


def test_a_model_with_nothing_to_quantize_is_refused():
    b = GraphBuilder(opset=17)
    model = b.build([b.op("Relu", b.input("x", builders.FLOAT, [2]))])
    with pytest.raises(PreconditionError, match="nothing to quantize"):
        quantize_model(model, QuantSpec(), samples=[{"x": np.ones(2, np.float32)}])


def test_static_mode_without_data_and_one_shot_iterators_are_usage_errors(tmp_path):
    source = io.save(builders.conv_relu(), tmp_path / "float.onnx")
    with pytest.raises(UsageError, match="static quantization needs calibration data"):
        quantize_file(source, tmp_path / "q.onnx", QuantSpec())
    with pytest.raises(UsageError, match="re-iterable"):
        quantize_file(
            source, tmp_path / "q.onnx", QuantSpec(), samples=iter(builders.samples(builders.conv_relu()))
        )
    assert not (tmp_path / "q.onnx").exists()


def test_bad_calibration_data_writes_nothing(tmp_path):
    source = io.save(builders.conv_relu(), tmp_path / "float.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    array = np.ones((2, 3, 8, 8), np.float32)
    array[0, 0, 0, 0] = np.nan
    np.save(calib / "a.npy", array)
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        quantize_file(source, tmp_path / "q.onnx", QuantSpec(), calib_dir=calib)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "float.onnx"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"calibrator": "kl"}, "unknown calibrator 'kl'; choose one of: minmax, percentile, entropy, mse"),
        ({"mode": "int4"}, "unknown mode 'int4'"),
        ({"activation_dtype": "int16"}, "unknown activation dtype 'int16'"),
        ({"symmetric_weights": False}, "asymmetric weights are not implemented"),
        ({"op_types": frozenset({"Softmax"})}, r"cannot quantize op type\(s\) Softmax"),
        ({"percentile": 20.0}, "percentile 20.0 must be in"),
    ],
)
def test_bad_specs_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        QuantSpec(**options)
