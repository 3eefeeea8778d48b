"""Dynamic int8: weights quantized offline, activations quantized at run time.

Rewrite of ``y = MatMul(x, W)`` (``W`` a constant ``[K, N]`` float weight; ``Gemm`` with
``transB`` uses ``W.T``, and its bias is added after)::

    x_u8, x_scale, x_zero_point = DynamicQuantizeLinear(x)        (one per x, shared)
    y_i32 = MatMulInteger(x_u8, W_i8, x_zero_point, W_zero_point)  (W_zero_point: a scalar 0)
    y_scale = Mul(x_scale, W_scale)                               ([N] per column, or a scalar)
    y = Mul(Cast(y_i32, to=FLOAT), y_scale)                       (Gemm: then Add(y, B))

This is what ``onnxruntime.quantization.quantize_dynamic`` emits, and what onnxruntime fuses at
``ORT_ENABLE_ALL`` into ``MatMulIntegerToFloat`` and, where the DynamicQuantizeLinear feeds one
MatMul only, ``DynamicQuantizeMatMul`` (bias Add included). Math:
``DynamicQuantizeLinear`` picks ``x_scale = (max(x, 0) - min(x, 0)) / 255`` and
``x_zero_point = round(-min(x, 0) / x_scale)`` per call (uint8); ``W_i8`` is symmetric int8 per
output column (``qdq.quantize_weight``, zero point 0), so
``y ~ (x_u8 - x_zero_point) @ W_i8 * x_scale * W_scale`` exactly as the integer kernel computes it.
The weight zero point is written as one scalar 0, not a vector of N zeros: a vector sends
onnxruntime's kernel down its per-column zero-point path (same result, more work).

Packing (per-column weights): MatMuls that read the same ``x`` (a transformer's query, key and
value projections) become one MatMulInteger over the column-wise concatenation
``[W_1 | W_2 | ...]`` followed by ``Split`` on the last axis; when each of them feeds exactly one
``Add`` of a constant ``[N_i]`` bias, the biases are concatenated and added before the Split::

    y_1, y_2, y_3 = Add(MatMul(x, W_1), B_1), Add(MatMul(x, W_2), B_2), Add(MatMul(x, W_3), B_3)
    =>  y_1, y_2, y_3 = Split(Add(dynamic(x, [W_1|W_2|W_3]), [B_1|B_2|B_3]), [N_1, N_2, N_3], axis=-1)

The result is the same number for number: ``x`` is quantized once either way, and every column
keeps its own weight scale. onnxruntime then runs one DynamicQuantizeMatMul (bias included)
instead of three MatMulIntegerToFloat: on MiniLM at batch 1 that is ~6 % less time.

Gather tables (``y = Gather(E, ids)``, ``E`` a constant ``[V, H]`` float table, axis 0), unless
``spec.quantize_embeddings`` is off::

    y = Mul(Cast(Gather(E_i8, ids), to=FLOAT), Gather(E_scale, ids))   (E_scale: [V, 1])

``E_i8`` is symmetric int8 per row (``E_scale[v] = max|E[v]| / 127``): only the looked-up rows
are dequantized. A DequantizeLinear of the whole table before the Gather would run on every
inference (onnxruntime does not fold it), and a per-tensor scale loses the small rows. A table
that another op also reads (tied input/output embeddings) stays float32: it would be stored
twice (``plan.py`` records the reason).
"""

from __future__ import annotations

import collections
import dataclasses
import typing

import numpy as np
import onnx_ir as ir

from modelpress.ir.build import add_initializer
from modelpress.quantize.plan import QuantPlan, WeightSite
from modelpress.quantize.qdq import QdqStats, _Names, quantize_weight
from modelpress.quantize.spec import QuantSpec

__all__ = ["DynamicStats", "apply_dynamic"]

_FLOAT, _UINT8, _INT32, _INT8 = ir.DataType.FLOAT, ir.DataType.UINT8, ir.DataType.INT32, ir.DataType.INT8
_EMBEDDING_QMAX = 127  # tables never reach an integer kernel: reduce_range does not apply


@dataclasses.dataclass
class DynamicStats(QdqStats):
    """What ``apply_dynamic`` inserted (``activations``: DynamicQuantizeLinear nodes)."""

    packed_groups: int = 0
    gather_tables: int = 0


class _DynamicRewriter:
    def __init__(self, model: ir.Model, spec: QuantSpec) -> None:
        self.graph = model.graph
        self.spec = spec
        self.names = _Names(self.graph)
        self.quantized_inputs: dict[int, tuple[ir.Value, ir.Value, ir.Value]] = {}
        self.tables: dict[int, tuple[ir.Value, ir.Value]] = {}
        self.stats = DynamicStats()
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
        self.split_sizes_as_input = opset >= 13  # Split-13 takes the sizes as an input

    def const(self, base: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, self.names(base), array)

    def op(
        self,
        op_type: str,
        inputs: list[ir.Value],
        base: str,
        dtypes: list[ir.DataType],
        **attrs: int | list[int],
    ) -> ir.Node:
        node = ir.node(
            op_type, inputs, attributes=attrs, num_outputs=len(dtypes), name=self.names(f"{base}_{op_type}")
        )
        if len(dtypes) == 1:
            suffixes: list[str] = [""]
        elif op_type == "DynamicQuantizeLinear":
            suffixes = ["", "_scale", "_zero_point"]
        else:  # Split: the caller's values take these outputs' place (and names)
            suffixes = [f"_{i}" for i in range(len(dtypes))]
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

    def integer_product(
        self, x: ir.Value, w_i8: np.ndarray, w_scale: np.ndarray, weight_name: str, base: str
    ) -> list[ir.Node]:
        """DynamicQuantizeLinear(x) -> MatMulInteger -> Cast -> Mul: the nodes after the shared DQL."""
        x_u8, x_scale, x_zero_point = self.quantize_input(x)
        integer = self.op(
            "MatMulInteger",
            [
                x_u8,
                self.const(f"{weight_name}_i8", w_i8),
                x_zero_point,
                self.const(f"{weight_name}_zero_point", np.zeros((), np.int8)),
            ],
            f"{base}_i32",
            [_INT32],
        )
        scale = self.op(
            "Mul", [x_scale, self.const(f"{weight_name}_scale", w_scale)], f"{base}_scale", [_FLOAT]
        )
        cast = self.op("Cast", [integer.outputs[0]], f"{base}_int_float", [_FLOAT], to=_FLOAT.value)
        product = self.op("Mul", [cast.outputs[0], scale.outputs[0]], f"{base}_dynamic", [_FLOAT])
        return [integer, scale, cast, product]

    def rewrite(self, node: ir.Node, axis: int | None) -> None:
        x, weight, bias = node.inputs[0], node.inputs[1], (node.inputs[2] if len(node.inputs) > 2 else None)
        assert x is not None and weight is not None and weight.const_value is not None
        w = weight.const_value.numpy().astype(np.float32)
        if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) != 0:
            w = np.ascontiguousarray(w.T)
        w_i8, w_scale = quantize_weight(w, 1 if axis is not None else None, self.spec.weight_qmax)
        out = node.outputs[0]
        new_nodes = self.integer_product(x, w_i8, w_scale, weight.name or "w", out.name or "y")
        if node.op_type == "Gemm" and bias is not None:
            new_nodes.append(self.op("Add", [new_nodes[-1].outputs[0], bias], f"{out.name}_biased", [_FLOAT]))
        final = new_nodes[-1].outputs[0]
        final.shape = out.shape
        ir.convenience.replace_nodes_and_values(self.graph, node, [node], new_nodes, [out], [final])
        self._drop_if_unused(weight)
        self.stats.weights += 1

    def rewrite_packed(self, nodes: list[ir.Node]) -> None:
        """One MatMulInteger for MatMuls sharing their input, then Split (module docstring)."""
        x = nodes[0].inputs[0]
        weights = typing.cast(list[ir.Value], [n.inputs[1] for n in nodes])  # asserted below
        assert x is not None and all(w is not None and w.const_value is not None for w in weights)
        quantized = [quantize_weight(w.const_value.numpy(), 1, self.spec.weight_qmax) for w in weights]  # type: ignore[union-attr]
        widths = [q.shape[1] for q, _ in quantized]
        base = f"{nodes[0].outputs[0].name}_packed"
        new_nodes = self.integer_product(
            x,
            np.concatenate([q for q, _ in quantized], axis=1),
            np.concatenate([s for _, s in quantized]),
            f"{weights[0].name}_packed",
            base,
        )
        found = [_bias_add(n.outputs[0], width) for n, width in zip(nodes, widths, strict=True)]
        adds = [a for a in found if a is not None] if all(found) else []
        biases = [bias for _, bias in adds]
        if adds:
            packed_bias = np.concatenate([b.const_value.numpy().astype(np.float32) for b in biases])  # type: ignore[union-attr]
            bias = self.const(f"{biases[0].name}_packed", packed_bias)
            new_nodes.append(self.op("Add", [new_nodes[-1].outputs[0], bias], f"{base}_biased", [_FLOAT]))
        old_nodes = [*nodes, *(add for add, _ in adds)]
        old_values = [add.outputs[0] for add, _ in adds] if adds else [n.outputs[0] for n in nodes]
        sizes = np.asarray(widths, np.int64)
        split_inputs = [new_nodes[-1].outputs[0]]
        attrs: dict[str, int | list[int]] = {"axis": -1}
        if self.split_sizes_as_input:
            split_inputs.append(self.const(f"{base}_split", sizes))
        else:
            attrs["split"] = sizes.tolist()
        split = self.op("Split", split_inputs, f"{base}_part", [_FLOAT] * len(nodes), **attrs)
        new_nodes.append(split)
        ir.convenience.replace_nodes_and_values(
            self.graph, nodes[0], old_nodes, new_nodes, old_values, list(split.outputs)
        )
        for value in [*weights, *biases]:
            self._drop_if_unused(value)
        self.stats.weights += len(nodes)
        self.stats.packed_groups += 1

    def rewrite_gather(self, node: ir.Node) -> None:
        """Gather rows of an int8 table and of its per-row scales, then multiply (module docstring)."""
        table, indices = node.inputs[0], node.inputs[1]
        assert table is not None and table.const_value is not None and indices is not None
        if id(table) not in self.tables:
            e_i8, e_scale = quantize_weight(table.const_value.numpy(), 0, _EMBEDDING_QMAX)
            self.tables[id(table)] = (
                self.const(f"{table.name}_i8", e_i8),
                self.const(f"{table.name}_scale", e_scale.reshape(-1, 1)),
            )
            self.stats.gather_tables += 1
        table_i8, table_scale = self.tables[id(table)]
        out = node.outputs[0]
        base = out.name or "rows"
        rows = self.op("Gather", [table_i8, indices], f"{base}_i8", [_INT8], axis=0)
        scales = self.op("Gather", [table_scale, indices], f"{base}_row_scale", [_FLOAT], axis=0)
        cast = self.op("Cast", [rows.outputs[0]], f"{base}_int_float", [_FLOAT], to=_FLOAT.value)
        product = self.op("Mul", [cast.outputs[0], scales.outputs[0]], f"{base}_dequantized", [_FLOAT])
        new_nodes = [rows, scales, cast, product]
        ir.convenience.replace_nodes_and_values(
            self.graph, node, [node], new_nodes, [out], [product.outputs[0]]
        )
        self._drop_if_unused(table)

    def _drop_if_unused(self, value: ir.Value) -> None:
        if not value.uses() and not value.is_graph_output() and value.name in self.graph.initializers:
            self.graph.initializers.pop(value.name)  # type: ignore[arg-type]


def _bias_add(out: ir.Value, width: int) -> tuple[ir.Node, ir.Value] | None:
    """The ``Add(out, B)`` that is ``out``'s only use, ``B`` a constant float ``[width]`` (else None)."""
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None
    add, index = uses[0].node, uses[0].idx
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    bias = add.inputs[1 - index]
    if (
        bias is None
        or bias.const_value is None
        or bias.is_graph_input()
        or bias.dtype != _FLOAT
        or tuple(bias.shape or ()) != (width,)
    ):
        return None
    return add, bias


def _packable_groups(sites: list[WeightSite]) -> tuple[list[list[ir.Node]], list[WeightSite]]:
    """MatMuls with per-column weights grouped by their shared input; the other sites alone."""
    by_input: dict[int, list[WeightSite]] = collections.defaultdict(list)
    for site in sites:
        if site.node.op_type == "MatMul" and site.axis is not None:
            by_input[id(site.node.inputs[0])].append(site)
    groups = [[s.node for s in group] for group in by_input.values() if len(group) > 1]
    grouped = {id(node) for group in groups for node in group}
    return groups, [s for s in sites if id(s.node) not in grouped]


def apply_dynamic(model: ir.Model, plan: QuantPlan, spec: QuantSpec) -> DynamicStats:
    """Rewrite every planned MatMul/Gemm and Gather table of ``model`` in place (module docstring).

    ``stats.activations`` counts the DynamicQuantizeLinear nodes, ``stats.weights`` the
    MatMul/Gemm nodes given int8 weights, ``stats.packed_groups`` the packed MatMul groups and
    ``stats.gather_tables`` the int8 embedding tables.
    """
    rewriter = _DynamicRewriter(model, spec)
    gathers = [s for s in plan.weights if s.node.op_type == "Gather"]
    groups, singles = _packable_groups([s for s in plan.weights if s.node.op_type != "Gather"])
    for group in groups:
        rewriter.rewrite_packed(group)
    for site in singles:
        rewriter.rewrite(site.node, site.axis)
    for site in gathers:
        rewriter.rewrite_gather(site.node)
    return rewriter.stats
