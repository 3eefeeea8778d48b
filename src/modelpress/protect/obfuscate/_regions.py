"""Partition a graph into convex regions around its key subgraphs (for ``compress-subgraphs``).

A region is a set of nodes that one opaque node can replace. Regions are grown greedily in
topological order:

1. *Key* regions start at a layer (Conv, ConvTranspose, Gemm, or MatMul with a constant
   weight), at an activation MatMul (``q @ k^T`` of attention) or at a LayerNormalization,
   and absorb the ops that follow it: batch norm, activations (Relu, Clip, GELU's Erf/Mul/Div,
   ...), bias and residual Adds, Softmax, Transpose/Reshape, pools. A region holds at most one
   layer with weights (Conv+BN+Relu, MatMul+Add+GELU, ...); only a region that starts at an
   activation MatMul takes a second one (the context MatMul). So an attention block (scores,
   mask, Softmax, context, output projection, residual, LayerNorm) becomes one region, while
   the Q/K/V projections stay regions of their own.
2. *Glue* regions take the nodes left over (shape arithmetic, Flatten, a residual Add whose
   inputs arrive late), at most ``GLUE_NODES`` per region.

Convexity (no path leaves a region and comes back, so replacing it by one node keeps the graph
acyclic) is kept by one rule: a node joins region ``R`` only if each of its non-constant
inputs is produced inside ``R``, is a graph input, or is produced by a node that comes before
``R``'s first node in topological order. Such a producer cannot depend on ``R``.
"""

from __future__ import annotations

import collections.abc
import dataclasses

import onnx_ir as ir

__all__ = ["GLUE_NODES", "Region", "find_regions", "is_constant"]

# Ops that continue a key region (elementwise, normalization, layout, pooling).
_TAIL_OPS = frozenset(
    {
        "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Div", "Elu", "Erf", "Exp",
        "Flatten", "Gelu", "GlobalAveragePool", "GlobalMaxPool", "HardSigmoid", "HardSwish",
        "LayerNormalization", "LeakyRelu", "MaxPool", "Mul", "Neg", "Pow", "PRelu", "Relu",
        "Reshape", "Selu", "Sigmoid", "Softmax", "Softplus", "Sqrt", "Squeeze", "Sub", "Tanh",
        "Transpose", "Unsqueeze", "Where",
    }
)  # fmt: skip
_LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# A region takes at most this many nodes left over by the key regions.
GLUE_NODES = 6
_MAX_KEY_NODES = 24


@dataclasses.dataclass
class Region:
    """Nodes one opaque node will replace, in topological order.

    Attributes:
        nodes: The nodes.
        kind: ``key`` (grown from a layer, attention MatMul or LayerNorm) or ``glue``.
    """

    nodes: list[ir.Node]
    kind: str

    def label(self) -> str:
        """The op types joined by ``+`` (``Conv+BatchNormalization+Relu``), for logs and reports."""
        return "+".join(node.op_type for node in self.nodes)


def is_constant(value: ir.Value | None) -> bool:
    """Whether ``value`` is an initializer (and not also a graph input a caller could override)."""
    return value is not None and value.is_initializer() and not value.is_graph_input()


def _is_layer(node: ir.Node) -> bool:
    return node.op_type in _LAYER_OPS and len(node.inputs) > 1 and is_constant(node.inputs[1])


def _is_attention_matmul(node: ir.Node) -> bool:
    return node.op_type == "MatMul" and not any(is_constant(v) for v in node.inputs)


def _is_key(node: ir.Node) -> bool:
    return _is_layer(node) or _is_attention_matmul(node) or node.op_type == "LayerNormalization"


def find_regions(graph: ir.Graph) -> list[Region]:
    """Partition the nodes of ``graph`` (topologically sorted) into convex regions.

    Every node ends up in exactly one region; regions are returned in the order of their
    first node.
    """
    nodes = list(graph)
    order = {node: index for index, node in enumerate(nodes)}
    owner: dict[ir.Node, int] = {}
    regions: list[Region] = []
    for kind in ("key", "glue"):
        for node in nodes:
            if node in owner or (kind == "key" and not _is_key(node)):
                continue
            region = _grow(node, kind, order, owner)
            for member in region:
                owner[member] = len(regions)
            regions.append(Region(sorted(region, key=order.__getitem__), kind))
    regions.sort(key=lambda r: order[r.nodes[0]])
    return regions


def _grow(
    seed: ir.Node, kind: str, order: dict[ir.Node, int], owner: collections.abc.Mapping[ir.Node, int]
) -> list[ir.Node]:
    region = [seed]
    members = {seed}
    first = order[seed]
    changed = True
    while changed:
        changed = False
        candidates = {user for node in region for out in node.outputs for user, _ in out.uses()}
        for candidate in sorted(candidates - members, key=lambda n: order.get(n, -1)):
            if candidate not in order or candidate in owner:
                continue  # a node of a subgraph, or taken by another region
            if not _fits(candidate, region, kind) or not _inputs_ready(candidate, members, first, order):
                continue
            region.append(candidate)
            members.add(candidate)
            changed = True
    return region


def _fits(candidate: ir.Node, region: list[ir.Node], kind: str) -> bool:
    """Whether ``candidate`` may join ``region`` by the op-count limits of its kind."""
    if kind == "glue":
        return not _is_key(candidate) and len(region) < GLUE_NODES
    if len(region) >= _MAX_KEY_NODES:
        return False
    if _is_layer(candidate):
        return not any(_is_layer(node) for node in region)
    if _is_attention_matmul(candidate):
        # Only an attention region (scores MatMul first) takes the context MatMul.
        return _is_attention_matmul(region[0]) and sum(map(_is_attention_matmul, region)) < 2
    return candidate.op_type in _TAIL_OPS


def _inputs_ready(candidate: ir.Node, members: set[ir.Node], first: int, order: dict[ir.Node, int]) -> bool:
    """The convexity rule of the module docstring."""
    for value in candidate.inputs:
        if value is None or is_constant(value):
            continue
        producer = value.producer()
        if producer is None or producer in members:
            continue  # a graph input, or made inside the region
        if order.get(producer, first) >= first:
            return False
    return True
