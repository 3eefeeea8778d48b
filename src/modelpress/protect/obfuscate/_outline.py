"""Move a region of a graph into a model-local function, called by one node in its place.

Before -> after (``R`` = the region's nodes, ``W`` a large constant, ``c`` a small one)::

    y = Relu(Conv(x, W, c))            y = f_k(x, W)        (domain d, function f_k)
                                       f_k(i0, i1): k0 = Constant(c)
                                                    o0 = Relu(Conv(i0, i1, k0))

The function's inputs are the region's non-constant inputs, then its large constants (the
weights; ``scramble-weights`` later stores them transformed and decodes them inside the
function). Constants under ``SMALL_CONSTANT_BYTES`` (shapes, axes, epsilons, clip bounds) are
copied into the function as Constant nodes: they live in the operator library, not the model.
The function's outputs are the region's values used outside it or listed as graph outputs;
graph outputs keep their names. The original nodes and values move into the function
unchanged, so the arithmetic is untouched.
"""

from __future__ import annotations

import onnx_ir as ir

from modelpress.protect.obfuscate._regions import is_constant

__all__ = ["SMALL_CONSTANT_BYTES", "outline_region"]

# Constants smaller than this stay in the library; a 64-byte run of an original weight can
# therefore never be in the library (issue 4 checks 64-byte runs).
SMALL_CONSTANT_BYTES = 64


def outline_region(
    graph: ir.Graph, nodes: list[ir.Node], domain: str, name: str
) -> tuple[ir.Node, ir.Function]:
    """Replace ``nodes`` (a convex region, in topological order) by a call of a new function.

    Returns:
        The call node (inserted where the region's first node was) and the function.
    """
    members = set(nodes)
    inputs: list[ir.Value] = []
    weights: list[ir.Value] = []
    small: list[ir.Value] = []
    for node in nodes:
        for value in node.inputs:
            if value is None or value.producer() in members:
                continue
            if is_constant(value) and _nbytes(value) < SMALL_CONSTANT_BYTES:
                bucket = small
            else:
                bucket = weights if is_constant(value) else inputs
            if value not in bucket:
                bucket.append(value)
    outputs = [
        value
        for node in nodes
        for value in node.outputs
        if value.is_graph_output() or any(user not in members for user, _ in value.uses())
    ] or [nodes[-1].outputs[0]]  # a dead region still needs an output to be a valid function
    call = ir.node(name, [*inputs, *weights], domain=domain, num_outputs=len(outputs), name=f"{name}_call")
    graph.insert_before(nodes[0], call)
    for old, new in zip(outputs, call.outputs, strict=True):
        _redirect_outside_uses(graph, old, new, members)
    formals = {
        value: ir.Value(name=f"{name}_in{k}", type=value.type, shape=value.shape)
        for k, value in enumerate([*inputs, *weights])
    }
    constants = [_constant_node(value, f"{name}_k{k}") for k, value in enumerate(small)]
    formals.update({value: node.outputs[0] for value, node in zip(small, constants, strict=True)})
    for node in nodes:
        for index, value in enumerate(node.inputs):
            if value in formals:
                node.replace_input_with(index, formals[value])
    graph.remove(nodes)
    body = ir.Graph(
        [formals[value] for value in (*inputs, *weights)],
        outputs,
        nodes=[*constants, *nodes],
        opset_imports=dict(graph.opset_imports),
        name=name,
    )
    return call, ir.Function(domain, name, graph=body, attributes=[])


def _nbytes(value: ir.Value) -> int:
    tensor = value.const_value
    assert tensor is not None, "is_constant checked it"
    return tensor.nbytes


def _constant_node(value: ir.Value, name: str) -> ir.Node:
    tensor = value.const_value
    assert tensor is not None
    node = ir.node("Constant", [], attributes={"value": ir.tensor(tensor.numpy())}, name=f"{name}_node")
    node.outputs[0].name = name
    node.outputs[0].type = value.type
    node.outputs[0].shape = value.shape
    return node


def _redirect_outside_uses(graph: ir.Graph, old: ir.Value, new: ir.Value, members: set[ir.Node]) -> None:
    """Point every use of ``old`` outside the region (and the graph's outputs) at ``new``."""
    new.type, new.shape = old.type, old.shape
    for user, index in list(old.uses()):
        if user not in members:
            user.replace_input_with(index, new)
    for position, output in enumerate(graph.outputs):
        if output is old:
            graph.outputs[position] = new
    if new.is_graph_output():
        new.name, old.name = old.name, f"{old.name}_inner"
