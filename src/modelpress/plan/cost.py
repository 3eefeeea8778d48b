"""Per-node cost of an ONNX model at given dim sizes: FLOPs, bytes moved, peak activations.

``model_cost(model, {"sequence": 128}, batch=1, element_bytes=2)`` binds the dynamic dims
(``plan._shapes``), infers every shape, then costs each node:

* FLOPs by the formulas of ``plan._formulas`` (a multiply-add is 2 FLOPs).
* Bytes moved = activations read + weights read + outputs written. Floating-point tensors
  are counted at ``element_bytes`` (the precision being planned: 4 fp32, 2 fp16/bf16, 1
  fp8/int8); integer and boolean tensors (indices, masks, shapes) at their own size.
  ``Gather`` reads only the rows it gathers (output-sized), not the whole table; ``Shape``
  and ``Size`` read metadata only.
* Static nodes (all inputs constant or derived from ``Shape``/``Size``: shape arithmetic and
  unfolded weight transforms) are not costed: runtimes fold them or run them on the host.
  They are counted in ``static_nodes``.
* A node whose shapes cannot be inferred, or whose op type has no formula (control flow,
  custom domains, Einsum, RNNs...), is listed in ``unknown`` with the reason, never costed
  as zero silently. Its outputs count as 0 bytes in the liveness walk.

Peak activation memory is a simple estimate: walk the nodes in graph (topological) order,
allocate each output when its node runs, free each value after its last consumer (graph
outputs stay live), and keep the largest total. It ignores allocator fragmentation, kernel
workspaces and in-place reuse by the runtime.
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import math
from typing import Any

import onnx_ir as ir

from modelpress.errors import UsageError
from modelpress.plan import _formulas
from modelpress.plan._shapes import BoundDims, bind_and_infer, static_shape

__all__ = ["ModelCost", "NodeCost", "OpTotals", "UnknownNode", "cost_inferred", "model_cost"]

# Ops that read their inputs' metadata only.
_METADATA_OPS = frozenset(("Shape", "Size"))


@dataclasses.dataclass(frozen=True)
class NodeCost:
    """What one node costs at the bound dims.

    Attributes:
        name: Node name (``op_type#index`` when the node has none).
        op_type: ``Op`` or ``domain::Op``.
        flops: Floating-point (or integer) operations, a multiply-add counted as 2.
        input_bytes: Activation bytes read (scale with batch).
        weight_bytes: Constant bytes read (do not scale with batch).
        output_bytes: Bytes written (scale with batch).
    """

    name: str
    op_type: str
    flops: int
    input_bytes: int
    weight_bytes: int
    output_bytes: int

    @property
    def bytes_moved(self) -> int:
        """Everything read and written."""
        return self.input_bytes + self.weight_bytes + self.output_bytes


@dataclasses.dataclass(frozen=True)
class UnknownNode:
    """A node that was not costed, and why."""

    name: str
    op_type: str
    reason: str


@dataclasses.dataclass(frozen=True)
class OpTotals:
    """Totals over the costed nodes of one op type."""

    count: int
    flops: int
    bytes_moved: int


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """The cost of a whole model at the bound dims and element size.

    Attributes:
        nodes: Every costed node, in graph order.
        unknown: Nodes not costed (shape not inferred, or no formula), with the reason.
        static_nodes: Nodes left out as folded or host-side shape arithmetic.
        by_op: Totals per op type, largest FLOPs first.
        total_flops: Sum of FLOPs over the costed nodes.
        weight_bytes: Bytes of every initializer and Constant (at ``element_bytes`` if float).
        peak_activation_bytes: Peak live activation memory from the liveness walk.
        element_bytes: Bytes per floating-point element used for every count.
        dims: Size of each named dynamic dim of the graph inputs.
        batch: Size of the dynamic leading dim, None when the model's batch is static.
    """

    nodes: list[NodeCost]
    unknown: list[UnknownNode]
    static_nodes: int
    by_op: dict[str, OpTotals]
    total_flops: int
    weight_bytes: int
    peak_activation_bytes: int
    element_bytes: int
    dims: dict[str, int]
    batch: int | None

    @property
    def total_bytes_moved(self) -> int:
        """Sum of bytes moved over the costed nodes."""
        return sum(node.bytes_moved for node in self.nodes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict (per-node rows included)."""
        data = dataclasses.asdict(self)
        data["total_bytes_moved"] = self.total_bytes_moved
        return data


def _op_name(node: ir.Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def _node_name(node: ir.Node, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


class _Sizer:
    """Bytes of a value at the planned element size (floats) or its own size (others)."""

    def __init__(self, element_bytes: int) -> None:
        self.element_bytes = element_bytes

    def nbytes(self, value: ir.Value | None) -> int | None:
        shape = static_shape(value)
        if value is None or shape is None:
            return None
        return math.prod(shape) * self.itemsize(value.dtype)

    def itemsize(self, dtype: ir.DataType | None) -> int:
        if dtype is None or dtype.is_floating_point():
            return self.element_bytes
        # Sub-byte types (int4...) still take a byte each in most kernels' buffers.
        return max(1, dtype.bitwidth // 8)


def _is_constant_value(value: ir.Value, static: set[ir.Value]) -> bool:
    return value.const_value is not None or value in static


def _static_outputs(graph: ir.Graph) -> set[ir.Value]:
    """Outputs of Constant nodes and of nodes computable before any activation exists."""
    static: set[ir.Value] = set()
    for node in graph:
        inputs = [v for v in node.inputs if v is not None]
        is_static = (
            node.op_type == "Constant"
            or node.op_type in _METADATA_OPS
            or (bool(inputs) and all(_is_constant_value(v, static) for v in inputs))
        )
        if is_static and node.domain in ("", "ai.onnx") and not _has_subgraph(node):
            static.update(node.outputs)
    return static


def _has_subgraph(node: ir.Node) -> bool:
    return any(
        attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()
    )


def _cost_node(node: ir.Node, name: str, sizer: _Sizer, static: set[ir.Value]) -> NodeCost | UnknownNode:
    op = _op_name(node)
    if _has_subgraph(node):
        return UnknownNode(name, op, "control flow: the body graphs are not costed")
    formula = _formulas.FORMULAS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if formula is None:
        return UnknownNode(name, op, f"no cost formula for op type {op}")
    for output in node.outputs:
        if static_shape(output) is None:
            return UnknownNode(name, op, f"shape of output '{output.name}' was not inferred")
    input_shapes = [static_shape(v) for v in node.inputs]
    for maybe_input, shape in zip(node.inputs, input_shapes, strict=True):
        if maybe_input is not None and shape is None and node.op_type not in _METADATA_OPS:
            return UnknownNode(name, op, f"shape of input '{maybe_input.name}' was not inferred")
    flops = formula(node, input_shapes, [static_shape(v) for v in node.outputs])
    if flops is None:
        return UnknownNode(name, op, "a shape or attribute the FLOP formula needs is missing")
    output_bytes = sum(sizer.nbytes(v) or 0 for v in node.outputs)
    input_bytes = weight_bytes = 0
    for position, value in enumerate(node.inputs):
        if value is None or node.op_type in _METADATA_OPS:
            continue
        read = sizer.nbytes(value) or 0
        if node.op_type == "Gather" and position == 0:
            read = output_bytes  # only the gathered rows are read
        if _is_constant_value(value, static):
            weight_bytes += read
        else:
            input_bytes += read
    return NodeCost(name, op, flops, input_bytes, weight_bytes, output_bytes)


def _peak_activation_bytes(graph: ir.Graph, sizer: _Sizer, static: set[ir.Value]) -> int:
    nodes = [node for node in graph if not all(v in static for v in node.outputs)]
    last_use: dict[ir.Value, int] = {}
    for index, node in enumerate(nodes):
        for value in node.inputs:
            if value is not None:
                last_use[value] = index
    kept = set(graph.outputs)
    live: dict[ir.Value, int] = {
        v: sizer.nbytes(v) or 0 for v in graph.inputs if v.name not in graph.initializers
    }
    peak = sum(live.values())
    for index, node in enumerate(nodes):
        for value in node.outputs:
            live[value] = sizer.nbytes(value) or 0
        peak = max(peak, sum(live.values()))
        for value in list(live):
            if value not in kept and last_use.get(value, -1) <= index:
                del live[value]
    return peak


def _weight_bytes(graph: ir.Graph, sizer: _Sizer) -> int:
    total = sum(sizer.nbytes(v) or 0 for v in graph.initializers.values())
    for node in graph:
        if node.op_type == "Constant":
            total += sum(sizer.nbytes(v) or 0 for v in node.outputs)
    return total


def _totals(nodes: list[NodeCost]) -> dict[str, OpTotals]:
    grouped: dict[str, list[NodeCost]] = collections.defaultdict(list)
    for node in nodes:
        grouped[node.op_type].append(node)
    totals = {
        op: OpTotals(len(group), sum(n.flops for n in group), sum(n.bytes_moved for n in group))
        for op, group in grouped.items()
    }
    return dict(sorted(totals.items(), key=lambda kv: (-kv[1].flops, -kv[1].bytes_moved, kv[0])))


def cost_inferred(inferred: ir.Model, bound: BoundDims, element_bytes: int) -> ModelCost:
    """Cost a model whose dims are already bound and shapes inferred (``bind_and_infer``).

    ``plan_model`` infers once and calls this for each element size it plans.

    Raises:
        UsageError: ``element_bytes`` is not 1, 2, 4 or 8.
    """
    if element_bytes not in (1, 2, 4, 8):
        raise UsageError(f"element_bytes {element_bytes} must be 1, 2, 4 or 8")
    graph = inferred.graph
    sizer = _Sizer(element_bytes)
    static = _static_outputs(graph)
    nodes: list[NodeCost] = []
    unknown: list[UnknownNode] = []
    static_count = 0
    for index, node in enumerate(graph):
        if node.outputs and all(v in static for v in node.outputs):
            static_count += 1
            continue
        result = _cost_node(node, _node_name(node, index), sizer, static)
        if isinstance(result, NodeCost):
            nodes.append(result)
        else:
            unknown.append(result)
    return ModelCost(
        nodes=nodes,
        unknown=unknown,
        static_nodes=static_count,
        by_op=_totals(nodes),
        total_flops=sum(n.flops for n in nodes),
        weight_bytes=_weight_bytes(graph, sizer),
        peak_activation_bytes=_peak_activation_bytes(graph, sizer, static),
        element_bytes=element_bytes,
        dims=dict(bound.sizes),
        batch=bound.batch,
    )


def model_cost(
    model: ir.Model,
    dims: collections.abc.Mapping[str, int] | None = None,
    *,
    batch: int | None = None,
    element_bytes: int = 2,
) -> ModelCost:
    """Cost every node of ``model`` with its dynamic dims bound.

    Args:
        model: The model; it is not modified (a clone is inferred).
        dims: Sizes of dynamic dims by name; ``"*"`` for every other one. Unbound dims get
            ``runtime.feeds.DEFAULT_DIM``.
        batch: Size of the dynamic leading dim of the graph inputs (unless ``dims`` names it).
        element_bytes: Bytes per floating-point element (4, 2 or 1).

    Raises:
        UsageError: a size or ``element_bytes`` is not a positive int.
    """
    if element_bytes not in (1, 2, 4, 8):
        raise UsageError(f"element_bytes {element_bytes} must be 1, 2, 4 or 8")
    inferred, bound = bind_and_infer(model, dims, batch=batch)
    return cost_inferred(inferred, bound, element_bytes)
