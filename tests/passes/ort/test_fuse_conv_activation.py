import numpy as np
import onnx_ir as ir
import pytest

from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from modelpress.passes.ort.fuse_conv_activation import FuseConvActivationPass
from tests.testing import FP32, assert_equivalent, ops, run_pass, serialized

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
B = RNG.standard_normal(8).astype(np.float32)


def _conv(b: GraphBuilder, x: ir.Value, bias: bool = True) -> ir.Value:
    inputs = [x, b.const(W, "w")] + ([b.const(B, "b")] if bias else [])
    return b.op("Conv", *inputs, pads=[1, 1, 1, 1], strides=[1, 1])


ACTIVATIONS = {
    "Relu": lambda b, h: b.op("Relu", h),
    "LeakyRelu": lambda b, h: b.op("LeakyRelu", h, alpha=0.2),
    "Sigmoid": lambda b, h: b.op("Sigmoid", h),
    "Tanh": lambda b, h: b.op("Tanh", h),
    "Clip": lambda b, h: b.op(
        "Clip", h, b.const(np.array(0.0, np.float32)), b.const(np.array(6.0, np.float32))
    ),
    "HardSigmoid": lambda b, h: b.op("HardSigmoid", h, alpha=0.3, beta=0.4),
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_conv_activation_becomes_fused_conv(activation, bias):
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [1, 4, 8, 8])
    model = b.build([ACTIVATIONS[activation](b, _conv(b, x, bias))])
    after, changed = run_pass(FuseConvActivationPass(), model)
    assert changed is True
    assert ops(after) == {"com.microsoft::FusedConv": 1}
    node = next(iter(after.graph))
    assert node.attributes["activation"].as_string() == activation
    assert after.opset_imports["com.microsoft"] == 1
    verify(after)
    assert_equivalent(model, after, rtol=FP32)


@pytest.mark.parametrize("add", ["Add", "Sum"])
@pytest.mark.parametrize("residual_first", [False, True])
def test_residual_add_and_relu_fuse_with_sum_input(add, residual_first):
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [1, 4, 8, 8])
    z = b.input("z", ir.DataType.FLOAT, [1, 8, 8, 8])
    conv = _conv(b, x, bias=False)
    summed = b.op(add, z, conv) if residual_first else b.op(add, conv, z)
    model = b.build([b.op("Relu", summed)])
    after, changed = run_pass(FuseConvActivationPass(), model)
    assert changed is True
    assert ops(after) == {"com.microsoft::FusedConv": 1}
    assert len(next(iter(after.graph)).inputs) == 4
    assert_equivalent(model, after, rtol=FP32)


def test_broadcast_residual_is_refused():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [1, 4, 8, 8])
    z = b.input("z", ir.DataType.FLOAT, [1, 8, 1, 1])
    model = b.build([b.op("Relu", b.op("Add", _conv(b, x), z))])
    after, changed = run_pass(FuseConvActivationPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_conv_with_second_consumer_is_refused():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [1, 4, 8, 8])
    conv = _conv(b, x)
    model = b.build([b.op("Relu", conv), b.op("Sigmoid", conv)])
    after, changed = run_pass(FuseConvActivationPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_non_constant_clip_bound_is_refused():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [1, 4, 8, 8])
    high = b.input("high", ir.DataType.FLOAT, [])
    model = b.build([b.op("Clip", _conv(b, x), b.const(np.array(0.0, np.float32)), high)])
    after, changed = run_pass(FuseConvActivationPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_float16_conv_is_refused():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT16, [1, 4, 8, 8])
    conv = b.op("Conv", x, b.const(W.astype(np.float16), "w"), pads=[1, 1, 1, 1])
    model = b.build([b.op("Relu", conv)])
    _, changed = run_pass(FuseConvActivationPass(), model)
    assert changed is False


def test_idempotent():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [1, 4, 8, 8])
    model = b.build([b.op("Relu", _conv(b, x))])
    once, _ = run_pass(FuseConvActivationPass(), model)
    _, changed = run_pass(FuseConvActivationPass(), once)
    assert changed is False


@pytest.mark.parametrize("add", ["Add", "Sum"])
@pytest.mark.parametrize("residual_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_bare_residual_add_fuses_without_activation(add, residual_first, bias):
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, ["N", 4, 8, 8])
    z = b.input("z", ir.DataType.FLOAT, ["N", 8, 8, 8])
    conv = _conv(b, x, bias=bias)
    model = b.build([b.op(add, z, conv) if residual_first else b.op(add, conv, z)])
    after, changed = run_pass(FuseConvActivationPass(), model)
    assert changed is True
    assert ops(after) == {"com.microsoft::FusedConv": 1}
    node = next(iter(after.graph))
    assert len(node.inputs) == 4 and node.inputs[3].name == "z"
    assert "activation" not in node.attributes
    assert_equivalent(model, after, rtol=FP32, dim_values={"N": 3})


def test_residual_add_followed_by_an_activation_keeps_the_activation_form():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [1, 4, 8, 8])
    z = b.input("z", ir.DataType.FLOAT, [1, 8, 8, 8])
    model = b.build([b.op("Relu", b.op("Add", _conv(b, x), z))])
    after, _ = run_pass(FuseConvActivationPass(), model)
    (node,) = list(after.graph)
    assert node.attributes["activation"].as_string() == "Relu"


def test_residual_with_another_named_dim_is_refused():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, ["N", 4, 8, 8])
    z = b.input("z", ir.DataType.FLOAT, ["M", 8, 8, 8])
    model = b.build([b.op("Add", _conv(b, x), z)])
    _, changed = run_pass(FuseConvActivationPass(), model)
    assert changed is False


def test_missing_intermediate_shapes_are_inferred_before_matching():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, ["N", 4, 8, 8])
    z = b.input("z", ir.DataType.FLOAT, ["N", 8, 8, 8])
    model = b.build([b.op("Add", _conv(b, x), z)])
    for node in model.graph:
        if node.op_type == "Conv":
            node.outputs[0].shape = None  # as exporters write it: no intermediate shapes
    after, changed = run_pass(FuseConvActivationPass(), model)
    assert changed is True
    assert ops(after) == {"com.microsoft::FusedConv": 1}
    assert_equivalent(model, after, rtol=FP32, dim_values={"N": 2})


def test_residual_conv_without_bias_and_unknown_channel_count_is_refused():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, ["N", 4, 8, 8])
    w = b.input("w", ir.DataType.FLOAT, ["C", 4, 3, 3])  # a weight fed at run time
    z = b.input("z", ir.DataType.FLOAT, ["N", "C", 8, 8])
    conv = b.op("Conv", x, w, pads=[1, 1, 1, 1])
    model = b.build([b.op("Add", conv, z)])
    _, changed = run_pass(FuseConvActivationPass(), model)
    assert changed is False
