import pytest

from modelpress.ir import io
from modelpress.passes.fold_reshape_shapes import FoldReshapeShapesPass, reshape_target
from tests.testing import assert_equivalent, ops, run_pass, serialized

# The exporter's pattern: target = Concat(batch, seq, 4, 32) computed from Shape(x).
SPLIT_HEADS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, seq, 128] x) => (float[batch, seq, 4, 32] y)
<int64 zero = {0}, int64 one = {1}, int64[1] axes = {0}, int64[1] heads = {4}, int64[1] size = {32}>
{
  s = Shape(x)
  b = Gather(s, zero)
  t = Gather(s, one)
  b1 = Unsqueeze(b, axes)
  t1 = Unsqueeze(t, axes)
  target = Concat<axis = 0>(b1, t1, heads, size)
  y = Reshape(x, target)
}
"""


def _target(model):
    node = next(n for n in model.graph if n.op_type == "Reshape")
    return node.inputs[1].const_value.numpy().tolist()


def test_split_heads_target_becomes_zeros_and_sizes():
    model = io.from_text(SPLIT_HEADS)
    after, changed = run_pass(FoldReshapeShapesPass(), model)
    assert changed is True
    assert ops(after) == {"Reshape": 1}
    assert _target(after) == [0, 0, 4, 32]
    for dims in ({"batch": 2, "seq": 5}, {"batch": 1, "seq": 9}):
        assert_equivalent(model, after, rtol=0.0, dim_values=dims)


def test_one_unknown_dim_becomes_minus_one():
    model = io.from_text(
        SPLIT_HEADS.replace("float[batch, seq, 4, 32] y", "float[N, 32, 4] y").replace(
            "target = Concat<axis = 0>(b1, t1, heads, size)",
            "bt = Mul(b1, t1)\n  target = Concat<axis = 0>(bt, size, heads)",
        )
    )
    after, changed = run_pass(FoldReshapeShapesPass(), model)
    assert changed is True
    assert _target(after) == [-1, 32, 4]
    assert_equivalent(model, after, rtol=0.0, dim_values={"batch": 3, "seq": 2})


def test_swapped_dynamic_dims_are_refused():
    # [batch, seq, 128] -> [seq, batch, 128]: neither dynamic dim is at its input position.
    model = io.from_text(
        SPLIT_HEADS.replace("float[batch, seq, 4, 32] y", "float[seq, batch, 128] y").replace(
            "target = Concat<axis = 0>(b1, t1, heads, size)",
            "c = Constant<value = int64[1] {128}>()\n  target = Concat<axis = 0>(t1, b1, c)",
        )
    )
    after, changed = run_pass(FoldReshapeShapesPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_declared_shapes_are_not_trusted():
    # The file claims y is [batch, seq, 4, 32] but the target computes [seq, batch, 128].
    model = io.from_text(
        SPLIT_HEADS.replace(
            "target = Concat<axis = 0>(b1, t1, heads, size)",
            "c = Constant<value = int64[1] {128}>()\n  target = Concat<axis = 0>(t1, b1, c)",
        ).replace("float[batch, seq, 4, 32] y", "float[batch, seq, 128] y")
    )
    _, changed = run_pass(FoldReshapeShapesPass(), model)
    assert changed is False


def test_allowzero_is_refused():
    model = io.from_text(
        SPLIT_HEADS.replace("y = Reshape(x, target)", "y = Reshape<allowzero = 1>(x, target)")
    )
    after, changed = run_pass(FoldReshapeShapesPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_idempotent():
    once, _ = run_pass(FoldReshapeShapesPass(), io.from_text(SPLIT_HEADS))
    _, changed = run_pass(FoldReshapeShapesPass(), once)
    assert changed is False


@pytest.mark.parametrize(
    ("in_dims", "out_dims", "expected"),
    [
        (["b", "s", 128], ["b", "s", 4, 32], [0, 0, 4, 32]),
        (["b", "s", 4, 32], ["b", "s", 128], [0, 0, 128]),
        (["b", "s", 128], [None, 128], [-1, 128]),
        (["b", "s", 128], ["s", "b", 128], None),
        (["b", None, 128], ["b", None, 128], None if False else [0, -1, 128]),
        (["b", "s"], ["b", 0], None),
        (None, [2, 3], [2, 3]),
        (["b"], None, None),
    ],
)
def test_reshape_target(in_dims, out_dims, expected):
    assert reshape_target(in_dims, out_dims) == expected
