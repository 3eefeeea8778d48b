import numpy as np
import onnx_ir as ir
import pytest

from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from modelpress.passes.fuse_batchnorm import FuseBatchNormPass, batchnorm_scale_shift
from tests.testing import (
    assert_equivalent,
    assert_refused,
    assert_rewrites,
    ops,
    run_pass,
)

F32 = ir.DataType.FLOAT
RNG = np.random.default_rng(0)


def rand(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def positive(*shape) -> np.ndarray:
    return (RNG.random(shape) + 0.5).astype(np.float32)


def _bn(b, h, channels=4, outputs=1, **attrs):
    params = [b.const(p) for p in (rand(channels), rand(channels), rand(channels), positive(channels))]
    return b.op("BatchNormalization", h, *params, outputs=outputs, **attrs)


def _assert_folds(model, expected):
    return assert_rewrites(FuseBatchNormPass(), model, expected)


def _assert_refused(model):
    assert_refused(FuseBatchNormPass(), model)


def test_scale_shift_matches_the_batchnorm_formula():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3])
    bn = _bn(b, x, channels=3, epsilon=0.25).producer()
    gamma, beta, mean, var = (v.const_value.numpy().astype(np.float64) for v in bn.inputs[1:])
    scale, shift = batchnorm_scale_shift(bn)
    np.testing.assert_allclose(scale, gamma / np.sqrt(var + 0.25), rtol=1e-6)
    np.testing.assert_allclose(shift, beta - mean * gamma / np.sqrt(var + 0.25), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("x_shape", "kernel"), [([2, 3, 16], (3,)), ([2, 3, 8, 8], (3, 3)), ([1, 3, 4, 6, 6], (1, 3, 3))]
)
def test_conv_batchnorm_folds_into_the_conv(bias, x_shape, kernel):
    b = GraphBuilder()
    x = b.input("x", F32, x_shape)
    inputs = [x, b.const(rand(4, 3, *kernel), "w")] + ([b.const(rand(4), "b")] if bias else [])
    after = _assert_folds(b.build([_bn(b, b.op("Conv", *inputs), epsilon=1e-3)]), {"Conv": 1})
    conv = next(iter(after.graph))
    assert conv.inputs[1].name == "w_bnfold"
    assert conv.inputs[2].name == ("b_bnfold" if bias else "w_bias_bnfold")


def test_grouped_conv_folds():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 4, 8, 8])
    conv = b.op("Conv", x, b.const(rand(6, 2, 3, 3)), group=2, pads=[1, 1, 1, 1])
    _assert_folds(b.build([_bn(b, conv, channels=6)]), {"Conv": 1})


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_batchnorm_folds(group):
    b = GraphBuilder()
    x = b.input("x", F32, [1, 4, 5, 5])
    convt = b.op(
        "ConvTranspose", x, b.const(rand(4, 3, 3, 3)), b.const(rand(3 * group)), group=group, strides=[2, 2]
    )
    _assert_folds(b.build([_bn(b, convt, channels=3 * group)]), {"ConvTranspose": 1})


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (5,), (2, 5)])
def test_gemm_batchnorm_folds(trans_b, bias_shape):
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3])
    inputs = [x, b.const(rand(5, 3) if trans_b else rand(3, 5))]
    inputs += [] if bias_shape is None else [b.const(rand(*bias_shape))]
    gemm = b.op("Gemm", *inputs, transB=trans_b, alpha=0.7, beta=0.5)
    _assert_folds(b.build([_bn(b, gemm, channels=5)]), {"Gemm": 1})


def test_matmul_batchnorm_becomes_gemm():
    b = GraphBuilder()
    x = b.input("x", F32, ["N", 3])
    y = _bn(b, b.op("MatMul", x, b.const(rand(3, 5), "w")), channels=5)
    model = b.build([y])
    after, changed = run_pass(FuseBatchNormPass(), model)
    assert changed is True
    assert ops(after) == {"Gemm": 1}
    verify(after, full=True)
    assert_equivalent(model, after, seeds=(0, 1, 2), rtol=1e-5, dim_values={"N": 4})
    assert [v.name for v in next(iter(after.graph)).inputs[1:]] == ["w_bnfold", "w_bnfold_bias"]
    assert run_pass(FuseBatchNormPass(), after)[1] is False


@pytest.mark.parametrize("producer", ["Conv", "MatMul"])
def test_new_names_never_replace_an_existing_initializer(producer):
    """onnxscript names the fused bias <W>_bias and would overwrite an initializer of that name."""
    b = GraphBuilder()
    if producer == "Conv":
        x = b.input("x", F32, [1, 3, 8, 8])
        h, taken = b.op("Conv", x, b.const(rand(4, 3, 3, 3), "w")), ("w_bias_bnfold", (4, 1, 1))
    else:
        x = b.input("x", F32, [2, 3])
        h, taken = b.op("MatMul", x, b.const(rand(3, 4), "w")), ("w_bnfold", (4,))
    y = b.op("Add", _bn(b, h), b.const(rand(*taken[1]), taken[0]))
    after = _assert_folds(b.build([y]), {producer if producer == "Conv" else "Gemm": 1, "Add": 1})
    assert taken[0] in after.graph.initializers
    assert next(iter(after.graph)).inputs[1].name != taken[0]


# --- refusals: one test each --------------------------------------------------------------


def _conv_bn(weight=None, var=None, bn_outputs=1, extra=None, **bn_attrs):
    b = GraphBuilder(opset=15)
    x = b.input("x", F32, [2, 3, 8, 8])
    conv = b.op("Conv", x, weight(b) if weight else b.const(rand(4, 3, 3, 3), "w"))
    params = [b.const(p) for p in (rand(4), rand(4), rand(4))]
    params.append(var(b) if var else b.const(positive(4)))
    outs = b.op("BatchNormalization", conv, *params, outputs=bn_outputs, **bn_attrs)
    outs = list(outs) if bn_outputs > 1 else [outs]
    return b.build(extra(b, conv, outs) if extra else outs[:1])


def test_training_mode_batchnorm_is_refused():
    # Regression: onnxscript's rules fold it (its running-stat outputs are unused), though it
    # normalizes with the batch's statistics.
    _assert_refused(_conv_bn(bn_outputs=3, training_mode=1))


def test_batchnorm_with_used_running_statistics_is_refused():
    _assert_refused(_conv_bn(bn_outputs=3, training_mode=1, extra=lambda b, conv, outs: outs))


def test_weight_that_is_a_graph_input_is_refused():
    _assert_refused(_conv_bn(weight=lambda b: b.input("w", F32, [4, 3, 3, 3])))


def test_non_constant_statistics_are_refused():
    _assert_refused(_conv_bn(var=lambda b: b.input("var", F32, [4])))


def test_conv_output_with_other_consumers_is_refused():
    _assert_refused(_conv_bn(extra=lambda b, conv, outs: [outs[0], b.op("Relu", conv)]))


def test_weight_shared_with_another_conv_is_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 8, 8])
    w = b.const(rand(4, 3, 3, 3), "w")
    _assert_refused(b.build([_bn(b, b.op("Conv", x, w)), b.op("Conv", x, w)]))


def test_per_activation_statistics_are_refused():
    b = GraphBuilder(opset=7, ir_version=4)
    x = b.input("x", F32, [2, 3, 6, 6])
    conv = b.op("Conv", x, b.const(rand(4, 3, 3, 3)))
    # BatchNormalization-7 with spatial=0: statistics per (C, H, W), not per channel.
    params = [b.const(p) for p in (rand(4, 4, 4), rand(4, 4, 4), rand(4, 4, 4), positive(4, 4, 4))]
    _assert_refused(b.build([b.op("BatchNormalization", conv, *params, spatial=0)]))


def test_matmul_with_rank_3_input_is_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 5, 3])  # BN's channel axis 1 is 5 rows here, not W's columns
    _assert_refused(b.build([_bn(b, b.op("MatMul", x, b.const(rand(3, 5))), channels=5)]))


def test_matmul_with_shared_weight_is_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3])
    w = b.const(rand(3, 5))
    _assert_refused(b.build([_bn(b, b.op("MatMul", x, w), channels=5), b.op("MatMul", x, w)]))


def test_matmul_with_non_constant_weight_is_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3])
    _assert_refused(b.build([_bn(b, b.op("MatMul", x, b.input("w", F32, [3, 5])), channels=5)]))
