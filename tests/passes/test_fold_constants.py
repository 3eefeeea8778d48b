import numpy as np
import onnx_ir as ir

from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.passes.fold_constants import FoldConstantsPass
from tests.testing import FP32, assert_equivalent, ops, run_pass, serialized

SHAPE_ARITHMETIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3,4] x) => (float[2,12] y)
<int64[1] zero = {0}, int64[1] minus1 = {-1}>
{
  shape = Shape(x)
  batch = Gather<axis=0>(shape, zero)
  target = Concat<axis=0>(batch, minus1)
  y = Reshape(x, target)
}
"""


def test_folds_shape_arithmetic_into_a_constant_reshape_target():
    model = io.from_text(SHAPE_ARITHMETIC)
    assert ops(model) == {"Concat": 1, "Gather": 1, "Reshape": 1, "Shape": 1}
    after, changed = run_pass(FoldConstantsPass(), model)
    assert changed is True
    assert ops(after) == {"Reshape": 1}
    target = after.graph.node(0).inputs[1]
    assert target.const_value is not None
    assert target.const_value.numpy().tolist() == [2, -1]
    assert_equivalent(model, after, rtol=0.0)


def test_constant_of_shape_and_constant_nodes_become_initializers():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y)
<int64[2] s = {2, 3}>
{
  fill = ConstantOfShape<value = float[1] {0.5}>(s)
  k = Constant<value = float[3] {1.0, 2.0, 3.0}>()
  a = Mul(x, fill)
  y = Add(a, k)
}
""")
    after, changed = run_pass(FoldConstantsPass(), model)
    assert changed is True
    assert ops(after) == {"Add": 1, "Mul": 1}
    assert np.allclose(after.graph.node(0).inputs[1].const_value.numpy(), 0.5)
    assert_equivalent(model, after, rtol=0.0)


def test_fully_constant_expression_folds_to_an_initializer_output():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [3])
    c = b.op("Add", b.const(np.array([1, 2, 3], np.float32)), b.const(np.array([1, 1, 1], np.float32)))
    y = b.op("Mul", x, b.op("Sqrt", c))
    model = b.build([y])
    after, changed = run_pass(FoldConstantsPass(), model)
    assert changed is True
    assert ops(after) == {"Mul": 1}
    assert_equivalent(model, after, rtol=FP32)


def test_nothing_to_fold_is_unchanged_and_byte_identical():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y)
{
  y = Relu(x)
}
""")
    after, changed = run_pass(FoldConstantsPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_dynamic_shapes_are_not_folded():
    model = io.from_text(
        SHAPE_ARITHMETIC.replace("float[2,3,4] x", "float[N,3,4] x").replace("float[2,12] y", "float[N,12] y")
    )
    after, changed = run_pass(FoldConstantsPass(), model)
    assert changed is False
    assert ops(after) == {"Concat": 1, "Gather": 1, "Reshape": 1, "Shape": 1}
    assert_equivalent(model, after, rtol=0.0, dim_values={"N": 5})


def test_random_ops_are_never_folded():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y)
{
  r = RandomUniform<shape = [2]>()
  y = Add(x, r)
}
""")
    after, changed = run_pass(FoldConstantsPass(), model)
    assert changed is False
    assert ops(after) == {"Add": 1, "RandomUniform": 1}


def test_idempotent():
    model = io.from_text(SHAPE_ARITHMETIC)
    once, _ = run_pass(FoldConstantsPass(), model)
    _, changed = run_pass(FoldConstantsPass(), once)
    assert changed is False
