"""Q/DQ insertion: the quantization math, exact graph structure, and onnxruntime's fusion of it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import pytest

from modelpress.ir.verify import verify
from modelpress.quantize.calibrate import calibrate
from modelpress.quantize.plan import build_plan
from modelpress.quantize.qdq import activation_qparams, apply_plan, quantize_bias, quantize_weight
from modelpress.quantize.report import runtime_ops
from modelpress.quantize.spec import QuantSpec
from tests.quantize import builders
from tests.testing import ops

SPEC = QuantSpec(activation_dtype="uint8")


def quantized(model: ir.Model, spec: QuantSpec = SPEC, data=None) -> ir.Model:
    work = model.clone()
    common_passes.ShapeInferencePass()(work)
    ranges = calibrate(work, data or builders.samples(work), spec) if spec.mode == "static" else {}
    apply_plan(work, build_plan(work, spec), ranges, spec)
    return work


def _initializer(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


@pytest.mark.parametrize(
    ("low", "high", "dtype", "scale", "zero_point"),
    [
        (0.0, 2.55, "uint8", 0.01, 0),
        (-1.0, 1.0, "uint8", 2 / 255, None),  # 127.5: 127 or 128 by float32 rounding
        (-1.0, 1.0, "int8", 2 / 255, None),
        (0.0, 2.55, "int8", 0.01, -128),
        (1.0, 2.55, "uint8", 0.01, 0),  # widened to include 0
        (-2.55, -1.0, "uint8", 0.01, 255),
    ],
)
def test_activation_qparams(low, high, dtype, scale, zero_point):
    got_scale, got_zero_point = activation_qparams(low, high, dtype)
    assert got_scale == pytest.approx(scale, rel=1e-6)
    assert got_zero_point.dtype == np.dtype(dtype)
    if zero_point is not None:
        assert int(got_zero_point) == zero_point
    # The grid covers the range (widened to 0) within half a step at both ends.
    info = np.iinfo(dtype)
    lowest = (info.min - int(got_zero_point)) * float(got_scale)
    highest = (info.max - int(got_zero_point)) * float(got_scale)
    assert lowest <= min(low, 0.0) + got_scale / 2 and highest >= max(high, 0.0) - got_scale / 2


def test_an_all_zero_range_gets_scale_one():
    assert activation_qparams(0.0, 0.0, "uint8") == (np.float32(1.0), np.uint8(0))


def test_per_channel_weights_use_the_full_symmetric_grid():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    weight[2] = 0.0
    w_i8, w_scale = quantize_weight(weight, axis=0)
    assert w_i8.dtype == np.int8 and w_scale.shape == (4,)
    assert w_scale[2] == 1.0 and not w_i8[2].any()
    for c in (0, 1, 3):
        assert np.abs(w_i8[c]).max() == 127
    error = np.abs(w_i8 * w_scale[:, None, None, None] - weight)
    assert (error <= w_scale[:, None, None, None] / 2 + 1e-7).all()
    assert w_i8.min() >= -127  # -128 stays unused: symmetric


def test_reduce_range_and_per_tensor_weights():
    weight = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    w_i8, w_scale = quantize_weight(weight, axis=None, qmax=63)
    assert w_scale.shape == () and np.abs(w_i8).max() == 63
    _, per_column = quantize_weight(weight, axis=1)
    assert per_column.shape == (5,)


def test_bias_scale_is_the_product_of_input_and_weight_scales():
    bias = np.array([0.5, -0.25, 1e9], np.float32)
    w_scale = np.array([0.01, 0.02, 1e-6], np.float32)
    b_i32, b_scale, clipped = quantize_bias(bias, np.float32(0.1), w_scale)
    np.testing.assert_allclose(b_scale, 0.1 * w_scale, rtol=1e-6)
    assert b_i32.dtype == np.int32 and list(b_i32[:2]) == [500, -125]
    assert clipped == 1 and b_i32[2] == np.iinfo(np.int32).max


def test_conv_relu_structure_is_exact():
    after = quantized(builders.conv_relu())
    verify(after, full=True)
    # x: Q+DQ; w and b: one DQ each; Relu's output: Q+DQ (the Conv output is fused into it).
    assert ops(after) == {"DequantizeLinear": 4, "QuantizeLinear": 2, "Conv": 1, "Relu": 1}
    assert _initializer(after, "w_i8").dtype == np.int8
    assert _initializer(after, "b_i32").dtype == np.int32
    weight_dq = next(n for n in after.graph if n.op_type == "DequantizeLinear" and n.inputs[0].name == "w_i8")
    assert weight_dq.attributes.get_int("axis") == 0 and weight_dq.inputs[1].shape == ir.Shape([4])
    assert "w" not in after.graph.initializers and "b" not in after.graph.initializers
    # The graph output keeps its name, now on the DequantizeLinear; the float tensor is renamed.
    (output,) = after.graph.outputs
    assert output.name == "y" and output.producer().op_type == "DequantizeLinear"
    assert "y_float" in {out.name for node in after.graph for out in node.outputs}
    # Relu's range starts at 0: zero point 0, so onnxruntime can drop the Relu into the Q.
    assert _initializer(after, "y_zero_point") == np.uint8(0)


def test_small_cnn_structure_is_exact():
    after = quantized(builders.small_cnn())
    verify(after, full=True)
    # Activation pairs: x, Relu1 (a), Relu after Add, MaxPool (shares the Relu's params), Relu3 (y).
    # The Conv2 output feeds the Add (quantized), so it gets a pair too: 6 pairs.
    assert ops(after) == {
        "DequantizeLinear": 12,
        "QuantizeLinear": 6,
        "Conv": 3,
        "Relu": 3,
        "Add": 1,
        "MaxPool": 1,
    }
    pool = next(n for n in after.graph if n.op_type == "MaxPool")
    quant_after_pool = pool.outputs[0].consumers()[0]
    quant_before_pool = pool.inputs[0].producer().inputs[0].producer()
    assert quant_after_pool.inputs[1] is quant_before_pool.inputs[1]  # same scale initializer


def test_gemm_and_matmul_outputs_stay_float_and_weights_are_per_output_channel():
    after = quantized(builders.classifier())
    verify(after, full=True)
    for name in ("logits", "embedding"):
        (out,) = [v for v in after.graph.outputs if v.name == name]
        assert out.producer().op_type in ("Gemm", "MatMul")
    fc_dq = next(n for n in after.graph if n.op_type == "DequantizeLinear" and n.inputs[0].name == "fc_w_i8")
    assert fc_dq.attributes.get_int("axis") == 0 and fc_dq.inputs[1].shape == ir.Shape([10])  # transB=1
    proj_dq = next(
        n for n in after.graph if n.op_type == "DequantizeLinear" and n.inputs[0].name == "proj_w_i8"
    )
    assert proj_dq.attributes.get_int("axis") == 1 and proj_dq.inputs[1].shape == ir.Shape([4])
    # x, Conv+Relu output, GAP output, Flatten output (shared with GAP's): 4 pairs; 5 weight/bias DQs.
    assert ops(after)["QuantizeLinear"] == 4 and ops(after)["DequantizeLinear"] == 9


def test_per_tensor_weights_have_no_axis():
    after = quantized(builders.conv_relu(), QuantSpec(per_channel=False))
    weight_dq = next(n for n in after.graph if n.op_type == "DequantizeLinear" and n.inputs[0].name == "w_i8")
    assert "axis" not in weight_dq.attributes and weight_dq.inputs[1].shape == ir.Shape([])


def test_weight_only_inserts_weight_dequantizers_only():
    after = quantized(builders.classifier(), QuantSpec(mode="weight-only"))
    verify(after, full=True)
    assert ops(after)["DequantizeLinear"] == 3 and "QuantizeLinear" not in ops(after)
    assert {"b1", "fc_b"} <= set(after.graph.initializers)  # biases stay float


def test_int8_activations():
    after = quantized(builders.conv_relu(), QuantSpec(activation_dtype="int8"))
    quant = [n for n in after.graph if n.op_type == "QuantizeLinear"]
    assert all(n.outputs[0].dtype == ir.DataType.INT8 for n in quant)


def test_excluded_nodes_and_refused_nodes_stay_float_with_a_reason():
    model = builders.small_cnn()
    conv2 = [n for n in model.graph if n.op_type == "Conv"][1]
    plan = build_plan(model, QuantSpec(exclude_nodes=frozenset({conv2.name})))
    assert plan.skipped == {conv2.name: "excluded by the spec"}
    assert conv2.name not in plan.selected


def test_onnxruntime_fuses_the_result_into_integer_kernels():
    kernels = runtime_ops(quantized(builders.small_cnn()))
    assert kernels.get("com.microsoft::QLinearConv") == 3
    assert kernels.get("com.microsoft::QLinearAdd") == 1
    assert "Conv" not in kernels and "Relu" not in kernels and "Add" not in kernels
    classifier_kernels = runtime_ops(quantized(builders.classifier()))
    assert classifier_kernels.get("com.microsoft::QGemm") == 1
    assert classifier_kernels.get("com.microsoft::MatMulIntegerToFloat") == 1
    assert classifier_kernels.get("com.microsoft::QLinearGlobalAveragePool") == 1


def test_ops_away_from_quantized_ones_and_integer_shape_ops_stay_float():
    from modelpress.ir.build import GraphBuilder

    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", builders.FLOAT, [1, 3, 8, 8])
    h = b.op(
        "Softmax", b.op("Conv", x, b.const(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")), axis=1
    )
    relu = b.op("Relu", h)  # between two float Softmaxes: a Q/DQ pair would only add work
    y = b.op("Softmax", relu, axis=1)
    shape = b.op("Unsqueeze", b.op("Shape", x), b.const(np.array([0], np.int64)))  # int64: not a candidate
    model = b.build([y, shape])
    plan = build_plan(model, SPEC)
    assert plan.selected == {"Conv_1": "Conv"}
    assert plan.skipped == {relu.producer().name: "no quantized neighbour (a Q/DQ pair would only add work)"}
    assert plan.op_counts(model) == {
        "Conv": {"quantized": 1, "float": 0},
        "Relu": {"quantized": 0, "float": 1},
    }
