"""Graph compression: replace each key subgraph by one opaque node backed by a model-local function.

Before -> after (issue 4, step 2)::

    h = Relu(BatchNormalization(Conv(x, W, B), s, b, m, v))      h = f3(x, W, B, s, b, m, v)
    y = Add(MatMul(h2, W2), B2)                                  y = f4(h2, W2, B2)

The main graph is partitioned into convex regions (``_regions``): key subgraphs such as
Conv(+BN)+activation(+residual Add), MatMul/Gemm+bias+activation (GELU included), attention
blocks (scores, mask, Softmax, context, output projection, residual, LayerNorm) and
LayerNorm; then glue regions for what is left (shape arithmetic, Flatten). *Every* node of the
main graph ends up inside a function, so the model file names no standard op at all. Each
region becomes a function of its own (``outline_region``), in domain ``DOMAIN`` under a
provisional name; ``anonymize-op-types`` gives both meaningless names later.

The math is untouched: the nodes move into the function unchanged. onnxruntime inlines
model-local functions when it creates a session, then optimizes the inlined graph as it
would the original, so at ``ORT_ENABLE_ALL`` the run time is the original's.

Preconditions: no model-local functions yet and no If/Loop/Scan (their bodies would capture
values from the main graph; not supported). Constant nodes are lifted to initializers first.
The pass is not idempotent in the usual sense: a second run finds only opaque nodes, which it
leaves alone (``changed=False``).
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from modelpress.errors import PreconditionError
from modelpress.passes.base import ModelpressPass
from modelpress.protect.obfuscate._outline import outline_region
from modelpress.protect.obfuscate._regions import find_regions

__all__ = ["DOMAIN", "CompressSubgraphsPass"]

logger = logging.getLogger(__name__)

# Provisional domain of the opaque ops (renamed by anonymize-op-types).
DOMAIN = "modelpress.opaque"


class CompressSubgraphsPass(ModelpressPass):
    """Replace every key subgraph (and the glue between them) by one opaque node."""

    name = "compress-subgraphs"
    summary = "replace key subgraphs (Conv+BN+Relu, MatMul+Add+GELU, attention, ...) by opaque nodes"

    def requires(self, model: ir.Model) -> None:
        """Refuse control flow; functions are accepted only if they are our own opaque ops."""
        foreign = [f"{d}::{n}" for d, n, _ in model.functions if d != DOMAIN]
        if foreign:
            raise PreconditionError(
                "compress-subgraphs: the model already has model-local functions "
                f"({', '.join(foreign[:3])}); inline them first (onnx_ir.passes.common.InlinePass)"
            )
        control = sorted({n.op_type for n in model.graph if n.op_type in ("If", "Loop", "Scan")})
        if control:
            raise PreconditionError(
                f"compress-subgraphs: control flow ({', '.join(control)}) is not supported by "
                "opaque-operator obfuscation; use --strength without the operator library"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Partition, then outline each region; ``changed`` when any plain node was left."""
        if all(node.domain == DOMAIN for node in model.graph):
            return ir.passes.PassResult(model, False)
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        model.graph.sort()
        regions = find_regions(model.graph)
        start = len(model.functions)
        for index, region in enumerate(regions):
            logger.debug("compress-subgraphs: region %d = %s", index, region.label())
            _, function = outline_region(model.graph, region.nodes, DOMAIN, f"op{start + index}")
            model.functions[function.identifier()] = function
        model.opset_imports[DOMAIN] = 1
        for name, value in list(model.graph.initializers.items()):
            if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
                del model.graph.initializers[name]  # copied into a function as a Constant
        logger.info(
            "compress-subgraphs: %d regions (%d key, %d glue)",
            len(regions),
            sum(r.kind == "key" for r in regions),
            sum(r.kind == "glue" for r in regions),
        )
        return ir.passes.PassResult(model, True)
