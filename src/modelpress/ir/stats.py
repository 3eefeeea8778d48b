"""Structural summaries of a model: op histogram, node and parameter counts, sizes.

Counts include nodes inside subgraphs (If/Loop/Scan bodies) and model-local functions, so
that a pass that changes a loop body shows up in the report.
"""

from __future__ import annotations

import collections
import dataclasses

import onnx_ir as ir

__all__ = ["ModelStats", "count_nodes", "model_stats", "op_histogram"]


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
class ModelStats:
    """What `modelpress info` prints about a model."""

    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[tuple[str, str, list[int | str | None]]]
    outputs: list[tuple[str, str, list[int | str | None]]]
    nodes: int
    ops: dict[str, int]
    parameters: int
    weight_bytes: int
    functions: int

    def to_json(self) -> dict:
        """A JSON-serializable dict."""
        return dataclasses.asdict(self)


def _describe(value: ir.Value) -> tuple[str, str, list[int | str | None]]:
    dtype = value.dtype.name if value.dtype is not None else str(value.type)
    dims: list[int | str | None] = []
    if value.shape is not None:
        for dim in value.shape:
            dims.append(dim if isinstance(dim, int) else (dim.value if dim.value else None))
    return (value.name or "", dtype.lower(), dims)


def model_stats(model: ir.Model) -> ModelStats:
    """Collect the summary of ``model`` without loading external weights into memory."""
    params = 0
    weight_bytes = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None:
            params += tensor.size
            weight_bytes += tensor.nbytes
    return ModelStats(
        ir_version=model.ir_version,
        opsets=dict(model.opset_imports),
        producer=f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        inputs=[_describe(v) for v in model.graph.inputs],
        outputs=[_describe(v) for v in model.graph.outputs],
        nodes=count_nodes(model),
        ops=op_histogram(model),
        parameters=params,
        weight_bytes=weight_bytes,
        functions=len(model.functions),
    )
