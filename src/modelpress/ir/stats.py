"""Structural summaries of a model: op histogram, node and parameter counts, sizes.

Counts include nodes inside subgraphs (If/Loop/Scan bodies) and model-local functions, so
that a pass that changes a loop body shows up in the report.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import onnx_ir as ir

from modelpress.ir import io

__all__ = ["ModelStats", "ValueSummary", "count_nodes", "model_stats", "op_histogram"]


def _all_nodes(model: ir.Model) -> list[ir.Node]:
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    for function in model.functions.values():
        nodes.extend(ir.traversal.RecursiveGraphIterator(function))
    return nodes


def _op_name(node: ir.Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def op_histogram(model: ir.Model) -> dict[str, int]:
    """Number of nodes of each op type (``domain::Op`` outside the default domain)."""
    counts = collections.Counter(_op_name(n) for n in _all_nodes(model))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def count_nodes(model: ir.Model) -> int:
    """Total number of nodes, subgraphs and functions included."""
    return len(_all_nodes(model))


@dataclasses.dataclass(frozen=True)
class ValueSummary:
    """Name, element type and shape of a graph input or output.

    ``shape`` holds ints for static dims, names for symbolic dims and None for unnamed
    dynamic dims; it is None when the rank is unknown.
    """

    name: str
    dtype: str
    shape: list[int | str | None] | None


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """What `modelpress info` prints about a model."""

    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[ValueSummary]
    outputs: list[ValueSummary]
    nodes: int
    ops: dict[str, int]
    parameters: int
    weight_bytes: int
    functions: int
    external_weight_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return dataclasses.asdict(self)


def _describe(value: ir.Value) -> ValueSummary:
    if isinstance(value.type, ir.TensorType) and value.dtype is not None:
        dtype = value.dtype.name.lower()
    else:
        dtype = str(value.type) if value.type is not None else "unknown"
    shape: list[int | str | None] | None = None
    if value.shape is not None:
        shape = [dim if isinstance(dim, int) else (dim.value or None) for dim in value.shape]
    return ValueSummary(value.name or "", dtype, shape)


def _initialized_tensors(model: ir.Model) -> list[ir.TensorProtocol]:
    # Initializers of subgraphs (If/Loop/Scan bodies) are parameters too.
    return [
        value.const_value
        for graph in model.graphs()
        for value in graph.initializers.values()
        if value.const_value is not None
    ]


def model_stats(model: ir.Model) -> ModelStats:
    """Collect the summary of ``model`` without loading external weights into memory.

    Parameters and weight bytes count the initializers of every graph (subgraphs included);
    inputs that an initializer backs are listed as inputs all the same.
    """
    tensors = _initialized_tensors(model)
    return ModelStats(
        ir_version=model.ir_version,
        opsets=dict(model.opset_imports),
        producer=f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        inputs=[_describe(v) for v in model.graph.inputs],
        outputs=[_describe(v) for v in model.graph.outputs],
        nodes=count_nodes(model),
        ops=op_histogram(model),
        parameters=sum(t.size for t in tensors),
        weight_bytes=sum(io.tensor_nbytes(t) for t in tensors),
        functions=len(model.functions),
        external_weight_bytes=sum(t.nbytes for t in tensors if isinstance(t, ir.ExternalTensor)),
    )
