"""Make weights constants: drop initializers from the graph inputs (IR version >= 4).

Before → after::

    graph (x, W, B) initializers {W, B}   =>   graph (x) initializers {W, B}

Up to IR version 3 every initializer had to be listed as a graph input too, which makes it
an *overridable default*: onnxruntime will not constant-fold it, and no rewrite may fold
it either (a caller could feed another W). Deployment models have fixed weights, so this
pass removes those inputs, raising the model's IR version to 4 where it was lower (IR 4 only
relaxed that rule). Inputs without an initializer are never touched.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from modelpress.passes.base import ModelpressPass

__all__ = ["RemoveInitializerInputsPass"]


class RemoveInitializerInputsPass(ModelpressPass):
    """Turn initializers that are also graph inputs into plain constants."""

    name = "remove-initializer-inputs"
    summary = "treat weights listed as graph inputs (IR < 4 style) as constants"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Remove initializer-backed inputs; bump IR version to 4 if needed."""
        initializers = set(model.graph.initializers)
        if not any(v.name in initializers for v in model.graph.inputs):
            return ir.passes.PassResult(model, False)
        model.ir_version = max(model.ir_version, 4)
        common_passes.RemoveInitializersFromInputsPass()(model)
        return ir.passes.PassResult(model, True)
