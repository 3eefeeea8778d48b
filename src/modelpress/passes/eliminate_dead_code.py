"""Dead code elimination: drop nodes, initializers, functions and opset imports nobody uses.

A node is dead when none of its outputs reaches a graph output (through any chain of nodes,
subgraphs included). Unused model-local functions and the opset imports only they needed go
too. Graph inputs are never removed: they are the model's interface.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from modelpress.passes.base import ModelpressPass

__all__ = ["EliminateDeadCodePass"]


class EliminateDeadCodePass(ModelpressPass):
    """Remove unused nodes, initializers, functions and opset imports."""

    name = "eliminate-dead-code"
    summary = "remove nodes, initializers and functions whose results are never used"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Run onnx_ir's unused-removal passes; changed if any of them removed something."""
        modified = False
        for pass_ in (
            common_passes.RemoveUnusedNodesPass(),
            common_passes.RemoveUnusedFunctionsPass(),
            common_passes.RemoveUnusedOpsetsPass(),
        ):
            modified |= pass_(model).modified
        return ir.passes.PassResult(model, modified)
