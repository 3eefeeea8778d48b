import numpy as np
import onnx_ir as ir
import pytest

from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from modelpress.passes.base import PassManager
from modelpress.passes.fuse_batchnorm import FuseBatchNormPass
from modelpress.passes.replace_batchnorm import ReplaceBatchNormWithScalePass
from tests.testing import (
    assert_equivalent,
    assert_refused,
    assert_rewrites,
    ops,
    run_pass,
    serialized,
    typed_outputs,
)

F32 = ir.DataType.FLOAT
RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def positive(*shape, dtype=np.float32) -> np.ndarray:
    return (RNG.random(shape) + 0.5).astype(dtype)


def _stats(b, channels=4, dtype=np.float32, var=None):
    params = (rand(channels, dtype=dtype), rand(channels, dtype=dtype), rand(channels, dtype=dtype))
    return [
        *(b.const(p) for p in params),
        var if var is not None else b.const(positive(channels, dtype=dtype)),
    ]


def _relu_bn(shape, dtype=F32, np_dtype=np.float32, opset=17, **attrs):
    """x -> Relu -> BatchNormalization -> y: a BN that no producer can absorb."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", dtype, shape)
    return b, b.op("BatchNormalization", b.op("Relu", x), *_stats(b, shape[1], np_dtype), **attrs)


def _assert_replaced(model, rtol=1e-5, dim_values=None):
    expected = {"Relu": 1, "Mul": 1, "Add": 1}
    return assert_rewrites(
        ReplaceBatchNormWithScalePass(always=True), model, expected, rtol=rtol, dim_values=dim_values
    )


def _typed(model, shape):
    return typed_outputs(model, shape)


def _assert_refused(model):
    assert_refused(ReplaceBatchNormWithScalePass(always=True), model)


@pytest.mark.parametrize(
    ("shape", "const_shape"),
    [([8, 4], (4,)), ([2, 4, 10], (4, 1)), ([2, 4, 6, 6], (4, 1, 1)), ([1, 4, 3, 4, 5], (4, 1, 1, 1))],
)
def test_batchnorm_becomes_mul_add_with_channel_constants(shape, const_shape):
    b, y = _relu_bn(shape)
    after = _assert_replaced(b.build([y]))
    mul = next(n for n in after.graph if n.op_type == "Mul")
    add = next(n for n in after.graph if n.op_type == "Add")
    assert mul.inputs[1].name == "BatchNormalization_6_scale"
    assert add.inputs[1].name == "BatchNormalization_6_shift"
    assert mul.inputs[1].shape == ir.Shape(const_shape) == add.inputs[1].shape


def test_epsilon_attribute_is_used():
    b, y = _relu_bn([2, 4, 6, 6], epsilon=0.5)
    _assert_replaced(b.build([y]))


def test_symbolic_batch_dim():
    b, y = _relu_bn(["N", 4, 6, 6])
    _assert_replaced(b.build([y]), dim_values={"N": 3})


def test_fp16_batchnorm_within_fp16_tolerance():
    b, y = _relu_bn([2, 4, 6, 6], dtype=ir.DataType.FLOAT16, np_dtype=np.float16)
    _assert_replaced(b.build([y]), rtol=1e-3)


def test_new_names_never_collide():
    b, y = _relu_bn([2, 4, 6, 6])
    taken = b.op("Relu", b.const(rand(4, 1, 1), "BatchNormalization_6_scale"))
    model = b.build([b.op("Add", y, taken)])
    after, changed = run_pass(ReplaceBatchNormWithScalePass(always=True), model)
    assert changed is True
    verify(after, full=True)
    mul = next(n for n in after.graph if n.op_type == "Mul")
    assert mul.inputs[1].name == "BatchNormalization_6_scale_1"
    assert_equivalent(model, after, seeds=(0, 1, 2), rtol=1e-5)


def test_only_batchnorms_that_could_not_be_folded_are_replaced():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 8, 8])
    conv = b.op("Conv", x, b.const(rand(4, 3, 3, 3)), b.const(rand(4)))
    folded = b.op("BatchNormalization", conv, *_stats(b))
    kept = b.op("BatchNormalization", b.op("Relu", folded), *_stats(b))
    model = b.build([kept])
    after = model.clone()
    PassManager([FuseBatchNormPass(), ReplaceBatchNormWithScalePass(always=True)])(after)
    assert ops(after) == {"Conv": 1, "Relu": 1, "Mul": 1, "Add": 1}
    verify(after, full=True)
    assert_equivalent(model, after, seeds=(0, 1, 2), rtol=1e-5)


# --- refusals: one test each --------------------------------------------------------------


def test_training_mode_batchnorm_is_refused():
    b = GraphBuilder(opset=15)
    x = b.input("x", F32, [2, 4, 6, 6])
    y, _, _ = b.op("BatchNormalization", x, *_stats(b), outputs=3, training_mode=1)
    _assert_refused(b.build([y]))


def test_batchnorm_with_used_running_statistics_is_refused():
    b = GraphBuilder(opset=15)
    x = b.input("x", F32, [2, 4, 6, 6])
    y, mean, _ = b.op("BatchNormalization", x, *_stats(b), outputs=3, training_mode=1)
    _assert_refused(b.build([y, mean]))


def test_non_constant_statistics_are_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 4, 6, 6])
    _assert_refused(b.build([b.op("BatchNormalization", x, *_stats(b, var=b.input("var", F32, [4])))]))


def test_per_activation_statistics_are_refused():
    b = GraphBuilder(opset=7, ir_version=4)
    x = b.input("x", F32, [2, 4, 3, 3])
    # BatchNormalization-7 with spatial=0: statistics per (C, H, W), not per channel.
    params = [b.const(p) for p in (rand(4, 3, 3), rand(4, 3, 3), rand(4, 3, 3), positive(4, 3, 3))]
    _assert_refused(b.build([b.op("BatchNormalization", x, *params, spatial=0)]))


def test_unknown_input_rank_is_refused():
    b = GraphBuilder()
    data = b.input("data", F32, [2, 4, 36])
    x = b.op("Reshape", data, b.input("target", ir.DataType.INT64, ["r"]))
    bn = b.op("BatchNormalization", x, *_stats(b))
    _assert_refused(b.build([b.op("Reshape", bn, b.const(np.array([-1], np.int64)))]))


def test_rank_1_input_is_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [4])
    model = b.build([b.op("BatchNormalization", x, *_stats(b))])  # invalid: BN needs (N, C, ...)
    _assert_refused(_typed(model, [4]))


def test_statistics_dtype_differing_from_input_is_refused():
    b = GraphBuilder(opset=15)
    x = b.input("x", ir.DataType.FLOAT16, [2, 4, 6, 6])
    _assert_refused(b.build([b.op("BatchNormalization", x, *_stats(b))]))


def test_channel_count_mismatch_is_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 4, 6, 6])
    model = b.build([b.op("BatchNormalization", x, *_stats(b, channels=3))])  # invalid model
    _assert_refused(_typed(model, [2, 4, 6, 6]))


def test_opset_6_is_refused():
    b = GraphBuilder(opset=6, ir_version=4)
    x = b.input("x", F32, [2, 4, 6, 6])
    _assert_refused(b.build([b.op("BatchNormalization", x, *_stats(b), is_test=1)]))


def test_by_default_a_lone_batchnorm_is_kept_because_it_is_faster_than_mul_add():
    b, y = _relu_bn([2, 4, 5, 5])
    model = b.build([b.op("Relu", y)])
    after, changed = run_pass(ReplaceBatchNormWithScalePass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


@pytest.mark.parametrize("neighbour", ["Mul-after", "Add-after", "Sub-before"])
def test_by_default_a_batchnorm_next_to_a_constant_affine_op_is_replaced(neighbour):
    b = GraphBuilder()
    x = b.input("x", F32, [2, 4, 5, 5])
    h = b.op("Relu", x)
    if neighbour == "Sub-before":
        h = b.op("Sub", h, b.const(rand(4, 1, 1)))
    y = b.op("BatchNormalization", h, *_stats(b))
    if neighbour == "Mul-after":
        y = b.op("Mul", y, b.const(rand(4, 1, 1)))
    if neighbour == "Add-after":
        y = b.op("Add", b.const(rand(4, 1, 1)), y)
    model = b.build([b.op("Relu", y)])
    after, changed = run_pass(ReplaceBatchNormWithScalePass(), model)
    assert changed is True
    assert "BatchNormalization" not in ops(after)
    assert_equivalent(model, after, rtol=1e-5)
