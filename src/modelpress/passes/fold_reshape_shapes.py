"""Replace a Reshape's computed target shape by a constant of 0 / -1 / sizes.

Before → after (x: [batch, seq, 128], dynamic batch and seq)::

    s = Shape(x); b = Gather(s, 0); t = Gather(s, 1)
    target = Concat(Unsqueeze(b), Unsqueeze(t), [4], [32])    =>   y = Reshape(x, [0, 0, 4, 32])
    y = Reshape(x, target)

Exporters write the target shape of every Reshape as run-time shape arithmetic whenever an
axis is dynamic (BERT-like encoders: ~6 nodes per Reshape, ~40 % of the graph). ONNX
shape inference with data propagation knows each Reshape's output dims symbolically; a
Reshape with ``allowzero = 0`` copies input dim ``i`` wherever the target holds 0, and infers
one -1. So with output dims ``o`` and input dims ``d``:

* ``o[i]`` a known integer  -> ``o[i]``;
* ``o[i]`` the same symbol as ``d[i]`` (same position)  -> ``0``;
* otherwise unknown: at most one, which becomes ``-1``.

onnxruntime's own ``ReshapeFusion`` does this at load time; doing it offline makes the
graph small for every runtime (and for onnxruntime at ORT_DISABLE_ALL). onnxscript's
``materialize_reshape_shape`` rule handles only outputs with at most one symbolic dim.

Preconditions: shape inference succeeds (it runs on a copy; the model's own value infos
are not changed). Refused per Reshape: ``allowzero = 1`` (0 would mean an empty axis), an
output shape that inference cannot give, two or more unknown dims, an already constant target.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from modelpress.passes._rewriting import unique_names
from modelpress.passes.base import ModelpressPass
from modelpress.passes.rules import const_array, int_attr

__all__ = ["FoldReshapeShapesPass", "reshape_target"]

Dim = int | str | None


def reshape_target(in_dims: list[Dim] | None, out_dims: list[Dim] | None) -> list[int] | None:
    """The constant target for ``Reshape(x)`` (allowzero = 0) giving ``out_dims``, or None.

    Dims are integers, symbol names, or None (unknown, never equal to anything).
    """
    if out_dims is None:
        return None
    target: list[int] = []
    unknown = 0
    for i, dim in enumerate(out_dims):
        if isinstance(dim, int):
            if dim == 0:
                return None  # an empty axis cannot be written under allowzero = 0
            target.append(dim)
        elif dim is not None and in_dims is not None and i < len(in_dims) and in_dims[i] == dim:
            target.append(0)
        else:
            unknown += 1
            target.append(-1)
    return target if unknown <= 1 else None


def _dims(value: ir.Value | None) -> list[Dim] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else (d.value or None) for d in value.shape]


class FoldReshapeShapesPass(ModelpressPass):
    """Turn run-time Reshape target computations into constants (0 = copy, -1 = infer)."""

    name = "fold-reshape-shapes"
    summary = "replace a Reshape's computed target shape by a constant with 0 / -1 entries"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Infer symbolic shapes on a copy, then rewrite each Reshape it pins down."""
        reshapes = [
            n
            for n in model.graph
            if n.op_type == "Reshape"
            and n.domain in ("", "ai.onnx")
            and len(n.inputs) == 2
            and const_array(n.inputs[1]) is None
            and int_attr(n, "allowzero", 0) == 0
        ]
        if not reshapes:
            return ir.passes.PassResult(model, False)
        inferred = _inferred_dims(model)
        changed = False
        for node in reshapes:
            data, out = node.inputs[0], node.outputs[0]
            if data is None:  # Reshape's data is a required input: only in an invalid model
                continue
            target = reshape_target(inferred.get(data.name or ""), inferred.get(out.name or ""))
            if target is None:
                continue
            (name,) = unique_names(model.graph, [f"{out.name or 'reshape'}_shape"])
            const = ir.Value(
                name=name,
                type=ir.TensorType(ir.DataType.INT64),
                shape=ir.Shape([len(target)]),
                const_value=ir.tensor(np.array(target, np.int64), name=name),
            )
            model.graph.register_initializer(const)
            node.replace_input_with(1, const)
            changed = True
        if changed:
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, changed)


def _inferred_dims(model: ir.Model) -> dict[str, list[Dim] | None]:
    """Symbolic dims of every main-graph value after ONNX shape inference with data propagation."""
    copy = model.clone()
    # Trust only what inference derives from the inputs, not shapes the file declares.
    for node in copy.graph:
        for value in node.outputs:
            value.shape = None
    try:
        common_passes.ShapeInferencePass(strict_mode=False, data_prop=True)(copy)
    except Exception:  # inference is best effort: without it nothing is rewritten
        return {}
    dims: dict[str, list[Dim] | None] = {}
    for value in copy.graph.inputs:
        dims[value.name or ""] = _dims(value)
    for node in copy.graph:
        for value in node.outputs:
            dims[value.name or ""] = _dims(value)
    return dims
