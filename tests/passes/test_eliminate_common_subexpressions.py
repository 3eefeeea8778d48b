from modelpress.ir import io
from modelpress.passes.eliminate_common_subexpressions import EliminateCommonSubexpressionsPass
from tests.testing import assert_equivalent, ops, run_pass, serialized

DUPLICATES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y)
<float[3] w1 = {1.0, 2.0, 3.0}, float[3] w2 = {1.0, 2.0, 3.0}>
{
  a = Relu(x)
  b = Relu(x)
  c = Mul(a, w1)
  d = Mul(b, w2)
  y = Add(c, d)
}
"""


def test_merges_equal_initializers_then_equal_nodes():
    model = io.from_text(DUPLICATES)
    after, changed = run_pass(EliminateCommonSubexpressionsPass(), model)
    assert changed is True
    assert ops(after) == {"Add": 1, "Mul": 1, "Relu": 1}
    assert len(after.graph.initializers) == 1
    assert_equivalent(model, after, rtol=0.0)


def test_different_attributes_are_not_merged():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y)
{
  a = LeakyRelu<alpha = 0.1>(x)
  b = LeakyRelu<alpha = 0.2>(x)
  y = Add(a, b)
}
""")
    after, changed = run_pass(EliminateCommonSubexpressionsPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_random_ops_are_not_merged():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y)
{
  a = RandomNormalLike(x)
  b = RandomNormalLike(x)
  y = Add(a, b)
}
""")
    after, changed = run_pass(EliminateCommonSubexpressionsPass(), model)
    assert changed is False
    assert ops(after) == {"Add": 1, "RandomNormalLike": 2}


def test_idempotent():
    once, _ = run_pass(EliminateCommonSubexpressionsPass(), io.from_text(DUPLICATES))
    _, changed = run_pass(EliminateCommonSubexpressionsPass(), once)
    assert changed is False


def test_equal_values_with_different_bits_are_not_merged():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y)
<float[2] pos = {0.0, 1.0}, float[2] neg = {-0.0, 1.0}>
{
  a = Mul(x, pos)
  b = Mul(x, neg)
  y = Add(a, b)
}
""")
    after, changed = run_pass(EliminateCommonSubexpressionsPass(), model)
    assert changed is False
    assert len(after.graph.initializers) == 2


def test_large_equal_weights_are_merged():
    import numpy as np
    import onnx_ir as ir

    from modelpress.ir.build import GraphBuilder

    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [1, 4, 8, 8])
    w = np.random.default_rng(0).standard_normal((64, 4, 3, 3)).astype(np.float32)
    y1 = b.op("Conv", x, b.const(w, "w1"))
    y2 = b.op("Conv", x, b.const(w.copy(), "w2"))
    model = b.build([b.op("Add", y1, y2)])
    after, changed = run_pass(EliminateCommonSubexpressionsPass(), model)
    assert changed is True
    assert ops(after) == {"Add": 1, "Conv": 1}
    assert_equivalent(model, after, rtol=0.0)
