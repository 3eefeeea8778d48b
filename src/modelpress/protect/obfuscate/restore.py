"""Transport mode: turn an obfuscated model with its library back into a plain graph, in memory.

Before -> after (the model with the library's functions merged in)::

    a = q7::b9k(x, T1)                     a = Relu(Conv(x, W1))          W1 = (T1 * s1)[i1] reshaped
    d = q7::p2l(a, D)                      (decoy removed)
    y = m0::c4x(a, T2, d)                  y = Gemm(a, W2, B2)

Steps: inline every model-local function (``onnx_ir``'s ``InlinePass``); evaluate, in numpy,
each Mul/Gather/Reshape whose inputs are all constants and one of them comes from a weight
(the decoding that ``scramble-weights`` put in the functions; evaluating an original constant
expression instead is still exact), storing the result as an initializer; then remove every
node and initializer nothing uses (the decoys and the inputs the functions ignored). Decoding
is bit-exact, so the result computes exactly what the original did, with the original's ops
and weights: onnxruntime runs it at the original's speed. The names stay anonymous.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

__all__ = ["restore_original"]

logger = logging.getLogger(__name__)


def restore_original(model: ir.Model) -> ir.Model:
    """Inline, decode and prune ``model`` in place (see the module docstring); returns it."""
    common_passes.InlinePass()(model)
    folded = _fold_decoding(model.graph)
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    logger.info("restore: %d decoding nodes evaluated", folded)
    return model


def _fold_decoding(graph: ir.Graph) -> int:
    derived = set(graph.initializers.values())
    folded = 0
    for node in list(graph):
        if node.domain or node.op_type not in ("Mul", "Gather", "Reshape") or len(node.outputs) != 1:
            continue
        arrays = [_constant(value) for value in node.inputs]
        output = node.outputs[0]
        if (
            any(a is None for a in arrays)
            or not derived.intersection(node.inputs)
            or output.is_graph_output()
        ):
            continue
        result = _evaluate(node, arrays)  # type: ignore[arg-type]
        if result is None:
            continue
        name = output.name or f"folded{folded}"
        output.name = f"{name}_unfolded"
        value = ir.Value(
            name=name,
            const_value=ir.tensor(result, name=name),
            type=ir.TensorType(ir.DataType.from_numpy(result.dtype)),
            shape=ir.Shape(result.shape),
        )
        graph.register_initializer(value)
        output.replace_all_uses_with(value)
        derived.add(value)
        folded += 1
    return folded


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _evaluate(node: ir.Node, arrays: list[np.ndarray]) -> np.ndarray | None:
    """The node's output, computed as onnxruntime would; None for a case not handled here."""
    if node.op_type == "Mul" and len(arrays) == 2 and arrays[0].dtype == arrays[1].dtype:
        return np.ascontiguousarray(np.multiply(arrays[0], arrays[1]))
    if node.op_type == "Gather" and len(arrays) == 2:
        axis = node.attributes.get_int("axis", 0)
        indices = arrays[1]
        size = arrays[0].shape[axis] if arrays[0].ndim else 0
        if indices.size and (indices.min() < -size or indices.max() >= size):
            return None
        return np.ascontiguousarray(np.take(arrays[0], indices, axis=axis))
    if node.op_type == "Reshape" and len(arrays) == 2:
        shape = [int(d) for d in arrays[1]]
        if 0 in shape:  # ONNX's "copy this dim" (allowzero=0) differs from numpy; not a decoding
            return None
        return np.ascontiguousarray(arrays[0].reshape(shape))
    return None
