"""modelpress.ir.verify: each invariant, in the main graph, subgraphs and functions."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from modelpress.errors import InvalidModelError
from modelpress.ir import io
from modelpress.ir.verify import verify

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
    a = Relu(x)
    b = Neg(a)
    y = Add(a, b)
}
"""

WITH_IF = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4] x, bool c) => (float[4] y) {
    a = Relu(x)
    y = If(c) <then_branch = t () => (float[4] p) { p = Neg(a) },
               else_branch = e () => (float[4] q) { q = Identity(x) }>
}
"""

WITH_FUNCTION = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[4] x) => (float[4] y) {
    y = local.Twice(x)
}
<domain: "local", opset_import: ["" : 17]>
Twice (v) => (w) {
    h = Add(v, v)
    w = Identity(h)
}
"""


def _node(graph: ir.Graph, op_type: str) -> ir.Node:
    return next(n for n in graph if n.op_type == op_type)


@pytest.mark.parametrize("text", [CHAIN, WITH_IF, WITH_FUNCTION])
def test_valid_models_pass(text):
    verify(io.from_text(text))
    verify(io.from_text(text), full=True)


def test_unnamed_optional_outputs_may_repeat():
    graph = helper.make_graph(
        [
            helper.make_node("Split", ["x"], ["a", ""], axis=0, num_outputs=2),
            helper.make_node("Split", ["x"], ["b", ""], axis=0, num_outputs=2),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("b", 1, [2]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    verify(ir.serde.deserialize_model(proto))


def test_input_backed_by_initializer_is_not_a_duplicate():
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", 1, [2]), helper.make_tensor_value_info("w", 1, [2])],
        [helper.make_tensor_value_info("y", 1, [2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])],
    )
    verify(ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))


def test_use_before_definition_names_the_node_and_value():
    model = io.from_text(CHAIN)
    neg = _node(model.graph, "Neg")
    model.graph.remove(neg)
    model.graph.append(neg)  # Neg now runs after the Add that consumes it
    with pytest.raises(
        InvalidModelError, match=r"node '.*' \(Add\): input 1 'b' is used before it is produced"
    ):
        verify(model)


def test_dangling_input_from_a_removed_node():
    model = io.from_text(CHAIN)
    relu = _node(model.graph, "Relu")
    model.graph.remove(relu, safe=False)
    with pytest.raises(InvalidModelError, match=r"\(Neg\): input 0 'a'"):
        verify(model)


def test_duplicate_value_names():
    model = io.from_text(CHAIN)
    _node(model.graph, "Neg").outputs[0].name = "a"
    with pytest.raises(InvalidModelError, match=r"value name 'a' \(an output\) is defined twice"):
        verify(model)


def test_duplicate_graph_input_names():
    model = io.from_text(CHAIN)
    model.graph.inputs.append(ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([4])))
    with pytest.raises(InvalidModelError, match=r"value name 'x' \(a graph input or initializer\)"):
        verify(model)


def test_graph_output_not_produced():
    model = io.from_text(CHAIN)
    model.graph.outputs.append(ir.Value(name="ghost", type=ir.TensorType(ir.DataType.FLOAT)))
    with pytest.raises(InvalidModelError, match="output 'ghost' is not produced"):
        verify(model)


def test_subgraph_may_use_outer_values_defined_before_its_node():
    verify(io.from_text(WITH_IF))


def test_subgraph_using_an_outer_value_defined_later_is_caught():
    model = io.from_text(WITH_IF)
    relu = _node(model.graph, "Relu")
    model.graph.remove(relu)
    model.graph.append(relu)  # the If's then-branch now reads 'a' before Relu made it
    with pytest.raises(InvalidModelError, match=r"subgraph 'then_branch'.*\(Neg\): input 0 'a'"):
        verify(model)


def test_broken_function_body_names_the_function():
    model = io.from_text(WITH_FUNCTION)
    function = model.functions[("local", "Twice", "")]
    add = _node(function, "Add")
    function.remove(add)
    function.append(add)
    with pytest.raises(InvalidModelError, match=r"function 'local::Twice'.*\(Identity\): input 0 'h'"):
        verify(model)


def test_checker_failure_becomes_invalid_model_error():
    model = io.from_text(CHAIN)
    _node(model.graph, "Neg").op_type = "NoSuchOp"
    with pytest.raises(InvalidModelError, match=r"not a valid ONNX model.*NoSuchOp"):
        verify(model)


def test_full_check_catches_shape_inference_errors():
    model = io.from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x, float[4, 5] z) => (float[2, 5] y) { y = MatMul(x, z) }
        """
    )
    verify(model)
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        verify(model, full=True)


def test_verify_does_not_modify_the_model():
    model = io.from_text(CHAIN)
    model.graph.initializers["k"] = ir.Value(
        name="k", const_value=ir.tensor(np.ones(4, np.float32), name="k")
    )
    before = io.to_bytes(model)
    verify(model, full=True)
    assert io.to_bytes(model) == before
