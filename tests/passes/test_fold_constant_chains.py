import numpy as np
import onnx_ir as ir
import pytest

from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from modelpress.passes.fold_constant_chains import FoldConstantChainsPass
from tests.testing import (
    assert_equivalent,
    assert_refused,
    assert_rewrites,
    ops,
    run_pass,
    serialized,
)

F32 = ir.DataType.FLOAT
RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32) -> np.ndarray:
    return (RNG.random(shape) + 0.5).astype(dtype)


def _folds(model, expected_ops, *, rtol=1e-5):
    return assert_rewrites(FoldConstantChainsPass(), model, expected_ops, rtol=rtol)


def _refused(model):
    assert_refused(FoldConstantChainsPass(), model)


def _const(model, node_index, input_index):
    return list(model.graph)[node_index].inputs[input_index].const_value.numpy()


# --- positive cases ------------------------------------------------------------------------


def test_two_adds_fold_into_one():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 4, 3])
    c1, c2 = rand(4, 1), rand(4, 1)
    y = b.op("Add", b.op("Add", x, b.const(c1, "c1")), b.const(c2, "c2"))
    after = _folds(b.build([y]), {"Add": 1})
    np.testing.assert_allclose(_const(after, 0, 1), c1 + c2)
    assert next(iter(after.graph)).inputs[0].name == "x"
    assert after.graph.outputs[0].name == y.name


def test_mul_then_div_folds_into_one_mul():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 4])
    c1, c2 = rand(4), rand(4)
    y = b.op("Div", b.op("Mul", b.const(c1, "c1"), x), b.const(c2, "c2"))
    after = _folds(b.build([y]), {"Mul": 1})
    np.testing.assert_allclose(_const(after, 0, 1), c1 / c2, rtol=1e-7)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (("Sub", "x_c"), ("Add", "x_c"), {"Add": 1}),  # (x - c1) + c2 = x + (c2 - c1)
        (("Add", "c_x"), ("Sub", "x_c"), {"Add": 1}),
        (("Sub", "c_x"), ("Add", "c_x"), {"Sub": 1}),  # (c1 - x) + c2 = (c1 + c2) - x
        (("Sub", "c_x"), ("Sub", "c_x"), {"Add": 1}),  # c2 - (c1 - x) = x + (c2 - c1)
        (("Mul", "c_x"), ("Mul", "x_c"), {"Mul": 1}),
        (("Div", "x_c"), ("Div", "x_c"), {"Mul": 1}),
        (("Sub", "c_x"), ("Mul", "x_c"), None),  # -c2*x + c1*c2: still two nodes, refused
        (("Add", "x_c"), ("Mul", "c_x"), None),
    ],
)
def test_pairs_of_steps(first, second, expected):
    b = GraphBuilder()
    x = b.input("x", F32, [3, 5])

    def step(t, op_type, order):
        c = b.const(rand(5))
        return b.op(op_type, t, c) if order == "x_c" else b.op(op_type, c, t)

    model = b.build([step(step(x, *first), *second)])
    if expected is None:
        _refused(model)
    else:
        _folds(model, expected)


def test_scale_shift_twice_collapses_into_one_mul_add():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 4, 5, 5])
    s1, t1, s2, t2 = rand(4, 1, 1), rand(4, 1, 1), rand(1, 4, 1, 1), rand(4, 1, 1)
    y = b.op("Mul", x, b.const(s1, "bn1_scale"))
    y = b.op("Add", y, b.const(t1, "bn1_shift"))
    y = b.op("Mul", y, b.const(s2, "bn2_scale"))
    y = b.op("Add", y, b.const(t2, "bn2_shift"))
    after = _folds(b.build([b.op("Relu", y)]), {"Mul": 1, "Add": 1, "Relu": 1})
    assert [n.op_type for n in after.graph] == ["Mul", "Add", "Relu"]
    np.testing.assert_allclose(_const(after, 0, 1), s1 * s2, rtol=1e-6)
    np.testing.assert_allclose(_const(after, 1, 1), t1 * s2 + t2, rtol=1e-6)


def test_long_chain_of_every_op_folds_into_mul_add():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 6])
    y = b.op("Add", x, b.const(rand(6)))
    y = b.op("Mul", y, b.const(rand(1, 6)))
    y = b.op("Sub", y, b.const(rand(6)))
    y = b.op("Div", y, b.const(rand(1)))
    y = b.op("Sub", b.const(rand()), y)
    y = b.op("Mul", b.const(rand(1, 6)), y)
    _folds(b.build([y]), {"Mul": 1, "Add": 1})


def test_lone_float_div_is_kept_so_runtime_gelu_fusion_still_matches():
    b = GraphBuilder()
    x = b.input("x", F32, [3, 4])
    model = b.build([b.op("Erf", b.op("Div", x, b.const(np.float32(2**0.5), "c")))])
    after, changed = run_pass(FoldConstantChainsPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_scalar_constants_broadcast_to_the_joint_shape_when_one_factor_cancels():
    b = GraphBuilder()
    x = b.input("x", F32, [3])
    y = b.op("Mul", b.op("Mul", x, b.const(np.full((2, 3), 4.0, np.float32))), b.const(np.float32(0.25)))
    after = _folds(b.build([y]), {"Add": 1})  # x * 1 + 0, kept as Add(x, zeros[2, 3]) for the shape
    assert _const(after, 0, 1).shape == (2, 3)
    assert list(after.graph.outputs[0].shape) == [2, 3]


def test_integer_chains_fold_exactly_with_wrap_around():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.INT32, [4])
    big = np.array([2**30, 3, -7, 2**31 - 1], np.int32)
    y = b.op("Add", b.op("Mul", b.op("Add", x, b.const(big)), b.const(np.array([3], np.int32))), b.const(big))
    _folds(b.build([y]), {"Mul": 1, "Add": 1}, rtol=0.0)


def test_float16_chain():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT16, [2, 3])
    y = b.op("Add", b.op("Add", x, b.const(rand(3, dtype=np.float16))), b.const(rand(3, dtype=np.float16)))
    _folds(b.build([y]), {"Add": 1}, rtol=1e-3)  # fp16 tolerance (STYLE.md §4.3)


# --- refusals --------------------------------------------------------------------------------


def test_refuses_when_an_intermediate_has_another_consumer():
    b = GraphBuilder()
    x = b.input("x", F32, [4])
    t = b.op("Add", x, b.const(rand(4)))
    _refused(b.build([b.op("Add", t, b.const(rand(4))), b.op("Relu", t)]))


def test_refuses_when_an_intermediate_is_a_graph_output():
    b = GraphBuilder()
    x = b.input("x", F32, [4])
    t = b.op("Mul", x, b.const(rand(4)))
    _refused(b.build([b.op("Mul", t, b.const(rand(4))), t]))


def test_refuses_integer_division():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.INT64, [4])
    t = b.op("Div", x, b.const(np.array([3, 3, 3, 3], np.int64)))
    _refused(b.build([b.op("Div", t, b.const(np.array([2], np.int64)))]))


def test_refuses_constant_numerator_division():
    b = GraphBuilder()
    x = b.input("x", F32, [4])
    _refused(b.build([b.op("Div", b.const(rand(4)), b.op("Div", b.const(rand(4)), x))]))


def test_refuses_a_folded_constant_larger_than_its_parts():
    b = GraphBuilder()
    x = b.input("x", F32, [4, 5])
    y = b.op("Add", b.op("Add", x, b.const(rand(4, 1))), b.const(rand(1, 5)))
    _refused(b.build([y]))


def test_refuses_non_finite_constants():
    b = GraphBuilder()
    x = b.input("x", F32, [4])
    y = b.op(
        "Mul",
        b.op("Mul", x, b.const(np.array([0.0, 1.0, 2.0, 3.0], np.float32))),
        b.const(np.float32(np.inf)),
    )
    _refused(b.build([y]))


def test_refuses_a_folded_constant_that_overflows_the_dtype():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT16, [4])
    c = b.const(np.full(4, 300.0, np.float16))
    _refused(b.build([b.op("Mul", b.op("Mul", x, c), b.const(np.full(4, 300.0, np.float16)))]))


def test_refuses_division_by_zero():
    b = GraphBuilder()
    x = b.input("x", F32, [2])
    _refused(b.build([b.op("Div", x, b.const(np.array([0.0, 2.0], np.float32)))]))


def test_refuses_a_chain_with_nothing_to_gain():
    b = GraphBuilder()
    x = b.input("x", F32, [3, 4])
    y = b.op("Add", b.op("Mul", x, b.const(rand(4))), b.const(rand(4)))  # already Mul + Add
    _refused(b.build([y]))


def test_refuses_lone_sub_and_lone_add():
    b = GraphBuilder()
    x = b.input("x", F32, [3, 4])
    _refused(b.build([b.op("Sub", x, b.const(rand(4))), b.op("Add", x, b.const(rand(4)))]))


def test_refuses_two_non_constant_operands():
    b = GraphBuilder()
    x, z = b.input("x", F32, [4]), b.input("z", F32, [4])
    _refused(b.build([b.op("Add", b.op("Add", x, z), b.const(rand(4)))]))


def test_symbolic_batch_dim():
    b = GraphBuilder()
    x = b.input("x", F32, ["N", 4])
    y = b.op("Mul", b.op("Add", b.op("Mul", x, b.const(rand(4))), b.const(rand(1, 4))), b.const(rand(4)))
    model = b.build([y])
    verify(model, full=True)
    after, changed = run_pass(FoldConstantChainsPass(), model)
    assert changed is True and ops(after) == {"Mul": 1, "Add": 1}
    assert_equivalent(model, after, seeds=(0, 1, 2), rtol=1e-5, dim_values={"N": 3})


def test_new_initializer_names_never_collide():
    b = GraphBuilder()
    x = b.input("x", F32, [4])
    taken = b.op("Relu", x)
    taken.name = "c2_scale"
    y = b.op("Mul", b.op("Mul", taken, b.const(rand(4), "c1")), b.const(rand(4), "c2"))
    after = _folds(b.build([y]), {"Relu": 1, "Mul": 1})
    assert "c2_scale_1" in after.graph.initializers
