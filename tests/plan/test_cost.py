"""modelpress.plan.cost: FLOPs against hand formulas, bytes, unknown nodes, liveness."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.plan.cost import model_cost
from modelpress.runtime.feeds import DEFAULT_DIM

HEADER = '<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>'


def _model(body: str, weights: dict[str, np.ndarray] | None = None) -> ir.Model:
    model = io.from_text(HEADER + body)
    for name, data in (weights or {}).items():
        value = ir.Value(name=name, const_value=ir.tensor(data, name=name))
        model.graph.initializers[name] = value
        # Rewire the graph input of the same name (declared in the text) to the initializer.
        for node in model.graph:
            for index, inp in enumerate(node.inputs):
                if inp is not None and inp.name == name:
                    node.replace_input_with(index, value)
    return model


def _only(cost, op_type):
    (node,) = [n for n in cost.nodes if n.op_type == op_type]
    return node


def test_conv_with_groups_stride_pads_and_bias():
    model = _model(
        """g (float[N, 8, 16, 16] x) => (float[N, 16, 8, 8] y) {
            w = Constant <value = float[16, 4, 3, 3] {0}> ()
            b = Constant <value = float[16] {0}> ()
            y = Conv <group = 2, strides = [2, 2], pads = [1, 1, 1, 1]> (x, w, b)
        }"""
    )
    cost = model_cost(model, batch=3, element_bytes=4)
    # Each of 3*16*8*8 outputs is a dot product over (8/2)*3*3 inputs, plus the bias add.
    outputs = 3 * 16 * 8 * 8
    assert _only(cost, "Conv").flops == 2 * outputs * (4 * 3 * 3) + outputs
    conv = _only(cost, "Conv")
    assert conv.input_bytes == 3 * 8 * 16 * 16 * 4
    assert conv.output_bytes == outputs * 4
    assert conv.weight_bytes == (16 * 4 * 9 + 16) * 4
    assert cost.weight_bytes == (16 * 4 * 9 + 16) * 4
    assert cost.batch == 3 and cost.dims == {"N": 3}


def test_conv_with_dilation_and_conv_transpose():
    model = _model(
        """g (float[1, 4, 10, 10] x) => (float[1, 6, 6, 6] y, float[1, 2, 20, 20] z) {
            w = Constant <value = float[6, 4, 3, 3] {0}> ()
            y = Conv <dilations = [2, 2]> (x, w)
            wt = Constant <value = float[4, 2, 2, 2] {0}> ()
            z = ConvTranspose <strides = [2, 2]> (x, wt)
        }"""
    )
    cost = model_cost(model, element_bytes=4)
    assert _only(cost, "Conv").flops == 2 * (6 * 6 * 6) * (4 * 3 * 3)
    # Every input element is scattered into M/group * k*k = 2*2*2 outputs.
    assert _only(cost, "ConvTranspose").flops == 2 * (4 * 10 * 10) * (2 * 2 * 2)


def test_gemm_with_trans_a_and_c():
    model = _model(
        """g (float[5, 3] a, float[5, 7] b, float[7] c) => (float[3, 7] y) {
            y = Gemm <transA = 1> (a, b, c)
        }"""
    )
    assert _only(model_cost(model), "Gemm").flops == 2 * 3 * 7 * 5 + 3 * 7


def test_batched_matmul_with_broadcasting():
    model = _model(
        """g (float[2, 1, 4, 5] a, float[3, 5, 6] b) => (float[2, 3, 4, 6] y) {
            y = MatMul(a, b)
        }"""
    )
    cost = model_cost(model, element_bytes=2)
    assert cost.total_flops == 2 * (2 * 3 * 4 * 6) * 5
    node = _only(cost, "MatMul")
    assert node.input_bytes == (2 * 4 * 5 + 3 * 5 * 6) * 2 and node.output_bytes == 2 * 3 * 4 * 6 * 2


def test_attention_block_is_costed_by_its_matmuls_and_softmax():
    model = _model(
        """g (float[B, 2, S, 4] q, float[B, 2, S, 4] k, float[B, 2, S, 4] v) => (float[B, 2, S, 4] o) {
            kt = Transpose <perm = [0, 1, 3, 2]> (k)
            s = MatMul(q, kt)
            p = Softmax <axis = -1> (s)
            o = MatMul(p, v)
        }"""
    )
    cost = model_cost(model, {"S": 8}, batch=1)
    scores = 2 * 8 * 8  # heads * S * S
    assert cost.by_op["MatMul"].flops == 2 * scores * 4 + 2 * (2 * 8 * 4) * 8
    assert cost.by_op["Softmax"].flops == 5 * scores
    assert cost.by_op["Transpose"].flops == 0
    assert cost.total_flops == 2 * scores * 4 + 5 * scores + 2 * (2 * 8 * 4) * 8 == 2688


def test_transpose_moves_bytes_at_the_element_size():
    model = _model("g (float[2, 3, 4] x) => (float[4, 3, 2] y) { y = Transpose <perm = [2, 1, 0]> (x) }")
    assert _only(model_cost(model, element_bytes=4), "Transpose").bytes_moved == 2 * 24 * 4
    node = _only(model_cost(model, element_bytes=2), "Transpose")
    assert (node.flops, node.input_bytes, node.output_bytes) == (0, 48, 48)


def test_gather_reads_only_the_gathered_rows_and_int_indices_keep_their_size():
    table = np.zeros((1000, 16), np.float32)
    model = _model(
        "g (float[1000, 16] table, int64[N, 5] ids) => (float[N, 5, 16] y) { y = Gather(table, ids) }",
        {"table": table},
    )
    node = _only(model_cost(model, batch=2, element_bytes=2), "Gather")
    assert node.weight_bytes == 2 * 5 * 16 * 2  # rows read, not the table
    assert node.input_bytes == 2 * 5 * 8  # int64 indices stay 8 bytes
    assert model_cost(model, batch=2, element_bytes=2).weight_bytes == 1000 * 16 * 2


def test_unknown_shapes_and_ops_are_listed_not_zeroed():
    model = _model(
        """g (float[N, 12] x, int64[2] s) => (float[N, 12] y, float[?, ?] z) {
            y = custom.Mystery(x)
            r = Reshape(x, s)
            z = Relu(r)
        }"""
    )
    cost = model_cost(model, batch=2)
    reasons = {u.op_type: u.reason for u in cost.unknown}
    assert set(reasons) == {"custom::Mystery", "Reshape", "Relu"}
    assert "no cost formula" in reasons["custom::Mystery"]
    assert "not inferred" in reasons["Reshape"] and "not inferred" in reasons["Relu"]
    assert cost.nodes == []


def test_static_shape_arithmetic_is_not_costed():
    model = _model(
        """g (float[N, 4, 6] x) => (float[N, 24] y) {
            zero = Constant <value = int64 {0}> ()
            axes = Constant <value = int64[1] {0}> ()
            minus_one = Constant <value = int64[1] {-1}> ()
            shape = Shape(x)
            n = Gather <axis = 0> (shape, zero)
            n1 = Unsqueeze(n, axes)
            target = Concat <axis = 0> (n1, minus_one)
            y = Reshape(x, target)
        }"""
    )
    cost = model_cost(model, batch=3, element_bytes=4)
    assert [n.op_type for n in cost.nodes] == ["Reshape"], cost.unknown
    assert cost.static_nodes == 7 and cost.unknown == []
    reshape = _only(cost, "Reshape")
    # The data is an activation; the computed int64 shape counts as a constant read.
    assert (reshape.input_bytes, reshape.weight_bytes) == (3 * 24 * 4, 2 * 8)


def test_unbound_dims_default_like_random_feeds():
    model = _model("g (float[N, T] x) => (float[N, T] y) { y = Relu(x) }")
    cost = model_cost(model)
    assert cost.dims == {"N": DEFAULT_DIM, "T": DEFAULT_DIM} and cost.total_flops == DEFAULT_DIM**2
    assert model_cost(model, {"*": 5}, batch=1).total_flops == 5
    with pytest.raises(UsageError, match="size >= 1"):
        model_cost(model, {"T": 0})


def test_liveness_peak_on_a_small_chain():
    model = _model(
        """g (float[1, 100] x) => (float[1, 100] c) {
            a = Relu(x)
            b = Relu(a)
            c = Add(a, b)
        }"""
    )
    # x dies after the first Relu; a, b and c are live together at the Add: 3 * 400 bytes.
    assert model_cost(model, element_bytes=4).peak_activation_bytes == 1200
    assert model_cost(model, element_bytes=2).peak_activation_bytes == 600
