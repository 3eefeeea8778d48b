"""--mode fp16: boundaries float32, block list, range check, kernel probe, no cascaded/dangling Casts."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.quantize import QuantSpec, quantize_file, quantize_model
from modelpress.quantize.float16 import cast_problems, tidy_casts
from modelpress.runtime.compare import run_model
from tests.quantize import builders

FP16_RTOL = 1e-3  # STYLE §4: fp16 error relative to the output's scale


def _assert_close(model, converted, seeds=(0, 1, 2), rtol=FP16_RTOL):
    for seed in seeds:
        for feeds in builders.samples(model, count=1, seed=seed):
            ref = run_model(model, feeds)
            out = run_model(converted, feeds)
            for name, value in ref.items():
                assert out[name].dtype == np.float32
                assert np.abs(out[name] - value).max() <= rtol * np.abs(value).max(), (name, seed)


@pytest.mark.parametrize("build", [builders.mlp, builders.attention_block, builders.classifier])
@pytest.mark.parametrize("target", ["cpu", "any"])
def test_io_stays_float32_no_bad_casts_and_error_within_fp16_tolerance(build, target):
    model = build()
    converted, report = quantize_model(model, QuantSpec(mode="fp16", fp16_target=target))
    assert cast_problems(converted.graph) == []
    for value in [*converted.graph.inputs, *converted.graph.outputs]:
        assert value.dtype.name == "FLOAT"
    assert [v.name for v in converted.graph.outputs] == [v.name for v in model.graph.outputs]
    assert report.weight_bytes_after < 0.6 * report.weight_bytes_before
    _assert_close(model, converted)


def test_any_target_converts_compute_and_keeps_the_block_list_float32():
    converted, report = quantize_model(builders.attention_block(), QuantSpec(mode="fp16", fp16_target="any"))
    assert report.op_counts["MatMul"] == {"quantized": 6, "float": 0}
    assert report.skipped["Softmax_7"].startswith("block list")
    assert report.skipped["LayerNormalization_11"].startswith("block list")
    dtypes = {n.op_type: n.outputs[0].dtype.name for n in converted.graph if n.op_type != "Cast"}
    assert dtypes["Softmax"] == dtypes["LayerNormalization"] == "FLOAT" and dtypes["MatMul"] == "FLOAT16"


def test_cpu_target_keeps_ops_without_an_onnxruntime_float16_kernel_and_says_so():
    _, report = quantize_model(builders.mlp(), QuantSpec(mode="fp16"))
    assert "no float16 MatMul kernel" in report.skipped["MatMul_1"]
    assert report.inserted["float16_stored_weights"] == 3 and report.notes


def test_calibrated_range_check_keeps_hot_producers_float32():
    b = GraphBuilder(opset=17)
    x = b.input("x", builders.FLOAT, ["N", 4])
    h = b.op("MatMul", x, b.const(np.full((4, 4), 3e4, np.float32), "big"))
    y = b.op(
        "MatMul", b.op("Mul", h, b.const(np.float32(1e-4), "s")), b.const(np.eye(4, dtype=np.float32), "eye")
    )
    y.name = "y"
    model = b.build([y])
    data = [{"x": np.ones((2, 4), np.float32)}]
    _, report = quantize_model(model, QuantSpec(mode="fp16", fp16_target="any"), samples=data)
    assert "> 32752" in report.skipped["MatMul_1"] and report.calibration_samples == 2
    _, unchecked = quantize_model(model, QuantSpec(mode="fp16", fp16_target="any"))
    assert "MatMul_1" not in unchecked.skipped


def test_tidy_casts_collapses_chains_and_removes_dangling_ones():
    b = GraphBuilder(opset=17)
    x = b.input("x", builders.FLOAT, [3])
    round_trip = b.op("Cast", b.op("Cast", x, to=10), to=1)
    b.op("Cast", x, to=10)  # dangling
    widening = b.op("Cast", b.op("Cast", b.op("Cast", x, to=10), to=1), to=11)  # f16 -> f32 -> f64
    floor = b.op("Cast", b.op("Cast", x, to=6), to=1)  # float -> int32 -> float: a floor, kept
    y = b.op("Add", b.op("Add", round_trip, b.op("Cast", widening, to=1)), floor)
    y.name = "y"
    model = b.build([y])
    tidy_casts(model.graph)
    problems = cast_problems(model.graph)
    assert len(problems) == 1 and "cascaded" in problems[0]  # only the deliberate floor chain
    feeds = {"x": np.array([1.25, -2.5, 3.75], np.float32)}
    np.testing.assert_array_equal(run_model(model, feeds)["y"], [1.25 * 2 + 1, -5 - 2, 3.75 * 2 + 3])


def test_bf16_is_refused_and_quantize_file_reports(tmp_path):
    with pytest.raises(UsageError, match="onnxruntime's CPU provider has no bfloat16"):
        QuantSpec(mode="bf16", fp16_target="any")  # bf16 converts weight storage only (test_bf16.py)
    source = io.save(builders.attention_block(), tmp_path / "f.onnx")
    report = quantize_file(source, tmp_path / "h.onnx", QuantSpec(mode="fp16", fp16_target="any"))
    assert report.file_bytes_after < report.file_bytes_before  # tiny model: protobuf overhead dominates
    assert report.weight_bytes_after <= 0.55 * report.weight_bytes_before
    assert all(e.max_rel <= FP16_RTOL for e in report.errors)
    assert report.to_json()["mode"] == "fp16"
