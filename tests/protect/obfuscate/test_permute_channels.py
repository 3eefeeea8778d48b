"""PermuteChannelsPass: weights really move, ops and outputs stay, every refusal leaves the bytes alone."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.examples.cnn import build_example_cnn
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.protect.obfuscate import PermuteChannelsPass, find_channel_groups
from modelpress.protect.obfuscate.permute_channels import derangement
from tests.protect.obfuscate.helpers import (
    F32,
    C,
    assert_transforms,
    batchnorm,
    conv_pair,
    node_input,
    positive,
    rand,
    recovered_order,
    weight,
)
from tests.testing import assert_refused, run_pass

PERMUTE = PermuteChannelsPass(seed=7)


def _bn_relu_pool(b: GraphBuilder, h: ir.Value) -> ir.Value:
    return b.op("MaxPool", b.op("Relu", batchnorm(b, h)), kernel_shape=[2, 2], strides=[2, 2])


# --- positive cases: exact structural facts --------------------------------------------------


def test_conv_bn_relu_pool_conv_moves_every_tensor_by_one_derangement():
    model = conv_pair(_bn_relu_pool)
    after = assert_transforms(PERMUTE, model)
    order = recovered_order(weight(model, "w1"), weight(after, "w1"))
    assert not np.any(order == np.arange(C)), "a derangement: no channel keeps its index"
    np.testing.assert_array_equal(weight(after, "b1"), weight(model, "b1")[order])
    for name in ("bn.scale", "bn.bias", "bn.mean", "bn.var"):
        np.testing.assert_array_equal(weight(after, name), weight(model, name)[order])
    np.testing.assert_array_equal(weight(after, "w2"), weight(model, "w2")[:, order])
    np.testing.assert_array_equal(weight(after, "b2"), weight(model, "b2"))  # output channels stay
    assert set(after.graph.initializers) == set(model.graph.initializers)  # in place, same names


@pytest.mark.parametrize(
    "middle",
    [
        pytest.param(lambda b, h: b.op("LeakyRelu", h, alpha=0.1), id="LeakyRelu"),
        pytest.param(
            lambda b, h: b.op("Clip", h, b.const(np.float32(0)), b.const(np.float32(6))), id="ReLU6"
        ),
        pytest.param(lambda b, h: b.op("Tanh", b.op("Sigmoid", h)), id="Sigmoid-Tanh"),
        pytest.param(
            lambda b, h: b.op("AveragePool", h, kernel_shape=[3, 3], pads=[1, 1, 1, 1]), id="AveragePool"
        ),
        pytest.param(lambda b, h: b.op("Mul", h, b.const(positive(C, 1, 1))), id="Mul-per-channel"),
        pytest.param(lambda b, h: b.op("Add", b.const(rand(1, C, 1, 1)), h), id="Add-constant-first"),
        pytest.param(lambda b, h: b.op("Sub", h, b.const(np.float32(0.5))), id="Sub-scalar"),
        pytest.param(lambda b, h: b.op("Div", h, b.const(positive(C, 8, 8))), id="Div-per-channel-and-pixel"),
        pytest.param(lambda b, h: b.op("PRelu", h, b.const(rand(C, 1, 1))), id="PRelu"),
        pytest.param(lambda b, h: b.op("Mul", h, b.op("Sigmoid", h)), id="Swish-two-group-tensors"),
        pytest.param(
            lambda b, h: b.op(
                "Slice", h, b.const(np.array([1, 1])), b.const(np.array([7, 7])), b.const(np.array([2, 3]))
            ),
            id="Slice-spatial",
        ),
    ],
)
def test_channelwise_ops_between_two_convs(middle):
    model = conv_pair(middle)
    after = assert_transforms(PERMUTE, model)
    order = recovered_order(weight(model, "w1"), weight(after, "w1"))
    np.testing.assert_array_equal(weight(after, "w2"), weight(model, "w2")[:, order])


def test_depthwise_conv_is_permuted_consistently():
    def depthwise(b, h):
        h = b.op("Clip", h, b.const(np.float32(0)), b.const(np.float32(6)))
        return b.op(
            "Conv", h, b.const(rand(C, 1, 3, 3), "dw"), b.const(rand(C), "dw_b"), group=C, pads=[1, 1, 1, 1]
        )

    model = conv_pair(depthwise)
    after = assert_transforms(PERMUTE, model)
    order = recovered_order(weight(model, "w1"), weight(after, "w1"))
    np.testing.assert_array_equal(weight(after, "dw"), weight(model, "dw")[order])
    np.testing.assert_array_equal(weight(after, "dw_b"), weight(model, "dw_b")[order])


def test_residual_add_joins_both_sides_into_one_group():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = b.op("Relu", b.op("Conv", x, b.const(rand(C, 3, 1, 1), "stem")))
    r = b.op(
        "Conv",
        b.op("Relu", b.op("Conv", h, b.const(rand(C, C, 3, 3), "a"), pads=[1, 1, 1, 1])),
        b.const(rand(C, C, 1, 1), "b"),
    )
    h = b.op("Relu", b.op("Add", h, r))
    h = b.op("Flatten", b.op("GlobalAveragePool", h))
    model = b.build([b.op("Gemm", h, b.const(rand(5, C), "fc"), b.const(rand(5), "fc_b"), transB=1)])
    groups = find_channel_groups(model.graph)
    assert [(len(g.values), g.can_permute()) for g in groups] == [(7, True), (2, True), (1, False)]
    after = assert_transforms(PERMUTE, model)
    stream = recovered_order(weight(model, "stem"), weight(after, "stem"))
    inner = recovered_order(weight(model, "a")[:, stream], weight(after, "a"))  # a: both axes moved
    np.testing.assert_array_equal(weight(after, "b"), weight(model, "b")[stream][:, inner])
    np.testing.assert_array_equal(weight(after, "fc"), weight(model, "fc")[:, stream])


def test_gemm_and_matmul_chains():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 6])
    h = b.op(
        "Relu", b.op("Gemm", x, b.const(rand(C, 6), "g1"), b.const(rand(C), "g1_b"), transB=1, alpha=0.5)
    )
    h = b.op("Gemm", h, b.const(rand(C, 4), "g2"), b.const(rand(1, 4), "g2_b"))  # output: not permuted
    gemm = b.build([h])
    after = assert_transforms(PERMUTE, gemm)
    order = recovered_order(weight(gemm, "g1"), weight(after, "g1"))
    np.testing.assert_array_equal(weight(after, "g2"), weight(gemm, "g2")[order])

    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 6])
    h = b.op("Add", b.op("MatMul", x, b.const(rand(6, C), "m1")), b.const(rand(C), "m1_b"))
    h = b.op("MatMul", b.op("Relu", h), b.const(rand(C, 5), "m2"))
    matmul = b.build([h])
    after = assert_transforms(PERMUTE, matmul)
    order = recovered_order(weight(matmul, "m1"), weight(after, "m1"), axis=1)
    np.testing.assert_array_equal(weight(after, "m1_b"), weight(matmul, "m1_b")[order])
    np.testing.assert_array_equal(weight(after, "m2"), weight(matmul, "m2")[order])


def test_shared_bias_gets_a_private_copy_and_shape_consumers_are_harmless():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    shared = b.const(rand(C), "shared_b")
    outs = []
    for name in ("p", "q"):
        h = b.op("Relu", b.op("Conv", x, b.const(rand(C, 3, 1, 1), f"{name}1"), shared))
        b.op("Shape", h)
        outs.append(b.op("Conv", h, b.const(rand(2, C, 1, 1), f"{name}2")))
    model = b.build(outs)
    after = assert_transforms(PERMUTE, model)
    p_order = recovered_order(weight(model, "p1"), weight(after, "p1"))
    q_order = recovered_order(weight(model, "q1"), weight(after, "q1"))
    conv_p, conv_q = [n.name for n in model.graph if n.op_type == "Conv"][::2]
    np.testing.assert_array_equal(node_input(after, conv_p, 2), weight(model, "shared_b")[p_order])
    np.testing.assert_array_equal(node_input(after, conv_q, 2), weight(model, "shared_b")[q_order])
    assert len(after.graph.initializers) == len(model.graph.initializers) + 1


def test_example_cnn_is_equivalent():
    model = build_example_cnn()
    after = assert_transforms(PERMUTE, model)
    assert not np.array_equal(weight(after, "stem.w"), weight(model, "stem.w"))


# --- refusals: nothing changes, byte for byte --------------------------------------------------


def _if_reads_hidden(b, h):
    then_relu = ir.node("Relu", [h], name="then_relu")
    then_relu.outputs[0].name = "then_out"
    then_relu.outputs[0].type, then_relu.outputs[0].shape = ir.TensorType(F32), ir.Shape([2, C, 8, 8])
    else_id = ir.node("Identity", [h], name="else_id")
    else_id.outputs[0].name = "else_out"
    else_id.outputs[0].type, else_id.outputs[0].shape = ir.TensorType(F32), ir.Shape([2, C, 8, 8])
    then_graph = ir.Graph([], [then_relu.outputs[0]], nodes=[then_relu], name="then")
    else_graph = ir.Graph([], [else_id.outputs[0]], nodes=[else_id], name="else")
    cond = b.const(np.array(True), "cond")
    return b.op("If", cond, then_branch=then_graph, else_branch=else_graph)


# case -> (model builder, words of the first group's refusal)
REFUSED = {
    "hidden tensor is a graph output": (
        lambda: conv_pair(lambda b, h: b.op("Relu", h), extra_outputs=True),
        "is a graph output",
    ),
    "Concat": (lambda: _concat(), "Concat"),
    "Reshape": (
        lambda: _into_gemm(lambda b, h: b.op("Reshape", h, b.const(np.array([2, C * 64])))),
        "Reshape",
    ),
    "Flatten of a spatial map": (
        lambda: _into_gemm(lambda b, h: b.op("Flatten", h)),
        "mixes the channels with other axes",
    ),
    "Transpose": (lambda: _transposed(), "Transpose"),
    "Softmax over channels": (lambda: conv_pair(lambda b, h: b.op("Softmax", h, axis=1)), "Softmax"),
    "Slice of the channel axis": (lambda: _sliced_channels(), "slices the channel axis"),
    "MaxPool indices used": (lambda: _pool_indices(), "an extra output"),
    "grouped, not depthwise, Conv": (lambda: _grouped(), "not depthwise"),
    "weights shared by two Convs": (lambda: _shared_weights(), "shared with another node"),
    "consumer weights are a graph input": (lambda: _weights_input(), "not a constant float initializer"),
    "Gemm with transA": (lambda: _gemm_trans_a(), "transA=1"),
    "read inside a subgraph": (lambda: conv_pair(_if_reads_hidden), "in a subgraph"),
}


def _concat():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = b.op("Conv", x, b.const(rand(C, 3, 1, 1), "w1"))
    h = b.op("Concat", h, h, axis=1)
    return b.build([b.op("Conv", h, b.const(rand(4, 2 * C, 1, 1), "w2"))])


def _into_gemm(middle):
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = middle(b, b.op("Conv", x, b.const(rand(C, 3, 3, 3), "w1"), pads=[1, 1, 1, 1]))
    return b.build([b.op("Gemm", h, b.const(rand(C * 64, 4), "w2"))])


def _transposed():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = b.op("Transpose", b.op("Conv", x, b.const(rand(C, 3, 1, 1), "w1")), perm=[0, 2, 3, 1])
    return b.build([b.op("MatMul", h, b.const(rand(C, 4), "w2"))])


def _sliced_channels():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = b.op("Conv", x, b.const(rand(C, 3, 1, 1), "w1"))
    h = b.op("Slice", h, b.const(np.array([0])), b.const(np.array([4])), b.const(np.array([1])))
    return b.build([b.op("Conv", h, b.const(rand(2, 4, 1, 1), "w2"))])


def _pool_indices():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    pooled, indices = b.op(
        "MaxPool", b.op("Conv", x, b.const(rand(C, 3, 1, 1), "w1")), kernel_shape=[2, 2], outputs=2
    )
    return b.build([b.op("Conv", pooled, b.const(rand(2, C, 1, 1), "w2")), indices])


def _grouped():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = b.op("Conv", x, b.const(rand(C, 3, 1, 1), "w1"))
    return b.build([b.op("Conv", h, b.const(rand(4, C // 2, 1, 1), "w2"), group=2)])


def _shared_weights():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    w1 = b.const(rand(C, 3, 1, 1), "w1")
    outs = [
        b.op("Conv", b.op("Relu", b.op("Conv", x, w1)), b.const(rand(2, C, 1, 1), f"w2_{i}"))
        for i in range(2)
    ]
    return b.build(outs)


def _weights_input():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    w2 = b.input("w2", F32, [4, C, 1, 1])
    return b.build([b.op("Conv", b.op("Conv", x, b.const(rand(C, 3, 1, 1), "w1")), w2)])


def _gemm_trans_a():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 6])
    h = b.op("Gemm", x, b.const(rand(6, C), "g1"))  # [2, C]
    return b.build([b.op("Gemm", h, b.const(rand(2, 4), "g2"), transA=1)])


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_groups_are_left_byte_identical(case):
    build, reason = REFUSED[case]
    model = build()
    groups = find_channel_groups(model.graph)
    assert reason in groups[0].refusal
    assert not any(g.can_permute() for g in groups), [g.refusal for g in groups]
    assert_refused(PERMUTE, model)


# --- randomness: seeds -------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_different_seeds_differ():
    model = conv_pair(_bn_relu_pool)
    first, _ = run_pass(PermuteChannelsPass(seed=3), model)
    again, _ = run_pass(PermuteChannelsPass(seed=3), model)
    other, _ = run_pass(PermuteChannelsPass(seed=4), model)
    assert io.to_bytes(first) == io.to_bytes(again)
    assert not np.array_equal(weight(first, "w1"), weight(other, "w1"))


@pytest.mark.parametrize("size", [2, 3, 16, 97])
def test_derangement_is_a_permutation_without_fixed_points(size):
    rng = np.random.default_rng(0)
    for _ in range(20):
        order = derangement(rng, size)
        assert sorted(order) == list(range(size))
        assert not np.any(order == np.arange(size))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(rng, 1)
