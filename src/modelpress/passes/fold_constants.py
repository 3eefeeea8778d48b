"""Constant folding: compute offline every node whose inputs are all constants (常量折叠).

Before → after::

    shape = Shape(x)              # x: float[1,3,224,224]
    n = Gather(shape, 0)          =>  (nothing: the Reshape's shape becomes an initializer)
    s = Concat(n, [-1])
    y = Reshape(x, s)                 y = Reshape(x, [1, -1])

The engine is onnxscript's ``FoldConstantsPass``: it evaluates foldable nodes with the ONNX
reference implementation, and folds shape arithmetic (Shape/Size/Gather/Concat/...) wherever
the static shapes are known from node-level shape inference. ``Constant`` and
``ConstantOfShape`` nodes with constant inputs become initializers (weights stored as
``ConstantOfShape`` are materialized, as onnxslim does). Inputs or results larger than the
size limits (2**28 elements, 1 GiB of fp32) are left alone to bound memory.
Control-flow ops and non-deterministic ops (Random*) are never folded.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.optimizer import _constant_folding

from modelpress.passes.base import ModelpressPass

__all__ = ["FoldConstantsPass"]


class FoldConstantsPass(ModelpressPass):
    """Evaluate constant subgraphs offline and store their results as initializers."""

    name = "fold-constants"
    summary = "compute constant subexpressions (shape arithmetic, ConstantOfShape, Constant) offline"

    def __init__(self, *, input_size_limit: int = 1 << 28, output_size_limit: int = 1 << 28) -> None:
        super().__init__()
        self.input_size_limit = input_size_limit
        self.output_size_limit = output_size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Fold, then lift the remaining Constant nodes to initializers."""
        folder = _constant_folding.FoldConstantsPass(
            shape_inference=True,
            input_size_limit=self.input_size_limit,
            output_size_limit=self.output_size_limit,
            should_fold=_fold_constant_of_shape,
        )
        # onnxscript may report a change when it only refined shapes; count nodes to be honest.
        before = _signature(model)
        folder(model)
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, _signature(model) != before)


def _fold_constant_of_shape(node: ir.Node) -> bool | None:
    # onnxscript keeps ConstantOfShape to keep files small; a deployment model wants the weight
    # (light models from the onnx wheel store every weight this way). Size limits still apply.
    if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
        return True
    return None


def _signature(model: ir.Model) -> tuple[object, ...]:
    """What counts as a change: the nodes (type and inputs) and the initializer set."""
    nodes = tuple((n.op_type, tuple(v.name if v else "" for v in n.inputs)) for n in model.graph)
    return nodes, tuple(sorted(model.graph.initializers))
