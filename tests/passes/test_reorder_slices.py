import numpy as np
import onnx_ir as ir
import pytest

from modelpress.ir.build import GraphBuilder
from modelpress.passes._slicing import SliceAxis, slice_constant, slice_indices
from modelpress.passes.reorder_slices import MoveSlicesUpPass
from tests.testing import (
    assert_refused,
    assert_rewrites,
)

F32 = ir.DataType.FLOAT
I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min
RNG = np.random.default_rng(0)


def rand(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _slice(b, data, starts, ends, axes=None, steps=None, index_dtype=np.int64):
    inputs = [data, b.const(np.array(starts, index_dtype)), b.const(np.array(ends, index_dtype))]
    if axes is not None or steps is not None:
        inputs.append(None if axes is None else b.const(np.array(axes, index_dtype)))
    if steps is not None:
        inputs.append(b.const(np.array(steps, index_dtype)))
    return b.op("Slice", *inputs)


def _moves(model, expected_ops, *, dim_values=None):
    # The same element-wise kernels on fewer elements; 1e-5 only because onnxruntime's
    # vectorized kernels may round the tail of a buffer differently from its body.
    return assert_rewrites(MoveSlicesUpPass(), model, expected_ops, rtol=1e-5, dim_values=dim_values)


def _refused(model):
    assert_refused(MoveSlicesUpPass(), model)


def _order(model):
    return [n.op_type for n in model.graph]


def _slice_node(model):
    (node,) = [n for n in model.graph if n.op_type == "Slice"]
    return node


def _initializer_shape(model, prefix):
    (value,) = [v for name, v in model.graph.initializers.items() if name.startswith(prefix)]
    return tuple(value.const_value.shape)


# --- slice_indices / slice_constant: ONNX Slice semantics, alone ---------------------------


@pytest.mark.parametrize(
    ("start", "end", "step", "dim", "expected"),
    [
        (0, 3, 1, 5, [0, 1, 2]),
        (-2, I64_MAX, 1, 5, [3, 4]),
        (1, 100, 2, 5, [1, 3]),
        (-100, 2, 1, 5, [0, 1]),
        (I64_MAX, I64_MIN, -1, 5, [4, 3, 2, 1, 0]),
        (-1, -6, -2, 5, [4, 2, 0]),
        (-100, -200, -1, 5, [0]),  # start clamps to 0 for negative steps (numpy would give [])
        (3, 3, 1, 5, []),
        (10, 20, 1, 5, []),
        (0, 1, -1, 5, []),
        (0, 5, 1, 0, []),
    ],
)
def test_slice_indices_follow_the_onnx_spec(start, end, step, dim, expected):
    assert slice_indices(start, end, step, dim).tolist() == expected


def test_slice_constant_aligns_lower_rank_constants_right():
    const = np.arange(12, dtype=np.float32).reshape(3, 4)
    axes = (SliceAxis(3, -1, I64_MIN, -2), SliceAxis(2, 1, 3, 1))
    np.testing.assert_array_equal(slice_constant(const, axes, rank=4), const[1:3, ::-2])


# --- unary ops -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op_type", "attrs"),
    [
        ("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("Exp", {}), ("Log", {}), ("Abs", {}),
        ("Neg", {}), ("Sqrt", {}), ("Erf", {}), ("LeakyRelu", {"alpha": 0.2}),
        ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Elu", {"alpha": 0.7}), ("Selu", {}),
        ("Softplus", {}), ("Cast", {"to": ir.DataType.FLOAT16}), ("Floor", {}),
    ],
)  # fmt: skip
def test_slice_moves_above_a_unary_op(op_type, attrs):
    b = GraphBuilder()
    x = b.input("x", F32, [2, 4, 6])
    y = _slice(b, b.op(op_type, x, **attrs), [1], [-1], [-1])
    after = _moves(b.build([y]), {op_type: 1, "Slice": 1})
    assert _order(after) == ["Slice", op_type]
    assert _slice_node(after).inputs[0].name == "x"
    moved = next(n for n in after.graph if n.op_type == op_type)
    assert {k: a.value for k, a in moved.attributes.items()} == attrs
    assert after.graph.outputs[0].name == y.name and list(after.graph.outputs[0].shape) == [2, 4, 4]


def test_slice_moves_above_clip_and_keeps_min_max():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 8])
    clipped = b.op("Clip", x, b.const(np.float32(-0.5), "lo"), b.const(np.float32(0.5), "hi"))
    after = _moves(b.build([_slice(b, clipped, [0], [3], [1])]), {"Clip": 1, "Slice": 1})
    assert _order(after) == ["Slice", "Clip"]
    assert [v.name for v in next(n for n in after.graph if n.op_type == "Clip").inputs[1:]] == ["lo", "hi"]


def test_slice_moves_above_gelu_opset20():
    b = GraphBuilder(opset=20, ir_version=9)
    x = b.input("x", F32, [2, 8])
    _moves(b.build([_slice(b, b.op("Gelu", x, approximate="tanh"), [2], [6], [1])]), {"Gelu": 1, "Slice": 1})


def test_unary_op_accepts_slice_parameters_computed_at_run_time():
    b = GraphBuilder()
    x = b.input("x", F32, [4, 6])
    start = b.input("start", ir.DataType.INT64, [1])
    y = b.op("Slice", b.op("Relu", x), start, b.const(np.array([5])), b.const(np.array([1])))
    after = _moves(b.build([y]), {"Relu": 1, "Slice": 1})
    assert _order(after) == ["Slice", "Relu"]


def test_slice_climbs_a_chain_of_relu_bias_scale():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 8, 5, 5])
    t = b.op("Relu", x)
    t = b.op("Add", t, b.const(rand(8, 1, 1), "bias"))
    t = b.op("Mul", t, b.const(rand(1, 8, 1, 1), "scale"))
    after = _moves(b.build([_slice(b, t, [2], [6], [1])]), {"Add": 1, "Mul": 1, "Relu": 1, "Slice": 1})
    assert _order(after) == ["Slice", "Relu", "Add", "Mul"]
    assert _slice_node(after).inputs[0].name == "x"
    assert _initializer_shape(after, "bias_sliced") == (4, 1, 1)
    assert _initializer_shape(after, "scale_sliced") == (1, 4, 1, 1)
    assert "bias" not in after.graph.initializers and "scale" not in after.graph.initializers


# --- broadcasting ops with a constant operand ----------------------------------------------


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
@pytest.mark.parametrize("const_first", [False, True])
def test_slice_moves_above_a_binary_op_and_slices_the_constant(op_type, const_first):
    b = GraphBuilder()
    x = b.input("x", F32, [2, 4, 6])
    c = b.const(rand(4, 6) + 3.0, "c")
    t = b.op(op_type, c, x) if const_first else b.op(op_type, x, c)
    after = _moves(b.build([_slice(b, t, [1, 5], [3, 0], [1, 2], [1, -2])]), {op_type: 1, "Slice": 1})
    assert _order(after) == ["Slice", op_type]
    assert _initializer_shape(after, "c_sliced") == (2, 3)


def test_slice_moves_above_pow_and_prelu():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 4, 3, 3])
    t = b.op("Pow", x, b.const(np.array([2.0, 3.0, 1.0, 2.0], np.float32).reshape(4, 1, 1), "e"))
    t = b.op("PRelu", t, b.const(rand(4, 1, 1), "slope"))
    after = _moves(b.build([_slice(b, t, [-1], [I64_MIN], [1], [-1])]), {"Pow": 1, "PRelu": 1, "Slice": 1})
    assert _order(after) == ["Slice", "Pow", "PRelu"]


def test_slice_moves_above_where_with_constant_condition():
    b = GraphBuilder()
    x = b.input("x", F32, [3, 6])
    cond = b.const(RNG.random((3, 6)) > 0.5, "cond")
    t = b.op("Where", cond, x, b.const(np.float32(7.0), "seven"))
    after = _moves(b.build([_slice(b, t, [1], [5], [1])]), {"Where": 1, "Slice": 1})
    assert _initializer_shape(after, "cond_sliced") == (3, 4)
    assert "seven" in after.graph.initializers  # a scalar broadcasts: left as it is


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps", "sliced_shape"),
    [
        ([1], [3], [-1], None, (4, 2)),  # negative axis
        ([-1], [-7], [2], [-1], (4, 6)),  # negative start/end, negative step: reversal
        ([-2], [I64_MIN], [2], [-2], (4, 3)),  # INT64_MIN end with a negative step
        ([2], [I64_MAX], [2], None, (4, 4)),  # INT64_MAX end
        ([1], [100], [-2], [2], (2, 6)),  # end beyond the dim: clamped
        ([-100], [2], [1], None, (2, 6)),  # start before the dim: clamped
        ([0, 1], [3, 4], None, None, (3, 6)),  # axes omitted: 0, 1 (axis 0 is x's alone)
        ([5, -1, 0], [0, 0, 2], [2, 1, 0], [-2, -1, 1], (3, 3)),  # three axes, mixed
        ([1], [3], [0], [1], None),  # axis only x has: the constant is left alone
    ],
)
def test_slicing_variants_are_applied_exactly_to_the_constant(starts, ends, axes, steps, sliced_shape):
    b = GraphBuilder()
    x = b.input("x", F32, [3, 4, 6])
    t = b.op("Add", x, b.const(rand(4, 6), "c"))
    after = _moves(b.build([_slice(b, t, starts, ends, axes, steps)]), {"Add": 1, "Slice": 1})
    assert _order(after) == ["Slice", "Add"]
    if sliced_shape is None:
        assert list(after.graph.initializers).count("c") == 1 and "c_sliced" not in after.graph.initializers
    else:
        assert _initializer_shape(after, "c_sliced") == sliced_shape


def test_int32_slice_parameters():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 8])
    t = b.op("Mul", x, b.const(rand(8), "c"))
    after = _moves(b.build([_slice(b, t, [7], [0], [1], [-3], index_dtype=np.int32)]), {"Mul": 1, "Slice": 1})
    assert _initializer_shape(after, "c_sliced") == (3,)


def test_constant_with_size_one_on_the_sliced_axis_is_kept():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 4, 6, 6])
    t = b.op("Add", x, b.const(rand(4, 1, 6), "c"))
    after = _moves(b.build([_slice(b, t, [1], [5], [2])]), {"Add": 1, "Slice": 1})
    assert "c" in after.graph.initializers and not any(
        n.endswith("_sliced") for n in after.graph.initializers
    )


def test_constant_carrying_an_axis_x_broadcasts_along_needs_no_slice_node():
    b = GraphBuilder()
    x = b.input("x", F32, [6])
    t = b.op("Add", x, b.const(rand(4, 6), "c"))  # x is broadcast along axis 0
    after = _moves(b.build([_slice(b, t, [1], [3], [0])]), {"Add": 1})
    assert _initializer_shape(after, "c_sliced") == (2, 6)
    assert next(iter(after.graph)).inputs[0].name == "x"


def test_x_of_static_size_one_is_not_sliced_where_the_constant_carries_the_axis():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 1, 6])
    t = b.op("Mul", x, b.const(rand(4, 6), "c"))
    after = _moves(b.build([_slice(b, t, [1, 0], [3, 3], [1, 2])]), {"Mul": 1, "Slice": 1})
    assert _initializer_shape(after, "c_sliced") == (2, 3)
    slice_axes = _slice_node(after).inputs[3].const_value.numpy().tolist()
    assert slice_axes == [2]  # only the axis x carries


def test_non_constant_operand_broadcast_along_the_sliced_axis_is_left_alone():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 4, 6, 6])
    y = b.input("y", F32, [1, 4, 1, 1])
    after = _moves(b.build([_slice(b, b.op("Add", x, y), [0], [3], [3])]), {"Add": 1, "Slice": 1})
    add = next(n for n in after.graph if n.op_type == "Add")
    assert add.inputs[1].name == "y" and add.inputs[0].producer().op_type == "Slice"


def test_square_of_one_value_takes_one_slice():
    b = GraphBuilder()
    x = b.input("x", F32, [4, 6])
    after = _moves(b.build([_slice(b, b.op("Mul", x, x), [1], [3], [0])]), {"Mul": 1, "Slice": 1})
    mul = next(n for n in after.graph if n.op_type == "Mul")
    assert mul.inputs[0] is mul.inputs[1]


def test_symbolic_sliced_axis_with_a_broadcast_constant():
    b = GraphBuilder()
    x = b.input("x", F32, ["N", 4, 6])
    t = b.op("Add", x, b.const(rand(1, 4, 1), "c"))
    _moves(b.build([_slice(b, t, [1], [I64_MAX], [0])]), {"Add": 1, "Slice": 1}, dim_values={"N": 3})


def test_slice_output_that_is_a_graph_output_keeps_its_name():
    b = GraphBuilder()
    x = b.input("x", F32, [4, 6])
    y = _slice(b, b.op("Relu", x), [1], [3], [0])
    after = _moves(b.build([y]), {"Relu": 1, "Slice": 1})
    assert [o.name for o in after.graph.outputs] == [y.name]
    assert after.graph.outputs[0].producer().op_type == "Relu"


# --- refusals --------------------------------------------------------------------------------


def test_refuses_when_the_elementwise_output_has_another_consumer():
    b = GraphBuilder()
    x = b.input("x", F32, [4, 6])
    t = b.op("Relu", x)
    _refused(b.build([_slice(b, t, [1], [3], [0]), b.op("Sigmoid", t)]))


def test_refuses_when_the_elementwise_output_is_a_graph_output():
    b = GraphBuilder()
    x = b.input("x", F32, [4, 6])
    t = b.op("Relu", x)
    _refused(b.build([_slice(b, t, [1], [3], [0]), t]))


def test_refuses_two_non_constant_operands_that_both_carry_the_axis():
    b = GraphBuilder()
    x, y = b.input("x", F32, [4, 6]), b.input("y", F32, [4, 6])
    _refused(b.build([_slice(b, b.op("Add", x, y), [1], [3], [0])]))


def test_refuses_a_symbolic_dim_against_a_static_one():
    b = GraphBuilder()
    x = b.input("x", F32, ["N", 6])
    t = b.op("Add", x, b.const(rand(3, 6), "c"))  # N is 1 (broadcast) or 3: unknown
    _refused(b.build([_slice(b, t, [1], [3], [0])]))


def test_refuses_two_symbolic_dims_on_the_sliced_axis():
    b = GraphBuilder()
    x, y = b.input("x", F32, ["N", 6]), b.input("y", F32, ["M", 1])
    _refused(b.build([_slice(b, b.op("Add", x, y), [1], [3], [0])]))


def test_refuses_non_constant_parameters_of_a_broadcasting_op():
    b = GraphBuilder()
    x = b.input("x", F32, [4, 6])
    start = b.input("start", ir.DataType.INT64, [1])
    t = b.op("Add", x, b.const(rand(6), "c"))
    _refused(b.build([b.op("Slice", t, start, b.const(np.array([5])), b.const(np.array([1])))]))


def test_refuses_a_slice_that_empties_an_axis_every_operand_has_size_one():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 6])
    t = b.op("Add", x, b.const(rand(1, 6), "c"))
    _refused(b.build([_slice(b, t, [1], [2], [0])]))


def test_refuses_a_non_elementwise_producer():
    b = GraphBuilder()
    x = b.input("x", F32, [4, 6])
    _refused(b.build([_slice(b, b.op("Softmax", x, axis=-1), [1], [3], [1])]))


def test_refuses_an_all_constant_elementwise_op():
    b = GraphBuilder()
    x = b.input("x", F32, [2])
    t = b.op("Relu", b.const(rand(4, 6), "c"))
    _refused(b.build([b.op("Add", _slice(b, t, [1], [3], [1]), x)]))


def test_refuses_a_slice_of_a_graph_input():
    b = GraphBuilder()
    x = b.input("x", F32, [4, 6])
    _refused(b.build([b.op("Relu", _slice(b, x, [1], [3], [1]))]))


def test_opset9_slice_with_attributes_is_not_matched():
    b = GraphBuilder(opset=9)
    x = b.input("x", F32, [4, 6])
    _refused(b.build([b.op("Slice", b.op("Relu", x), starts=[1], ends=[3], axes=[1])]))


# --- subgraphs -------------------------------------------------------------------------------


def _initializer(name, array):
    return ir.Value(
        name=name,
        const_value=ir.tensor(array, name=name),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        shape=ir.Shape(array.shape),
    )


def test_slice_moves_inside_an_if_branch():
    x = ir.val("x", F32, ir.Shape([4, 6]))
    cond = ir.val("cond", ir.DataType.BOOL, ir.Shape([]))
    bias = _initializer("bias", rand(4, 6))
    starts, ends = _initializer("starts", np.array([1])), _initializer("ends", np.array([3]))
    relu = ir.node("Relu", [x], name="relu")
    add = ir.node("Add", [relu.outputs[0], bias], name="add")
    cut = ir.node("Slice", [add.outputs[0], starts, ends], name="cut")
    neg = ir.node("Slice", [x, starts, ends], name="plain")
    for node in (relu, add, cut, neg):
        node.outputs[0].name = f"{node.name}_out"
    then_branch = ir.Graph([], cut.outputs, nodes=[relu, add, cut], initializers=[bias], name="then")
    else_branch = ir.Graph([], neg.outputs, nodes=[neg], name="else")
    branch = ir.node("If", [cond], attributes={"then_branch": then_branch, "else_branch": else_branch})
    branch.outputs[0].name = "y"
    graph = ir.Graph(
        [x, cond],
        branch.outputs,
        nodes=[branch],
        initializers=[starts, ends],
        opset_imports={"": 17},
        name="g",
    )
    model = ir.Model(graph, ir_version=8)
    ir.passes.common.ShapeInferencePass()(model)
    after = _moves(model, {"If": 1, "Relu": 1, "Add": 1, "Slice": 2})
    then_after = after.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in then_after] == ["Slice", "Relu", "Add"]
    assert then_after.node(0).inputs[0].name == "x"


def test_new_initializer_names_never_collide():
    b = GraphBuilder()
    x = b.input("x", F32, [4, 6])
    taken = b.op("Relu", x)
    taken.name = "c_sliced"  # an existing value already carries the natural name
    t = b.op("Add", taken, b.const(rand(4, 6), "c"))
    after = _moves(b.build([_slice(b, t, [1], [3], [0])]), {"Relu": 1, "Add": 1, "Slice": 1})
    assert "c_sliced_1" in after.graph.initializers
