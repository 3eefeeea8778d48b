"""Which initializers are layer weights that Deep Compression prunes and shares.

A weight is the constant weight input of a ``Conv`` / ``ConvTranspose`` (input 1), a ``Gemm``
(input B) or a ``MatMul`` (either input, when it is an initializer), stored as float32 or
float16. With ``embeddings=True`` the table of a ``Gather`` (input 0) counts too, for weight
sharing only (a pruned entry of an embedding row is simply lost); it matters: MiniLM's embedding
tables are 53 % of its weight bytes. Biases, normalization parameters and shape constants are
never weights: pruning or clustering them saves little and costs accuracy. Only the top-level
graph is searched (its initializers are what the ``.mpz`` weights section holds);
initializers that are also graph inputs can be overridden at run time and are left alone. A
weight used by several nodes is listed once, under its first user.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

__all__ = ["CONV_OPS", "EMBEDDING_OPS", "FC_OPS", "WeightUse", "find_weights"]

CONV_OPS = ("Conv", "ConvTranspose")
FC_OPS = ("Gemm", "MatMul")
EMBEDDING_OPS = ("Gather",)
_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


@dataclasses.dataclass(frozen=True)
class WeightUse:
    """One eligible weight: the initializer and the first node that uses it as a weight.

    Attributes:
        value: The initializer value (its ``const_value`` holds the tensor).
        node: Name of the first node using it as a weight (or ``<op #index>`` when unnamed).
        op_type: That node's op type.
        users: Number of nodes using it as a weight.
    """

    value: ir.Value
    node: str
    op_type: str
    users: int

    @property
    def is_conv(self) -> bool:
        """Whether the weight belongs to a convolution (the paper gives those more bits)."""
        return self.op_type in CONV_OPS

    @property
    def is_embedding(self) -> bool:
        """Whether the weight is a lookup table (shared, never pruned)."""
        return self.op_type in EMBEDDING_OPS


def _weight_inputs(node: ir.Node, embeddings: bool) -> list[ir.Value]:
    if node.domain not in ("", "ai.onnx"):
        return []
    if embeddings and node.op_type in EMBEDDING_OPS and node.inputs and node.inputs[0] is not None:
        return [node.inputs[0]]
    if node.op_type in (*CONV_OPS, "Gemm") and len(node.inputs) > 1 and node.inputs[1] is not None:
        return [node.inputs[1]]
    if node.op_type == "MatMul":
        return [value for value in node.inputs if value is not None and value.is_initializer()]
    return []


def find_weights(model: ir.Model, *, embeddings: bool = False) -> list[WeightUse]:
    """Every eligible weight of the top-level graph, in node order, each once.

    ``embeddings``: also the tables of ``Gather`` nodes (for weight sharing only).
    """
    graph_inputs = {id(value) for value in model.graph.inputs}
    found: dict[int, WeightUse] = {}
    for index, node in enumerate(model.graph):
        for value in _weight_inputs(node, embeddings):
            tensor = value.const_value
            if not value.is_initializer() or tensor is None or id(value) in graph_inputs:
                continue
            if tensor.dtype not in _FLOAT_TYPES:
                continue
            if id(value) in found:
                found[id(value)] = dataclasses.replace(found[id(value)], users=found[id(value)].users + 1)
                continue
            name = node.name or f"<{node.op_type} #{index}>"
            found[id(value)] = WeightUse(value, name, node.op_type, 1)
    return list(found.values())
