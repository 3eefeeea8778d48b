"""Common subexpression elimination (CSE) and duplicate-initializer merging.

Before → after::

    a = Relu(x)          a = Relu(x)
    b = Relu(x)    =>    y = Add(a, a)
    y = Add(a, b)

Two nodes are merged when they have the same op, attributes and inputs (onnx_ir's
``CommonSubexpressionEliminationPass``; non-deterministic ops are never merged). Initializers
with identical dtype, shape and bytes are merged first, so that nodes reading equal weights
become equal too. Graph outputs are kept distinct.

Initializer merging is ours, not onnx_ir's ``DeduplicateHashedInitializersPass``: that pass
hashes every tensor (about 1 s per 500 MB of weights, on every round). Here only tensors
that share dtype and shape are candidates, a 4 KiB sample separates most of those, and only
equal samples are compared in full. Main-graph initializers only; subgraph ones stay.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from modelpress.passes.base import ModelpressPass

__all__ = ["EliminateCommonSubexpressionsPass"]


class EliminateCommonSubexpressionsPass(ModelpressPass):
    """Merge equal initializers, then nodes that compute the same thing from the same inputs."""

    name = "eliminate-common-subexpressions"
    summary = "merge duplicate initializers and nodes computing the same value"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Deduplicate initializers, then run CSE; changed if either merged something."""
        modified = _merge_equal_initializers(model.graph)
        modified |= common_passes.CommonSubexpressionEliminationPass()(model).modified
        if modified:
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)


def _merge_equal_initializers(graph: ir.Graph) -> bool:
    """Point every user of a duplicate initializer at its first equal twin; True if any."""
    # (dtype, shape) -> (name, value, tensor) of each initializer that may have a twin.
    candidates: dict[
        tuple[ir.DataType, tuple[object, ...]], list[tuple[str, ir.Value, ir.TensorProtocol]]
    ] = collections.defaultdict(list)
    for name, value in graph.initializers.items():
        tensor = value.const_value
        if tensor is None or value.is_graph_input() or value.is_graph_output():
            continue
        if tensor.dtype == ir.DataType.STRING:
            continue
        candidates[(tensor.dtype, tuple(tensor.shape))].append((name, value, tensor))
    merged = False
    for values in candidates.values():
        if len(values) < 2:
            continue
        by_sample: dict[bytes, list[tuple[str, ir.Value, np.ndarray]]] = collections.defaultdict(list)
        for name, value, tensor in values:
            array = tensor.numpy()
            flat = array.reshape(-1)
            sample = flat[:: max(1, flat.size // 1024)][:1024].tobytes()
            by_sample[sample].append((name, value, array))
        for group in by_sample.values():
            kept: list[tuple[ir.Value, np.ndarray]] = []
            for name, value, array in group:
                twin = next((k for k, a in kept if _same_bits(a, array)), None)
                if twin is None:
                    kept.append((value, array))
                    continue
                value.replace_all_uses_with(twin)
                graph.initializers.pop(name)
                merged = True
    return merged


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    # Bitwise, not numeric: 0.0 and -0.0 differ; NaNs with equal payloads are equal.
    return bool(
        np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))
    )
