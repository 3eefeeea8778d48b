"""``modelpress quantize``: options, report, JSON, exit codes, nothing written on failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.ir import io
from tests.quantize import builders


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def model_path(tmp_path):
    return io.save(builders.classifier(), tmp_path / "float.onnx")


@pytest.fixture
def calib(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, feeds in enumerate(builders.samples(builders.classifier(), count=4, batch=4)):
        np.save(folder / f"{i}.npy", feeds["x"])
    return folder


def test_help_lists_the_options():
    result = _run("quantize", "--help")
    assert result.exit_code == 0
    for option in (
        "--mode",
        "--calib",
        "--num-samples",
        "--calibrator",
        "--per-channel",
        "--per-tensor",
        "--activation-type",
        "--reduce-range",
        "--exclude",
        "--upgrade-opset",
        "--json",
    ):
        assert option in result.output
    assert "quantize" in _run("--help").output


def test_static_prints_the_report_and_writes_the_model(model_path, calib, tmp_path):
    out = tmp_path / "q.onnx"
    result = _run("quantize", model_path, "-o", out, "--calib", calib, "--calibrator", "mse")
    assert result.exit_code == 0, result.output
    assert out.exists()
    for text in (
        "--calibrator mse: 16 calibration samples",
        "QGemm 1",
        "QLinearConv 1",
        "MatMulIntegerToFloat 1",
        "weights int8: 3 (per channel)",
        "biases int32: 2",
        "logits",
        "top-1",
        "written:",
    ):
        assert text in result.output, text
    assert io.load(out).graph.outputs[0].name == "logits"


def test_json_report(model_path, calib, tmp_path):
    out = tmp_path / "q.onnx"
    result = _run(
        "quantize",
        model_path,
        "-o",
        out,
        "--calib",
        calib,
        "--num-samples",
        "6",
        "--per-tensor",
        "--activation-type",
        "int8",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["calibration_samples"] == 6 and report["eval_samples"] == 6
    assert report["spec"]["per_channel"] is False and report["spec"]["activation_dtype"] == "int8"
    assert report["output_path"] == str(out)
    assert {e["output"] for e in report["errors"]} == {"logits", "embedding"}
    assert report["integer_kernels"]["com.microsoft::QGemm"] == 1
    assert report["op_counts"]["Conv"] == {"quantized": 1, "float": 0}


def test_weight_only_needs_no_calibration(model_path, tmp_path):
    result = _run("quantize", model_path, "-o", tmp_path / "w.onnx", "--mode", "weight-only", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "weight-only" and "QuantizeLinear" not in report["ops_after"]


def test_excluded_nodes_are_reported(model_path, calib, tmp_path):
    conv = next(n for n in builders.classifier().graph if n.op_type == "Conv").name
    result = _run("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib, "--exclude", conv)
    assert result.exit_code == 0, result.output
    assert f"kept in float: {conv}: excluded by the spec" in result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--calibrator", "kl"], 2, "unknown calibrator 'kl'"),
        (["--mode", "int4"], 2, "unknown mode 'int4'"),
        (["--activation-type", "int16"], 2, "unknown activation dtype 'int16'"),
        ([], 2, "static quantization needs calibration data: pass --calib DIR"),
        (["--calib", "MISSING"], 9, "does not exist"),
        (["--calib", "CALIB", "--num-samples", "0"], 9, "give at least 1 sample"),
    ],
)
def test_bad_options_exit_with_their_code_and_write_nothing(model_path, calib, tmp_path, args, code, message):
    args = [str(tmp_path / "missing") if a == "MISSING" else str(calib) if a == "CALIB" else a for a in args]
    out = tmp_path / "q.onnx"
    result = _run("quantize", model_path, "-o", out, *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_nan_in_calibration_data_exits_9(model_path, calib, tmp_path):
    bad = np.load(calib / "0.npy")
    bad[0, 0, 0, 0] = np.inf
    np.save(calib / "0.npy", bad)
    result = _run("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib)
    assert result.exit_code == 9
    assert "CalibrationError" in result.output and "NaN/Inf" in result.output


def test_already_quantized_and_old_opset_models_exit_4(model_path, calib, tmp_path):
    quantized = tmp_path / "q.onnx"
    assert _run("quantize", model_path, "-o", quantized, "--calib", calib).exit_code == 0
    result = _run("quantize", quantized, "-o", tmp_path / "qq.onnx", "--calib", calib)
    assert result.exit_code == 4 and "already quantized" in result.output
    old = io.save(builders.conv_relu(opset=11), tmp_path / "old.onnx")
    conv_calib = tmp_path / "conv_calib"
    conv_calib.mkdir()
    np.save(conv_calib / "a.npy", builders.samples(builders.conv_relu())[0]["x"])
    result = _run("quantize", old, "-o", tmp_path / "o.onnx", "--calib", conv_calib)
    assert result.exit_code == 4 and "--upgrade-opset" in result.output
    result = _run("quantize", old, "-o", tmp_path / "o.onnx", "--calib", conv_calib, "--upgrade-opset")
    assert result.exit_code == 0, result.output


def test_dynamic_and_fp16_modes(tmp_path):
    path = io.save(builders.mlp(), tmp_path / "mlp.onnx")
    result = _run("quantize", path, "-o", tmp_path / "d.onnx", "--mode", "dynamic", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["inserted"] == {"dynamic_quantize_inputs": 2, "int8_weights": 2}
    assert report["integer_kernels"] == {"com.microsoft::DynamicQuantizeMatMul": 2}
    result = _run("quantize", path, "-o", tmp_path / "h.onnx", "--mode", "fp16", "--fp16-target", "any")
    assert result.exit_code == 0, result.output
    assert "float16 nodes: 4" in result.output
    result = _run("quantize", path, "-o", tmp_path / "b.onnx", "--mode", "bf16")
    assert result.exit_code == 2 and "no bfloat16" in result.output
    assert not (tmp_path / "b.onnx").exists()
