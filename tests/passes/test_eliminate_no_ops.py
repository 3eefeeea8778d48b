import numpy as np
import onnx_ir as ir
import pytest

from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.passes.eliminate_no_ops import EliminateNoOpsPass
from tests.testing import assert_equivalent, ops, run_pass, serialized


def _unary_chain(*op_builders) -> ir.Model:
    """x -> Relu -> <op under test> -> Sigmoid -> y (the op sits between real ops)."""
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [2, 3, 4])
    h = b.op("Relu", x)
    for build in op_builders:
        h = build(b, h)
    return b.build([b.op("Sigmoid", h)])


NO_OPS = {
    "Identity": lambda b, h: b.op("Identity", h),
    "Dropout": lambda b, h: b.op("Dropout", h),
    "Dropout-training-false": lambda b, h: b.op(
        "Dropout", h, b.const(np.array(0.3, np.float32)), b.const(np.array(False))
    ),
    "Add0": lambda b, h: b.op("Add", h, b.const(np.array(0.0, np.float32))),
    "Mul1": lambda b, h: b.op("Mul", h, b.const(np.array(1.0, np.float32))),
    "Sub0": lambda b, h: b.op("Sub", h, b.const(np.array(0.0, np.float32))),
    "Div1": lambda b, h: b.op("Div", h, b.const(np.array(1.0, np.float32))),
    "Cast-same": lambda b, h: b.op("Cast", h, to=ir.DataType.FLOAT),
    "Transpose-identity": lambda b, h: b.op("Transpose", h, perm=[0, 1, 2]),
    "Reshape-same": lambda b, h: b.op("Reshape", h, b.const(np.array([2, 3, 4], np.int64))),
    "Reshape-0-and-minus1": lambda b, h: b.op("Reshape", h, b.const(np.array([0, 3, -1], np.int64))),
    "Slice-all": lambda b, h: b.op(
        "Slice",
        h,
        b.const(np.array([0], np.int64)),
        b.const(np.array([2**63 - 1], np.int64)),
        b.const(np.array([1], np.int64)),
    ),
    "Pad-zero": lambda b, h: b.op("Pad", h, b.const(np.zeros(6, np.int64))),
    "Expand-same": lambda b, h: b.op("Expand", h, b.const(np.array([2, 3, 4], np.int64))),
    "Concat-single": lambda b, h: b.op("Concat", h, axis=0),
    "Sum-single": lambda b, h: b.op("Sum", h),
    "Max-single": lambda b, h: b.op("Max", h),
}


@pytest.mark.parametrize("name", sorted(NO_OPS))
def test_no_op_is_removed(name):
    model = _unary_chain(NO_OPS[name])
    after, changed = run_pass(EliminateNoOpsPass(), model)
    assert changed is True
    assert ops(after) == {"Relu": 1, "Sigmoid": 1}
    assert_equivalent(model, after, rtol=0.0)


def test_chain_of_no_ops_is_removed_in_one_run_and_idempotent():
    model = _unary_chain(NO_OPS["Identity"], NO_OPS["Mul1"], NO_OPS["Reshape-same"], NO_OPS["Dropout"])
    after, changed = run_pass(EliminateNoOpsPass(), model)
    assert changed is True
    assert ops(after) == {"Relu": 1, "Sigmoid": 1}
    _, again = run_pass(EliminateNoOpsPass(), after)
    assert again is False


NOT_NO_OPS = {
    "Add-nonzero": lambda b, h: b.op("Add", h, b.const(np.array(0.5, np.float32))),
    "Add-zero-vector-broadcasts-up": lambda b, h: b.op("Add", h, b.const(np.zeros((5, 2, 3, 4), np.float32))),
    "Mul-by-2": lambda b, h: b.op("Mul", h, b.const(np.array(2.0, np.float32))),
    "Cast-to-half": lambda b, h: b.op("Cast", h, to=ir.DataType.FLOAT16),
    "Transpose-real": lambda b, h: b.op("Transpose", h, perm=[0, 2, 1]),
    "Reshape-real": lambda b, h: b.op("Reshape", h, b.const(np.array([6, 4], np.int64))),
    "Slice-part": lambda b, h: b.op(
        "Slice",
        h,
        b.const(np.array([1], np.int64)),
        b.const(np.array([3], np.int64)),
        b.const(np.array([1], np.int64)),
    ),
    "Pad-nonzero": lambda b, h: b.op("Pad", h, b.const(np.array([0, 1, 0, 0, 0, 0], np.int64))),
    "Expand-real": lambda b, h: b.op("Expand", h, b.const(np.array([2, 2, 3, 4], np.int64))),
    "Concat-two": lambda b, h: b.op("Concat", h, h, axis=0),
    "Dropout-training-true": lambda b, h: b.op(
        "Dropout", h, b.const(np.array(0.0, np.float32)), b.const(np.array(True))
    ),
}


@pytest.mark.parametrize("name", sorted(NOT_NO_OPS))
def test_real_op_is_kept_byte_identical(name):
    model = _unary_chain(NOT_NO_OPS[name])
    after, changed = run_pass(EliminateNoOpsPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_dropout_with_used_mask_is_kept():
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [2, 3])
    y, mask = b.op("Dropout", x, outputs=2)
    model = b.build([y, mask])
    after, changed = run_pass(EliminateNoOpsPass(), model)
    assert changed is False
    assert ops(after) == {"Dropout": 1}


def test_identity_between_graph_input_and_output_is_kept():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y)
{
  y = Identity(x)
}
""")
    after, changed = run_pass(EliminateNoOpsPass(), model)
    assert changed is False
    assert ops(after) == {"Identity": 1}


def test_no_op_feeding_a_graph_output_keeps_the_output_name():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y)
{
  r = Relu(x)
  y = Identity(r)
}
""")
    after, changed = run_pass(EliminateNoOpsPass(), model)
    assert changed is True
    assert ops(after) == {"Relu": 1}
    assert [o.name for o in after.graph.outputs] == ["y"]
    assert_equivalent(model, after, rtol=0.0)
