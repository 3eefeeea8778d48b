"""--mode dynamic: DynamicQuantizeLinear -> MatMulInteger structure, fused kernels, numerics, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.errors import PreconditionError
from modelpress.quantize import QuantSpec, quantize_model
from modelpress.quantize.report import runtime_ops
from modelpress.runtime.compare import run_model
from tests.quantize import builders


def test_mlp_structure_and_onnxruntime_fuses_it_into_dynamic_quantize_matmul():
    quantized, report = quantize_model(builders.mlp(), QuantSpec(mode="dynamic"))
    assert report.inserted == {"dynamic_quantize_inputs": 2, "int8_weights": 2}
    assert report.ops_after == {
        "DynamicQuantizeLinear": 2,
        "MatMulInteger": 2,
        "Cast": 2,
        "Mul": 4,
        "Add": 2,
        "Relu": 1,
    }
    assert "MatMul" not in report.ops_after and "Gemm" not in report.ops_after
    assert runtime_ops(quantized) == {"com.microsoft::DynamicQuantizeMatMul": 2, "Relu": 1}
    assert [v.name for v in quantized.graph.outputs] == ["y"]


def test_error_within_the_analytic_rounding_bound():
    """One MatMul, per element: |dy_n| <= s_x/2 * sum_k |W_kn| + s_w[n]/2 * sum_k |x_k| + K s_x s_w[n] / 4
    (x rounded by half its step, W by half its per-column step, plus the cross term); s_x is the
    run-time scale DynamicQuantizeLinear picks, (max(x,0) - min(x,0)) / 255 per batch."""
    model = builders.mlp()
    w1 = model.graph.initializers["w1"].const_value.numpy()
    s_w = np.abs(w1).max(axis=0) / 127
    quantized, _ = quantize_model(model, QuantSpec(mode="dynamic"))
    quantized.graph.outputs[0] = next(
        n for n in quantized.graph if n.op_type == "Mul" and n.inputs[0].producer().op_type == "Cast"
    ).outputs[0]
    for feeds in builders.samples(model, count=3, batch=4, seed=5):
        x = feeds["x"]
        s_x = (max(x.max(), 0) - min(x.min(), 0)) / 255
        bound = s_x / 2 * np.abs(w1).sum(0) + s_w / 2 * np.abs(x).sum(1, keepdims=True) + 16 * s_x * s_w / 4
        for level in ("disable", "all"):
            (out,) = run_model(quantized, feeds, level=level).values()
            assert np.all(np.abs(out - x @ w1) <= bound * 1.0001 + 1e-6)


def test_attention_keeps_activation_matmuls_float_and_says_why():
    model = builders.attention_block()
    quantized, report = quantize_model(model, QuantSpec(mode="dynamic"))
    assert report.inserted["int8_weights"] == 4 and report.ops_after["MatMul"] == 2
    assert set(report.skipped.values()) == {"the weight (right operand) is not a constant initializer"}
    for feeds in builders.samples(model, count=2, seed=3):
        ref, out = run_model(model, feeds)["y"], run_model(quantized, feeds, level="all")["y"]
        assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()  # 4 int8 layers + LayerNorm rescaling


def test_conv_is_skipped_with_its_reason_and_a_cnn_alone_is_refused():
    _, report = quantize_model(builders.classifier(), QuantSpec(mode="dynamic"))
    assert "ConvInteger" in report.skipped["Conv_1"] and report.op_counts["Conv"] == {
        "quantized": 0,
        "float": 1,
    }
    with pytest.raises(PreconditionError, match=r"nothing to quantize.*ConvInteger"):
        quantize_model(builders.conv_relu(), QuantSpec(mode="dynamic"))


def test_already_dynamic_quantized_and_old_opsets_are_refused():
    quantized, _ = quantize_model(builders.mlp(), QuantSpec(mode="dynamic"))
    with pytest.raises(PreconditionError, match="already quantized"):
        quantize_model(quantized, QuantSpec(mode="dynamic"))
    with pytest.raises(
        PreconditionError, match="opset 10; quantization needs opset >= 11 \\(DynamicQuantizeLinear\\)"
    ):
        quantize_model(builders.mlp(opset=10), QuantSpec(mode="dynamic"))
