"""Dynamic int8: weights quantized offline, activations quantized at run time.

Rewrite of ``y = MatMul(x, W)`` (``W`` a constant ``[K, N]`` float weight; ``Gemm`` with
``transB`` uses ``W.T``, and its bias is added after)::

    x_u8, x_scale, x_zero_point = DynamicQuantizeLinear(x)        (one per x, shared)
    y_i32 = MatMulInteger(x_u8, W_i8, x_zero_point, W_zero_point)
    y_scale = Mul(x_scale, W_scale)                               ([N] per column, or a scalar)
    y = Mul(Cast(y_i32, to=FLOAT), y_scale)                       (Gemm: then Add(y, B))

This is what ``onnxruntime.quantization.quantize_dynamic`` emits, and what onnxruntime fuses at
``ORT_ENABLE_ALL`` into ``MatMulIntegerToFloat`` and, where the DynamicQuantizeLinear feeds one
MatMul only, ``DynamicQuantizeMatMul`` (bias Add included). Math:
``DynamicQuantizeLinear`` picks ``x_scale = (max(x, 0) - min(x, 0)) / 255`` and
``x_zero_point = round(-min(x, 0) / x_scale)`` per call (uint8); ``W_i8`` is symmetric int8 per
output column (``qdq.quantize_weight``, zero point 0), so
``y ~ (x_u8 - x_zero_point) @ W_i8 * x_scale * W_scale`` exactly as the integer kernel computes it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from modelpress.quantize.plan import QuantPlan
from modelpress.quantize.qdq import QdqStats, _Names, quantize_weight
from modelpress.quantize.spec import QuantSpec

__all__ = ["apply_dynamic"]

_FLOAT, _UINT8, _INT32 = ir.DataType.FLOAT, ir.DataType.UINT8, ir.DataType.INT32


class _DynamicRewriter:
    def __init__(self, model: ir.Model, spec: QuantSpec) -> None:
        self.graph = model.graph
        self.spec = spec
        self.names = _Names(self.graph)
        self.quantized_inputs: dict[int, tuple[ir.Value, ir.Value, ir.Value]] = {}
        self.stats = QdqStats()

    def const(self, base: str, array: np.ndarray) -> ir.Value:
        name = self.names(base)
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.type, value.shape = ir.TensorType(ir.DataType.from_numpy(array.dtype)), ir.Shape(array.shape)
        self.graph.register_initializer(value)
        return value

    def op(
        self, op_type: str, inputs: list[ir.Value], base: str, dtypes: list[ir.DataType], **attrs: int
    ) -> ir.Node:
        node = ir.node(
            op_type, inputs, attributes=attrs, num_outputs=len(dtypes), name=self.names(f"{base}_{op_type}")
        )
        suffixes = ("", "_scale", "_zero_point") if len(dtypes) == 3 else ("",)
        for out, dtype, suffix in zip(node.outputs, dtypes, suffixes, strict=True):
            out.name, out.type = self.names(f"{base}{suffix}"), ir.TensorType(dtype)
        return node

    def quantize_input(self, x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        """One DynamicQuantizeLinear per activation, right after its producer."""
        if id(x) not in self.quantized_inputs:
            node = self.op("DynamicQuantizeLinear", [x], f"{x.name}_u8", [_UINT8, _FLOAT, _UINT8])
            producer = x.producer()
            if producer is not None:
                self.graph.insert_after(producer, node)
            else:
                self.graph.insert_before(next(iter(self.graph)), node)
            self.quantized_inputs[id(x)] = tuple(node.outputs)  # type: ignore[assignment]
            self.stats.activations += 1
        return self.quantized_inputs[id(x)]

    def rewrite(self, node: ir.Node, axis: int | None) -> None:
        x, weight, bias = node.inputs[0], node.inputs[1], (node.inputs[2] if len(node.inputs) > 2 else None)
        assert x is not None and weight is not None and weight.const_value is not None
        w = weight.const_value.numpy().astype(np.float32)
        if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
            w = np.ascontiguousarray(w.T)
        w_i8, w_scale = quantize_weight(w, 1 if axis is not None else None, self.spec.weight_qmax)
        x_u8, x_scale, x_zero_point = self.quantize_input(x)
        out = node.outputs[0]
        base = out.name or "y"
        integer = self.op(
            "MatMulInteger",
            [
                x_u8,
                self.const(f"{weight.name}_i8", w_i8),
                x_zero_point,
                self.const(f"{weight.name}_zero_point", np.zeros(w_scale.shape, np.int8)),
            ],
            f"{base}_i32",
            [_INT32],
        )
        scale = self.op(
            "Mul", [x_scale, self.const(f"{weight.name}_scale", w_scale)], f"{base}_scale", [_FLOAT]
        )
        cast = self.op("Cast", [integer.outputs[0]], f"{base}_int_float", [_FLOAT], to=_FLOAT.value)
        product = self.op("Mul", [cast.outputs[0], scale.outputs[0]], f"{base}_dynamic", [_FLOAT])
        new_nodes = [integer, scale, cast, product]
        if node.op_type == "Gemm" and bias is not None:
            new_nodes.append(self.op("Add", [product.outputs[0], bias], f"{base}_biased", [_FLOAT]))
        final = new_nodes[-1].outputs[0]
        final.shape = out.shape
        ir.convenience.replace_nodes_and_values(self.graph, node, [node], new_nodes, [out], [final])
        if not weight.uses() and not weight.is_graph_output() and weight.name in self.graph.initializers:
            self.graph.initializers.pop(weight.name)  # type: ignore[arg-type]
        self.stats.weights += 1


def apply_dynamic(model: ir.Model, plan: QuantPlan, spec: QuantSpec) -> QdqStats:
    """Rewrite every planned MatMul/Gemm of ``model`` in place (module docstring).

    ``stats.activations`` counts the DynamicQuantizeLinear nodes, ``stats.weights`` the int8
    weights (one per rewritten node).
    """
    rewriter = _DynamicRewriter(model, spec)
    for site in plan.weights:
        rewriter.rewrite(site.node, site.axis)
    return rewriter.stats
