from modelpress.ir import io
from modelpress.passes.eliminate_dead_code import EliminateDeadCodePass
from tests.testing import assert_equivalent, ops, run_pass, serialized

DEAD = """
<ir_version: 8, opset_import: ["" : 17, "custom.domain" : 1]>
g (float[4] x) => (float[4] y)
<float[4] unused_w = {1.0, 2.0, 3.0, 4.0}>
{
  y = Relu(x)
  dead1 = Sigmoid(x)
  dead2 = Mul(dead1, unused_w)
}
"""


def test_removes_unused_nodes_initializers_and_opsets():
    model = io.from_text(DEAD)
    after, changed = run_pass(EliminateDeadCodePass(), model)
    assert changed is True
    assert ops(after) == {"Relu": 1}
    assert "unused_w" not in after.graph.initializers
    assert "custom.domain" not in after.opset_imports
    assert_equivalent(model, after, rtol=0.0)


def test_live_graph_is_unchanged_and_byte_identical():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[4] x, float[4] unused_input) => (float[4] y)
{
  y = Relu(x)
}
""")
    after, changed = run_pass(EliminateDeadCodePass(), model)
    assert changed is False
    assert [v.name for v in after.graph.inputs] == ["x", "unused_input"]  # the interface stays
    assert serialized(after) == serialized(model)


def test_idempotent():
    once, _ = run_pass(EliminateDeadCodePass(), io.from_text(DEAD))
    _, changed = run_pass(EliminateDeadCodePass(), once)
    assert changed is False
