from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from modelpress.passes.base import PassManager
from modelpress.passes.fuse_conv_affine import FuseConvAffinePass, channel_vector
from modelpress.passes.registry import passes_for
from tests.testing import (
    assert_equivalent,
    assert_refused,
    assert_rewrites,
    ops,
    run_pass,
    typed_outputs,
)

F32 = ir.DataType.FLOAT
RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def positive(*shape) -> np.ndarray:
    return (RNG.random(shape) + 0.5).astype(np.float32)


def _conv(b, x, c_in=3, c_out=4, bias=True, kernel=(3, 3), **attrs):
    group = attrs.get("group", 1)
    inputs = [x, b.const(rand(c_out, c_in // group, *kernel), "w")]
    if bias:
        inputs.append(b.const(rand(c_out), "b"))
    return b.op("Conv", *inputs, **attrs)


def _assert_folds(model, expected, rtol=1e-5):
    return assert_rewrites(FuseConvAffinePass(), model, expected, rtol=rtol)


def _typed(model, shape):
    return typed_outputs(model, shape)


def _assert_refused(model):
    assert_refused(FuseConvAffinePass(), model)


# --- channel_vector: the per-channel broadcast rule, alone --------------------------------


@pytest.mark.parametrize(
    ("shape", "ok"),
    [
        ((), True),
        ((1,), True),
        ((4, 1, 1), True),
        ((1, 4, 1, 1), True),
        ((1, 1, 1, 1), True),
        ((4,), False),
        ((1, 1, 8, 8), False),
        ((2, 1, 1, 1), False),
        ((1, 1, 4, 1, 1), False),
        ((4, 8, 8), False),
    ],
)
def test_channel_vector_accepts_only_broadcasts_along_axis_1(shape, ok):
    vector = channel_vector(np.ones(shape, np.float32), rank=4, channels=4)
    assert (vector is not None) is ok
    if ok:
        assert vector.shape == (4,) and vector.dtype == np.float64


# --- Conv ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("scale_shape", "shift_shape"), [((4, 1, 1), (4, 1, 1)), ((1, 4, 1, 1), ()), ((), (1,))]
)
def test_conv_mul_add_fold_into_the_conv(bias, scale_shape, shift_shape):
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    y = b.op(
        "Add", b.op("Mul", _conv(b, x, bias=bias), b.const(rand(*scale_shape))), b.const(rand(*shift_shape))
    )
    after = _assert_folds(b.build([b.op("Relu", y)]), {"Conv": 1, "Relu": 1})
    conv = next(iter(after.graph))
    assert conv.inputs[1].name == "w_affine"
    # The Mul wrote <b>_affine; the Add derives from it while it still exists, hence the _1.
    assert conv.inputs[2].name == ("b_affine_1" if bias else "w_bias_affine")


def test_constant_first_and_sub_div_forms_fold():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 8, 8])
    h = b.op("Mul", b.const(rand(4, 1, 1)), _conv(b, x))
    h = b.op("Add", b.const(rand(1, 4, 1, 1)), h)
    h = b.op("Div", h, b.const(positive(4, 1, 1)))
    h = b.op("Sub", h, b.const(rand(4, 1, 1)))
    _assert_folds(b.build([h]), {"Conv": 1})


@pytest.mark.parametrize(
    ("x_shape", "kernel", "const_shape"),
    [([2, 3, 16], (3,), (4, 1)), ([1, 3, 4, 6, 6], (1, 3, 3), (4, 1, 1, 1))],
)
def test_conv1d_and_conv3d_fold(x_shape, kernel, const_shape):
    b = GraphBuilder()
    x = b.input("x", F32, x_shape)
    conv = _conv(b, x, kernel=kernel)
    _assert_folds(
        b.build([b.op("Add", b.op("Mul", conv, b.const(rand(*const_shape))), b.const(rand(*const_shape)))]),
        {"Conv": 1},
    )


def test_grouped_conv_folds():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 4, 8, 8])
    conv = _conv(b, x, c_in=4, c_out=6, group=2, pads=[1, 1, 1, 1])
    _assert_folds(b.build([b.op("Mul", conv, b.const(rand(6, 1, 1)))]), {"Conv": 1})


def test_fp16_conv_folds_within_fp16_tolerance():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT16, [1, 3, 8, 8])
    conv = b.op(
        "Conv", x, b.const(rand(4, 3, 3, 3, dtype=np.float16), "w"), b.const(rand(4, dtype=np.float16), "b")
    )
    y = b.op(
        "Add",
        b.op("Mul", conv, b.const(rand(4, 1, 1, dtype=np.float16))),
        b.const(rand(4, 1, 1, dtype=np.float16)),
    )
    _assert_folds(b.build([y]), {"Conv": 1}, rtol=1e-3)


def test_shared_bias_is_copied_and_new_names_never_collide():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 8, 8])
    bias = b.const(np.zeros(4, np.float32), "b")
    left = b.op("Conv", x, b.const(rand(4, 3, 3, 3), "w"), bias)
    right = b.op("Conv", x, b.const(rand(4, 3, 3, 3), "w2"), bias)
    taken = b.op("Relu", b.const(rand(4, 1, 1), "w_affine"))  # a value already named w_affine
    y = b.op("Add", b.op("Mul", left, taken), b.op("Mul", right, b.const(rand(4, 1, 1))))
    after = _assert_folds(b.build([y]), {"Add": 1, "Conv": 2, "Mul": 1, "Relu": 1})
    convs = [n for n in after.graph if n.op_type == "Conv"]
    # Only the right branch folds: the left Mul's operand is computed, not constant.
    assert {c.inputs[1].name for c in convs} == {"w", "w2_affine"}
    assert "b" in after.graph.initializers  # still used by the left Conv


# --- ConvTranspose, Gemm, BatchNormalization ----------------------------------------------


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_mul_add_fold(group):
    b = GraphBuilder()
    x = b.input("x", F32, [1, 4, 5, 5])
    convt = b.op(
        "ConvTranspose",
        x,
        b.const(rand(4, 3, 3, 3), "w"),
        b.const(rand(3 * group), "b"),
        group=group,
        strides=[2, 2],
    )
    y = b.op("Add", b.op("Mul", convt, b.const(rand(3 * group, 1, 1))), b.const(rand(1, 3 * group, 1, 1)))
    _assert_folds(b.build([y]), {"ConvTranspose": 1})


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (5,), (2, 5), (2, 1)])
def test_gemm_mul_add_fold_along_the_last_axis(trans_b, bias_shape):
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3])
    w = b.const(rand(5, 3) if trans_b else rand(3, 5), "w")
    inputs = [x, w] if bias_shape is None else [x, w, b.const(rand(*bias_shape), "c")]
    gemm = b.op("Gemm", *inputs, transB=trans_b, alpha=0.7, beta=0.5)
    y = b.op("Sub", b.op("Mul", gemm, b.const(rand(5))), b.const(rand(1, 5)))
    _assert_folds(b.build([y]), {"Gemm": 1})


@pytest.mark.parametrize("bias_shape", [None, (5,)])
def test_gemm_add_alone_folds_and_drops_beta(bias_shape):
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3])
    inputs = [x, b.const(rand(3, 5), "w")] + ([] if bias_shape is None else [b.const(rand(*bias_shape), "c")])
    y = b.op("Add", b.op("Gemm", *inputs, beta=0.5), b.const(rand(5)))
    after = _assert_folds(b.build([y]), {"Gemm": 1})
    assert "beta" not in next(iter(after.graph)).attributes


def test_batchnorm_absorbs_the_mul_add_behind_it():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 4, 6, 6])
    bn = b.op(
        "BatchNormalization", b.op("Relu", x), *(b.const(p) for p in (rand(4), rand(4), rand(4), positive(4)))
    )
    y = b.op("Add", b.op("Mul", bn, b.const(rand(4, 1, 1))), b.const(rand(4, 1, 1)))
    _assert_folds(b.build([y]), {"BatchNormalization": 1, "Relu": 1})


# --- refusals: one test each --------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_shape", "const_shape"),
    [
        ([2, 3, 8, 8], (1, 1, 6, 6)),  # varies over spatial axes
        ([2, 3, 8, 8], (4, 6, 6)),  # per channel and spatial
        ([2, 3, 8, 8], (2, 1, 1, 1)),  # varies over the batch
        ([1, 3, 8, 8], (1, 1, 4, 1, 1)),  # higher rank: the output would become rank 5
        ([1, 3, 8, 8], (1, 1, 1, 1, 1)),  # even an all-ones rank-5 constant changes the rank
    ],
)
def test_constant_that_is_not_per_channel_is_refused(x_shape, const_shape):
    b = GraphBuilder()
    x = b.input("x", F32, x_shape)
    _assert_refused(b.build([b.op("Mul", _conv(b, x), b.const(rand(*const_shape)))]))


def _conv_mul(weight=None, bias=None, extra_output=False, conv_is_output=False, operand=None):
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 8, 8])
    w = weight(b) if weight else b.const(rand(4, 3, 3, 3), "w")
    conv = b.op("Conv", x, w, bias(b) if bias else b.const(rand(4), "b"))
    y = b.op("Mul", conv, operand(b) if operand else b.const(rand(4, 1, 1)))
    outputs = [y, conv] if conv_is_output else [y]
    if extra_output:
        outputs.append(b.op("Relu", conv))
    return b.build(outputs)


def test_weight_that_is_a_graph_input_is_refused():
    _assert_refused(_conv_mul(weight=lambda b: b.input("w", F32, [4, 3, 3, 3])))


def test_bias_that_is_a_graph_input_is_refused():
    _assert_refused(_conv_mul(bias=lambda b: b.input("b", F32, [4])))


def test_weight_shared_with_another_conv_is_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 8, 8])
    w = b.const(rand(4, 3, 3, 3), "w")
    y = b.op("Mul", b.op("Conv", x, w), b.const(rand(4, 1, 1)))
    _assert_refused(b.build([y, b.op("Conv", x, w)]))


def test_conv_output_with_other_consumers_is_refused():
    _assert_refused(_conv_mul(extra_output=True))


def test_conv_output_that_is_a_graph_output_is_refused():
    _assert_refused(_conv_mul(conv_is_output=True))


def test_operand_that_is_not_constant_is_refused():
    _assert_refused(_conv_mul(operand=lambda b: b.input("s", F32, [4, 1, 1])))


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_constant_is_refused(value):
    scale = np.ones((4, 1, 1), np.float32)
    scale[1] = value
    _assert_refused(_conv_mul(operand=lambda b: b.const(scale)))


def test_div_by_zero_is_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 8, 8])
    _assert_refused(
        b.build([b.op("Div", _conv(b, x), b.const(np.array([1, 0, 2, 3], np.float32).reshape(4, 1, 1)))])
    )


@pytest.mark.parametrize("op_type", ["Sub", "Div"])
def test_constant_minus_or_over_conv_is_refused(op_type):
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 8, 8])
    _assert_refused(b.build([b.op(op_type, b.const(positive(4, 1, 1)), _conv(b, x))]))


def test_integer_gemm_is_refused():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.INT32, [2, 3])
    gemm = b.op("Gemm", x, b.const(np.ones((3, 5), np.int32)))
    _assert_refused(b.build([b.op("Div", gemm, b.const(np.full(5, 2, np.int32)))]))


def test_gemm_with_a_non_matrix_weight_is_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3])
    gemm = b.op("Gemm", x, b.const(rand(3)))  # invalid model: the fold must not crash on it
    _assert_refused(_typed(b.build([b.op("Mul", gemm, b.const(rand(1)))]), [2, 3]))


def test_conv_transpose_with_indivisible_group_is_refused():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 5, 5])
    convt = b.op("ConvTranspose", x, b.const(rand(3, 2, 3, 3)), group=2)  # invalid: 3 % 2
    _assert_refused(_typed(b.build([b.op("Mul", convt, b.const(rand(1)))]), [1, 4, 7, 7]))


def test_training_mode_batchnorm_is_refused():
    b = GraphBuilder(opset=15)
    x = b.input("x", F32, [2, 4, 6, 6])
    params = [b.const(p) for p in (rand(4), rand(4), rand(4), positive(4))]
    y, _, _ = b.op("BatchNormalization", x, *params, outputs=3, training_mode=1)
    _assert_refused(b.build([b.op("Mul", y, b.const(rand(4, 1, 1)))]))


def test_batchnorm_with_unknown_input_rank_is_refused():
    b = GraphBuilder()
    data = b.input("data", F32, [2, 4, 36])
    target = b.input("target", ir.DataType.INT64, ["r"])
    x = b.op("Reshape", data, target)
    bn = b.op("BatchNormalization", x, *(b.const(p) for p in (rand(4), rand(4), rand(4), positive(4))))
    flat = b.op("Reshape", b.op("Mul", bn, b.const(rand(4, 1, 1))), b.const(np.array([-1], np.int64)))
    _assert_refused(b.build([flat]))


def test_batchnorm_whose_statistics_dtype_differs_from_the_operand_is_refused():
    b = GraphBuilder(opset=15)
    x = b.input("x", ir.DataType.FLOAT16, [2, 4, 6, 6])
    bn = b.op("BatchNormalization", x, *(b.const(p) for p in (rand(4), rand(4), rand(4), positive(4))))
    _assert_refused(b.build([b.op("Mul", bn, b.const(rand(4, 1, 1, dtype=np.float16)))]))


def test_legacy_broadcast_mul_is_refused():
    b = GraphBuilder(opset=6, ir_version=4)
    x = b.input("x", F32, [1, 3, 8, 8])
    conv = b.op("Conv", x, b.const(rand(4, 3, 3, 3)))
    # Opset-6 Mul broadcasts its [C] operand along `axis`, not numpy-style.
    _assert_refused(b.build([b.op("Mul", conv, b.const(rand(4)), broadcast=1, axis=1)]))


# --- property: random producers and affine chains -----------------------------------------


@st.composite
def affine_chains(draw):
    """A Conv/ConvTranspose/Gemm/BN producer and 1-3 element-wise ops with random constants."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    producer = draw(st.sampled_from(["Conv", "ConvTranspose", "Gemm", "BatchNormalization"]))
    channels = draw(st.integers(1, 4))
    b = GraphBuilder()
    if producer == "Gemm":
        x = b.input("x", F32, [3, 2])
        inputs = [x, b.const(rng.standard_normal((2, channels)).astype(np.float32))]
        if draw(st.booleans()):
            inputs.append(b.const(rng.standard_normal(channels).astype(np.float32)))
        h = b.op("Gemm", *inputs, beta=0.5)
        out_shape = [3, channels]
    else:
        x = b.input("x", F32, [2, 2, 4, 4])
        out_shape = [2, channels, 4, 4]
        if producer == "BatchNormalization":
            x = b.op("Conv", x, b.const(rng.standard_normal((channels, 2, 1, 1)).astype(np.float32)))
            stats = [rng.standard_normal(channels), rng.standard_normal(channels), rng.standard_normal(channels),
                     rng.random(channels) + 0.5]  # fmt: skip
            h = b.op("Relu", x)
            h = b.op("BatchNormalization", h, *(b.const(p.astype(np.float32)) for p in stats))
        else:
            w_shape = (channels, 2, 3, 3) if producer == "Conv" else (2, channels, 1, 1)
            h = b.op(producer, x, b.const(rng.standard_normal(w_shape).astype(np.float32)), pads=[0, 0, 0, 0])
            out_shape = [2, channels, 2, 2] if producer == "Conv" else out_shape
    per_channel = True
    for _ in range(draw(st.integers(1, 3))):
        op_type = draw(st.sampled_from(["Mul", "Add", "Sub", "Div"]))
        rank = draw(st.integers(0, len(out_shape)))
        const_shape = [d if draw(st.booleans()) else 1 for d in out_shape[len(out_shape) - rank :]]
        aligned = [1] * (len(out_shape) - rank) + const_shape
        per_channel &= all(d == 1 for i, d in enumerate(aligned) if i != 1)
        value = (rng.random(const_shape) + 0.5).astype(np.float32)
        h = b.op(op_type, h, b.const(value))
    return b.build([h]), producer, per_channel


@given(affine_chains())
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_random_affine_chains_stay_valid_and_equivalent(case):
    model, producer, per_channel = case
    note(f"{producer}: {ops(model)}")
    after, _ = run_pass(FuseConvAffinePass(), model)
    verify(after, full=True)
    assert_equivalent(model, after, seeds=(0, 1), rtol=1e-5)
    if per_channel:
        assert not {"Mul", "Add", "Sub", "Div"} & set(ops(after))


# --- real models --------------------------------------------------------------------------

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "remaining"), [("inception_v2", {}), ("densenet121", {"BatchNormalization": 62})]
)
def test_light_models_collapse_conv_bn_mul_add_chains(name, remaining):
    """Conv -> BN -> Mul -> Add folds into the Conv; densenet's pre-activation BN -> Mul -> Add
    (after a Concat) each end as one BatchNormalization (faster than Mul + Add on onnxruntime)."""
    model = io.load(LIGHT / f"light_{name}.onnx")
    optimized = model.clone()
    PassManager(passes_for("extended"))(optimized)
    verify(optimized, full=True)
    counts = ops(optimized)
    assert {op: counts.get(op, 0) for op in ("BatchNormalization", "Mul", "Add")} == {
        "BatchNormalization": remaining.get("BatchNormalization", 0),
        "Mul": remaining.get("Mul", 0),
        "Add": remaining.get("Add", 0),
    }
    # CSE may merge Convs whose (light-model constant) weights became equal.
    assert counts["Conv"] <= ops(model)["Conv"]
    assert_equivalent(model, optimized, seeds=(0,), rtol=1e-5)
