"""Common subexpression elimination (CSE) and duplicate-initializer merging.

Before → after::

    a = Relu(x)          a = Relu(x)
    b = Relu(x)    =>    y = Add(a, a)
    y = Add(a, b)

Two nodes are merged when they have the same op, attributes and inputs (onnx_ir's
``CommonSubexpressionEliminationPass``; non-deterministic ops are never merged). Initializers
with identical dtype, shape and bytes are merged first, so that nodes reading equal weights
become equal too. Graph outputs are kept distinct.
"""

from __future__ import annotations

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
        # No size limit: folded weights can be large and equal; hashing keeps memory bounded.
        modified = common_passes.DeduplicateHashedInitializersPass(size_limit=1 << 62)(model).modified
        modified |= common_passes.CommonSubexpressionEliminationPass()(model).modified
        if modified:
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
