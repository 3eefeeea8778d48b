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
    assert report["inserted"] == {
        "dynamic_quantize_inputs": 2,
        "int8_weights": 2,
        "packed_matmul_groups": 0,
        "int8_gather_tables": 0,
    }
    assert report["integer_kernels"] == {"com.microsoft::DynamicQuantizeMatMul": 2}
    result = _run("quantize", path, "-o", tmp_path / "h.onnx", "--mode", "fp16", "--fp16-target", "any")
    assert result.exit_code == 0, result.output
    assert "float16 nodes: 4" in result.output
    result = _run("quantize", path, "-o", tmp_path / "b.onnx", "--mode", "bf16", "--fp16-target", "any")
    assert result.exit_code == 2 and "no bfloat16" in result.output
    assert not (tmp_path / "b.onnx").exists()
    result = _run("quantize", path, "-o", tmp_path / "b.onnx", "--mode", "bf16")
    assert result.exit_code == 0, result.output
    assert "bfloat16 weights: 2, Casts: 2" in result.output and (tmp_path / "b.onnx").exists()


# --- accuracy-aware mode, bias correction, image calibration ----------------------------------


@pytest.fixture
def eval_dir(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    for i, feeds in enumerate(builders.samples(builders.classifier(), count=2, batch=8, seed=5)):
        np.savez(folder / f"{i}.npz", x=feeds["x"])  # no labels: the float model is the reference
    return folder


def test_help_lists_the_accuracy_and_calibration_options():
    output = _run("quantize", "--help").output
    for option in ("--max-drop", "--eval", "--eval-metric", "--bias-correction", "--calib-pipeline"):
        assert option in output


def test_accuracy_aware_mode_prints_the_per_layer_report(model_path, calib, eval_dir, tmp_path):
    args = ("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib, "--eval", eval_dir)
    result = _run(*args, "--max-drop", "0.05")
    assert result.exit_code == 0, result.output
    assert "accuracy-aware" in result.output and "met" in result.output
    report = json.loads(_run(*args, "--max-drop", "0.05", "--json").stdout)
    accuracy = report["accuracy"]
    assert accuracy["metric"] == "cosine" and accuracy["met"] is True and accuracy["kept_float"] == []
    assert {layer["op_type"] for layer in accuracy["layers"]} >= {"Conv", "Gemm", "MatMul"}


def test_an_unmet_budget_exits_6_and_still_writes_the_best_model(model_path, calib, eval_dir, tmp_path):
    out = tmp_path / "q.onnx"
    result = _run("quantize", model_path, "-o", out, "--calib", calib, "--eval", eval_dir, "--max-drop", "0")
    assert result.exit_code == 6, result.output
    assert "accuracy budget not met" in result.output and out.exists()


def test_max_drop_without_eval_is_a_usage_error(model_path, calib, tmp_path):
    result = _run("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib, "--max-drop", "0.01")
    assert result.exit_code == 2 and "--max-drop X and --eval DIR" in result.output


def test_bias_correction_reports_the_mean_error_before_and_after(model_path, calib, tmp_path):
    args = ("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib, "--bias-correction")
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "bias correction: 2 node(s) corrected" in result.output
    report = json.loads(_run(*args, "--json").stdout)
    assert set(report["bias_correction"]["mean_error_after"]) == {"logits", "embedding"}
    assert report["spec"]["bias_correction"] is True
    result = _run("quantize", model_path, "-o", tmp_path / "w.onnx", "--mode", "dynamic", "--bias-correction")
    assert result.exit_code == 2 and "bias correction needs calibration data" in result.output


def test_image_calibration_with_a_pipeline(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("inputs:\n  x: [decode_image, {resize: {size: [8, 8]}}, to_tensor]\n")
    model = io.save(builders.conv_relu(), tmp_path / "float.onnx")
    args = ("quantize", model, "-o", tmp_path / "q.onnx", "--calib", images, "--calib-pipeline", pipeline)
    result = _run(*args, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["calibration_samples"] == 4
    (images / "broken.png").write_bytes(b"no image")
    result = _run(*args)
    assert result.exit_code == 9 and "broken.png: not a readable image" in result.output
    result = _run("quantize", model, "-o", tmp_path / "q2.onnx", "--calib", images)
    assert result.exit_code == 9 and "--calib-pipeline" in result.output
    assert not (tmp_path / "q2.onnx").exists()


_INT4 = ("--mode", "weight-only", "--bits", "4")


def test_weight_only_4bit_both_formats_and_gptq(tmp_path):
    path = io.save(builders.mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "q4.onnx"
    result = _run("quantize", path, "-o", out, "--mode", "weight-only", "--bits", "4", "--block-size", "16")
    assert result.exit_code == 0, result.output
    assert "weights int4: MatMul/Gemm 2, Gather 0 (blocks of 16, symmetric, ort, rtn)" in result.output
    assert "MatMulNBits 2" in result.output
    args = ["--mode", "weight-only", "--bits", "4", "--block-size", "16", "--asymmetric", "--format", "qdq"]
    result = _run("quantize", path, "-o", tmp_path / "qdq.onnx", *args, "--upgrade-opset", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["spec"]["symmetric_weights"] is False and report["ops_after"]["DequantizeLinear"] == 2
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feeds in enumerate(builders.samples(builders.mlp(), count=3, batch=8)):
        np.save(calib / f"{i}.npy", feeds["x"])
    args = [*_INT4, "--block-size", "16", "--algorithm", "gptq", "--calib", calib]
    result = _run("quantize", path, "-o", tmp_path / "gptq.onnx", *args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["calibration_samples"] == 24 and report["eval_samples"] == 24


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "4"], "4-bit weights are weight-only"),
        (["--mode", "dynamic", "--bits", "4"], "not --mode dynamic"),
        ([*_INT4, "--block-size", "48"], "block size 48 must be a power of 2"),
        ([*_INT4, "--algorithm", "gptq"], "--algorithm gptq needs calibration data"),
        ([*_INT4, "--format", "qdq"], "--upgrade-opset"),
    ],
)
def test_bad_4bit_options_exit_with_an_error_and_write_nothing(tmp_path, args, message):
    path = io.save(builders.mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "q4.onnx"
    result = _run("quantize", path, "-o", out, *args)
    assert result.exit_code in (2, 4), result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_dynamic_embedding_tables_int8_by_default_float_on_request(tmp_path):
    path = io.save(builders.embedding_encoder(), tmp_path / "emb.onnx")
    data = tmp_path / "data"  # valid ids for the error check (random int64 feeds overrun the tables)
    data.mkdir()
    ids = np.random.default_rng(0).integers(0, 8, (3, 2, 5))
    np.savez(data / "a.npz", ids=ids[0], other_ids=ids[1], positions=ids[2])
    for flags, tables in (([], 2), (["--float-embeddings"], 0)):
        result = _run(
            "quantize",
            path,
            "-o",
            tmp_path / "d.onnx",
            "--mode",
            "dynamic",
            "--calib",
            data,
            "--json",
            *flags,
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["inserted"]["int8_gather_tables"] == tables


def test_float_stem_keeps_the_input_conv_float(model_path, calib, tmp_path):
    conv = next(n for n in builders.classifier().graph if n.op_type == "Conv").name
    result = _run("quantize", model_path, "-o", tmp_path / "q.onnx", "--calib", calib, "--float-stem")
    assert result.exit_code == 0, result.output
    assert f"kept in float: {conv}: image stem" in " ".join(result.output.split())
    result = _run("quantize", model_path, "-o", tmp_path / "d.onnx", "--mode", "dynamic", "--float-stem")
    assert result.exit_code == 2
