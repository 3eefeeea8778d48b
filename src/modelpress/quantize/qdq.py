"""Insert QuantizeLinear/DequantizeLinear into a model following a ``QuantPlan``.

Rewrites (``x`` an activation, ``W`` a float weight, ``B`` a float bias)::

    y = Conv(x, W, B)    =>   x_u8 = QuantizeLinear(x, x_scale, x_zero_point)
                              x_dq = DequantizeLinear(x_u8, x_scale, x_zero_point)
                              W_dq = DequantizeLinear(W_i8, W_scale, W_zero_point, axis=0)
                              B_dq = DequantizeLinear(B_i32, B_scale, axis=0)
                              y    = Conv(x_dq, W_dq, B_dq)          (then y gets its own pair)

Math (``round`` is round-half-to-even, as QuantizeLinear):

* activation, asymmetric: with ``[lo, hi]`` the calibrated range widened to include 0,
  ``x_scale = (hi - lo) / (qmax - qmin)`` and ``x_zero_point = clip(round(qmin - lo / x_scale))``;
  uint8 ``[0, 255]``, int8 ``[-128, 127]``. A range ``[0, 0]`` gets scale 1.
* weight, symmetric per output channel ``c`` (``W_zero_point = 0``):
  ``W_scale[c] = max|W[c]| / 127`` (63 with reduce_range) and
  ``W_i8 = clip(round(W / W_scale), -127, 127)``; an all-zero channel gets scale 1.
* bias: ``B_scale[c] = x_scale * W_scale[c]`` and ``B_i32 = round(B / B_scale)`` (clipped to
  int32, which only a bias 2**31 steps away from zero needs: counted in the stats).

Why an int32 bias rather than a float one: onnxruntime fuses ``DQ -> Conv/Gemm -> Q`` into
QLinearConv / QGemm only when *every* input of the node comes from a DequantizeLinear and the
bias one is int32 (its Conv/Gemm node-group selectors); a float bias leaves the Conv in float.
QLinearConv adds the int32 bias into its int32 accumulator before requantizing, which is
exactly ``B_dq`` when ``B_scale = x_scale * W_scale``; the bias rounding error (half a step of
``x_scale * W_scale``) is far below the output's own quantization step.

Activations get one Q/DQ pair per tensor, shared by all its consumers (onnxruntime duplicates
the DQ per consumer itself when fusing). A quantized tensor that is a graph output keeps its
name on the DequantizeLinear output; the float tensor is renamed ``<name>_float``.
Weights shared by several nodes are quantized once.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from modelpress.ir.build import add_initializer
from modelpress.quantize.plan import QuantPlan
from modelpress.quantize.spec import QuantSpec

__all__ = ["QdqStats", "activation_qparams", "apply_plan", "quantize_bias", "quantize_weight"]

logger = logging.getLogger(__name__)

_QRANGE: dict[str, tuple[int, int, type[np.uint8] | type[np.int8]]] = {
    "uint8": (0, 255, np.uint8),
    "int8": (-128, 127, np.int8),
}
_INT32 = np.iinfo(np.int32)


@dataclasses.dataclass
class QdqStats:
    """What ``apply_plan`` inserted."""

    activations: int = 0
    weights: int = 0
    biases: int = 0
    clipped_bias_values: int = 0


def activation_qparams(low: float, high: float, dtype: str) -> tuple[np.float32, np.generic]:
    """``(x_scale, x_zero_point)`` of an asymmetric per-tensor range (module docstring)."""
    qmin, qmax, np_dtype = _QRANGE[dtype]
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = np.float32((high - low) / (qmax - qmin))
    if not scale > 0 or not np.isfinite(scale):
        return np.float32(1.0), np_dtype(0)
    zero_point = int(np.clip(np.round(qmin - low / float(scale)), qmin, qmax))
    return scale, np_dtype(zero_point)


def quantize_weight(weight: np.ndarray, axis: int | None, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 ``(W_i8, W_scale)``; ``W_scale`` has one entry per ``axis`` slice (0-d if None)."""
    weight = weight.astype(np.float32)
    if axis is None:
        absmax = np.asarray(np.abs(weight).max(initial=0.0), dtype=np.float32)
        broadcast = absmax
    else:
        other = tuple(i for i in range(weight.ndim) if i != axis)
        absmax = np.abs(weight).max(axis=other, initial=0.0).astype(np.float32)
        broadcast = np.expand_dims(absmax, other)
    scale = np.where(absmax > 0, absmax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
    broadcast_scale = np.where(broadcast > 0, broadcast / np.float32(qmax), np.float32(1.0))
    quantized = np.clip(np.round(weight / broadcast_scale), -qmax, qmax).astype(np.int8)
    return quantized, scale


def quantize_bias(
    bias: np.ndarray, x_scale: np.float32, w_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(B_i32, B_scale, number of values clipped to int32)`` with ``B_scale = x_scale * W_scale``."""
    scale = (np.float32(x_scale) * np.broadcast_to(w_scale, bias.shape)).astype(np.float32)
    exact = np.round(bias.astype(np.float64) / scale.astype(np.float64))
    clipped = int(np.count_nonzero((exact < _INT32.min) | (exact > _INT32.max)))
    return np.clip(exact, _INT32.min, _INT32.max).astype(np.int32), scale, clipped


class _Names:
    """Fresh value/node names derived from existing ones (``x`` -> ``x_scale``, ``x_scale_1``)."""

    def __init__(self, graph: ir.Graph) -> None:
        self.taken = set(graph.initializers) | {v.name for v in graph.inputs if v.name}
        for node in ir.traversal.RecursiveGraphIterator(graph):
            self.taken.update(out.name for out in node.outputs if out.name)
            if node.name:
                self.taken.add(node.name)

    def __call__(self, base: str) -> str:
        name, count = base, 0
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        return name


class _Rewriter:
    def __init__(self, model: ir.Model, spec: QuantSpec) -> None:
        self.graph = model.graph
        self.spec = spec
        self.names = _Names(self.graph)
        self.first = next(iter(self.graph), None)
        self.stats = QdqStats()
        self.weight_cache: dict[tuple[int, int | None], tuple[ir.Value, np.ndarray]] = {}

    def const(self, base: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, self.names(base), array)

    def node(
        self,
        op_type: str,
        inputs: list[ir.Value],
        out_name: str,
        like: ir.Value,
        dtype: ir.DataType,
        **attrs: int,
    ) -> ir.Node:
        node = ir.node(op_type, inputs, attributes=attrs, name=self.names(f"{like.name}_{op_type}"))
        out = node.outputs[0]
        out.name, out.type = self.names(out_name), ir.TensorType(dtype)
        out.shape = ir.Shape(like.shape) if like.shape is not None else None
        return node

    def add_activation_pair(self, value: ir.Value, scale: ir.Value, zero_point: ir.Value) -> None:
        suffix = "u8" if self.spec.activation_dtype == "uint8" else "i8"
        q_dtype = ir.DataType.UINT8 if suffix == "u8" else ir.DataType.INT8
        quant = self.node(
            "QuantizeLinear", [value, scale, zero_point], f"{value.name}_{suffix}", value, q_dtype
        )
        dequant = self.node(
            "DequantizeLinear",
            [quant.outputs[0], scale, zero_point],
            f"{value.name}_dq",
            value,
            ir.DataType.FLOAT,
        )
        for use in list(value.uses()):
            if use.node is not quant:
                use.node.replace_input_with(use.idx, dequant.outputs[0])
        producer = value.producer()
        if producer is not None:
            self.graph.insert_after(producer, [quant, dequant])
        elif self.first is not None:
            self.graph.insert_before(self.first, [quant, dequant])
        if value.is_graph_output():
            outputs = self.graph.outputs
            original = value.name
            value.name = self.names(f"{original}_float")
            dequant.outputs[0].name = original
            for i, out in enumerate(outputs):
                if out is value:
                    outputs[i] = dequant.outputs[0]
        self.stats.activations += 1

    def add_weight(self, node: ir.Node, index: int, axis: int | None) -> np.ndarray:
        weight = node.inputs[index]
        assert weight is not None and weight.const_value is not None
        key = (id(weight), axis)
        if key not in self.weight_cache:
            w_i8, w_scale = quantize_weight(weight.const_value.numpy(), axis, self.spec.weight_qmax)
            inputs = [
                self.const(f"{weight.name}_i8", w_i8),
                self.const(f"{weight.name}_scale", w_scale),
                self.const(f"{weight.name}_zero_point", np.zeros(w_scale.shape, np.int8)),
            ]
            attrs = {} if axis is None else {"axis": axis}
            dequant = self.node(
                "DequantizeLinear", inputs, f"{weight.name}_dq", weight, ir.DataType.FLOAT, **attrs
            )
            self._prepend(dequant)
            self.weight_cache[key] = (dequant.outputs[0], w_scale)
            self.stats.weights += 1
        dequantized, w_scale = self.weight_cache[key]
        node.replace_input_with(index, dequantized)
        self._drop_if_unused(weight)
        return w_scale

    def add_bias(self, node: ir.Node, x_scale: np.float32, w_scale: np.ndarray) -> None:
        bias = node.inputs[2]
        assert bias is not None and bias.const_value is not None
        b_i32, b_scale, clipped = quantize_bias(bias.const_value.numpy(), x_scale, w_scale)
        if clipped:
            logger.warning("bias '%s': %d values clipped to the int32 range", bias.name, clipped)
        inputs = [self.const(f"{bias.name}_i32", b_i32), self.const(f"{bias.name}_scale", b_scale)]
        dequant = self.node("DequantizeLinear", inputs, f"{bias.name}_dq", bias, ir.DataType.FLOAT, axis=0)
        self._prepend(dequant)
        node.replace_input_with(2, dequant.outputs[0])
        self._drop_if_unused(bias)
        self.stats.biases += 1
        self.stats.clipped_bias_values += clipped

    def _prepend(self, node: ir.Node) -> None:
        if self.first is None:
            self.graph.append(node)
        else:
            self.graph.insert_before(self.first, node)

    def _drop_if_unused(self, value: ir.Value) -> None:
        if not value.uses() and not value.is_graph_output() and value.name in self.graph.initializers:
            self.graph.initializers.pop(value.name)  # type: ignore[arg-type]


def apply_plan(
    model: ir.Model, plan: QuantPlan, ranges: dict[str, tuple[float, float]], spec: QuantSpec
) -> QdqStats:
    """Rewrite ``model`` in place: Q/DQ pairs, int8 weights, int32 biases (module docstring).

    Args:
        model: The model the plan was built on (its nodes are the plan's nodes).
        plan: What to quantize.
        ranges: Calibrated ``(min, max)`` of each of ``plan.calibration_targets``.
        spec: The scheme (dtypes, reduce_range).

    Raises:
        KeyError: a calibration target has no range (an internal error of the caller).
    """
    rewriter = _Rewriter(model, spec)
    x_scales: dict[str, np.float32] = {}
    params: dict[str, tuple[ir.Value, ir.Value]] = {}
    for source in plan.calibration_targets:
        scale, zero_point = activation_qparams(*ranges[source], spec.activation_dtype)
        x_scales[source] = scale
        params[source] = (
            rewriter.const(f"{source}_scale", np.asarray(scale, np.float32)),
            rewriter.const(f"{source}_zero_point", np.asarray(zero_point)),
        )
    w_scales = {}
    for site in plan.weights:
        w_scales[id(site.node)] = rewriter.add_weight(site.node, site.input_index, site.axis)
    for bias_site in plan.biases:
        if bias_site.activation not in plan.activations:  # a constant data input: bias stays float
            continue
        source = plan.activations[bias_site.activation].source
        rewriter.add_bias(bias_site.node, x_scales[source], w_scales[id(bias_site.node)])
    for activation in plan.activations.values():
        rewriter.add_activation_pair(activation.value, *params[activation.source])
    return rewriter.stats
