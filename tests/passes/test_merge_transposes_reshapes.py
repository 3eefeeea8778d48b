import numpy as np
import onnx_ir as ir
import pytest

from modelpress.ir.build import GraphBuilder
from modelpress.passes.merge_transposes_reshapes import MergeTransposesReshapesPass
from tests.testing import assert_equivalent, ops, run_pass, serialized


def _chain(*builders) -> ir.Model:
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [2, 3, 4])
    h = b.op("Relu", x)
    for build in builders:
        h = build(b, h)
    return b.build([b.op("Sigmoid", h)])


def _i64(*values):
    return np.array(values, np.int64)


def test_cancelling_transposes_disappear():
    model = _chain(
        lambda b, h: b.op("Transpose", h, perm=[0, 2, 1]), lambda b, h: b.op("Transpose", h, perm=[0, 2, 1])
    )
    after, changed = run_pass(MergeTransposesReshapesPass(), model)
    assert changed is True
    assert ops(after) == {"Relu": 1, "Sigmoid": 1}
    assert_equivalent(model, after, rtol=0.0)


def test_two_transposes_merge_into_one():
    model = _chain(
        lambda b, h: b.op("Transpose", h, perm=[1, 0, 2]), lambda b, h: b.op("Transpose", h, perm=[0, 2, 1])
    )
    after, changed = run_pass(MergeTransposesReshapesPass(), model)
    assert changed is True
    assert ops(after) == {"Relu": 1, "Sigmoid": 1, "Transpose": 1}
    assert_equivalent(model, after, rtol=0.0)


def test_reshape_chain_merges():
    model = _chain(
        lambda b, h: b.op("Reshape", h, b.const(_i64(6, 4))),
        lambda b, h: b.op("Reshape", h, b.const(_i64(4, 6))),
    )
    after, changed = run_pass(MergeTransposesReshapesPass(), model)
    assert changed is True
    assert ops(after) == {"Relu": 1, "Reshape": 1, "Sigmoid": 1}
    assert_equivalent(model, after, rtol=0.0)


def test_unsqueeze_chain_merges():
    model = _chain(
        lambda b, h: b.op("Unsqueeze", h, b.const(_i64(0))),
        lambda b, h: b.op("Unsqueeze", h, b.const(_i64(4))),
    )
    after, changed = run_pass(MergeTransposesReshapesPass(), model)
    assert changed is True
    assert ops(after) == {"Relu": 1, "Sigmoid": 1, "Unsqueeze": 1}
    assert_equivalent(model, after, rtol=0.0)


@pytest.mark.parametrize("axes", [(1,), (-2,)])
def test_squeeze_then_unsqueeze_same_axes_cancels(axes):
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [2, 1, 4])
    s = b.op("Squeeze", b.op("Relu", x), b.const(_i64(*axes)))
    u = b.op("Unsqueeze", s, b.const(_i64(1)))
    model = b.build([b.op("Sigmoid", u)])
    after, changed = run_pass(MergeTransposesReshapesPass(), model)
    assert changed is True
    assert ops(after) == {"Relu": 1, "Sigmoid": 1}
    assert_equivalent(model, after, rtol=0.0)


def test_squeeze_then_unsqueeze_other_axis_is_kept():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [2, 1, 4])
    s = b.op("Squeeze", b.op("Relu", x), b.const(_i64(1)))
    u = b.op("Unsqueeze", s, b.const(_i64(0)))
    model = b.build([b.op("Sigmoid", u)])
    after, changed = run_pass(MergeTransposesReshapesPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_transpose_with_two_consumers_is_not_merged():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [2, 3, 4])
    t = b.op("Transpose", b.op("Relu", x), perm=[0, 2, 1])
    y1 = b.op("Transpose", t, perm=[0, 2, 1])
    y2 = b.op("Sigmoid", t)
    model = b.build([y1, y2])
    after, changed = run_pass(MergeTransposesReshapesPass(), model)
    # The pair may merge (t stays for y2), never drop t.
    assert ops(after).get("Sigmoid") == 1
    assert_equivalent(model, after, rtol=0.0)
    _ = changed


def test_idempotent():
    model = _chain(
        lambda b, h: b.op("Transpose", h, perm=[1, 0, 2]), lambda b, h: b.op("Transpose", h, perm=[0, 2, 1])
    )
    once, _ = run_pass(MergeTransposesReshapesPass(), model)
    _, changed = run_pass(MergeTransposesReshapesPass(), once)
    assert changed is False


def test_a_lone_flatten_stays_a_flatten():
    model = _chain(lambda b, h: b.op("Flatten", h, axis=1))
    after, changed = run_pass(MergeTransposesReshapesPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


@pytest.mark.parametrize("flatten_first", [True, False])
def test_a_flatten_beside_a_reshape_merges_with_it(flatten_first):
    flatten = lambda b, h: b.op("Flatten", h, axis=1)  # noqa: E731
    reshape = lambda b, h: b.op("Reshape", h, b.const(_i64(4, 6)))  # noqa: E731
    model = _chain(*((flatten, reshape) if flatten_first else (reshape, flatten)))
    after, changed = run_pass(MergeTransposesReshapesPass(), model)
    assert changed is True
    assert ops(after) == {"Relu": 1, "Reshape": 1, "Sigmoid": 1}
    assert_equivalent(model, after, rtol=0.0)
