"""4-bit block-wise weight-only quantization: MatMul/Gemm weights and Gather (embedding) tables.

Rewrites (``W`` a constant float32 ``[K, N]`` weight, ``E`` a constant ``[V, H]`` table)::

    format "ort" (onnxruntime contrib ops, default):
        y = MatMul(x, W)    =>  y = com.microsoft.MatMulNBits(x, W_q4, W_scale[, W_zero_point])
                                    (K, N, bits=4, block_size)
        y = Gather(E, ids)  =>  y = com.microsoft.GatherBlockQuantized(E_q4, ids, E_scale[, E_zero_point])
                                    (gather_axis=0, quantize_axis=1, block_size)
    format "qdq" (standard ONNX, opset >= 21; DQ = DequantizeLinear with the block_size attribute):
        y = MatMul(x, W)    =>  y = MatMul(x, DQ(W_q4, W_scale[, W_zero_point], axis=0))
        y = Gather(E, ids)  =>  y = DQ(Gather(E_q, ids), Gather(E_scale, ids)[, Gather(E_zero_point, ids)],
                                      axis=-1)
        (E_q holds the 4-bit levels one per byte, int8/uint8: onnxruntime has no int4 Gather, and a
        DequantizeLinear of the whole table before the Gather would run on every inference, 27 ms
        instead of 4 ms for MiniLM's 30522 x 384 table; so the table is 1/4, not 1/8, of float32)

``Gemm(x, W, B)`` (alpha = beta = 1, transA = 0) becomes the MatMul rewrite of ``W`` (``W.T``
with transB) followed by ``Add(y, B)``.

Math and packing: ``blockwise.py`` (round-to-nearest, bit-exact with onnxruntime's own
quantizer); with calibration data and ``weight_algorithm="gptq"``, ``gptq.py`` picks the levels.

How onnxruntime runs them (1.32, CPU, ORT_ENABLE_ALL; measured): the "ort" format as written
(``accuracy_level`` unset: float activations, exactly the dequantized weights; ``accuracy_level=4``
quantizes activations to int8 per block, faster with VNNI). The "qdq" format is fused into
MatMulNBits by onnxruntime itself, with ``accuracy_level=4``; a MatMul whose activation comes
from a DequantizeLinear, or that onnxruntime first fuses with Add + Relu into FusedGemm, keeps a
DequantizeLinear of its weight that runs on every inference instead.

Refused, with the reason in the report (the node stays float): Conv (no 4-bit kernel; use
8 bits), weights that are not constant 2-D float32 initializers, a constant left operand,
Gemm with alpha/beta != 1 or transA, Gather on another axis than 0.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import time
import typing

import numpy as np
import onnx_ir as ir

from modelpress.errors import PreconditionError, UsageError
from modelpress.ir.build import add_initializer
from modelpress.quantize.blockwise import BlockQuantized, pack_int4, quantize_blocks, to_matmul_nbits
from modelpress.quantize.gptq import collect_hessians, gptq_quantize, inverse_factor
from modelpress.quantize.plan import node_label
from modelpress.quantize.qdq import _Names
from modelpress.quantize.report import QuantizeReport
from modelpress.quantize.spec import QuantSpec

__all__ = ["INT4_OP_TYPES", "quantize_int4"]

logger = logging.getLogger(__name__)

_FLOAT = ir.DataType.FLOAT
_MS_DOMAIN = "com.microsoft"
INT4_OP_TYPES = ("MatMul", "Gemm", "Gather")


@dataclasses.dataclass
class _Site:
    node: ir.Node
    weight: ir.Value
    transposed: bool  # Gemm transB: the constant holds W.T


class _Int4Rewriter:
    """Replaces planned MatMul/Gemm/Gather nodes; one quantized tensor per shared weight."""

    def __init__(self, model: ir.Model, spec: QuantSpec) -> None:
        self.graph = model.graph
        self.spec = spec
        self.names = _Names(self.graph)
        self.cache: dict[tuple[int, str], list[ir.Value]] = {}
        self.hessians: dict[str, np.ndarray] = {}  # MatMul input name -> X^T X / n (GPTQ)
        self.matmuls = 0
        self.gathers = 0

    def const(self, base: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
        name = self.names(base)
        if dtype in (ir.DataType.INT4, ir.DataType.UINT4):
            shape = array.shape
            tensor: ir.TensorProtocol = ir.PackedTensor(pack_int4(array), dtype, shape=shape, name=name)
        else:
            tensor = ir.tensor(array, name=name)
        return add_initializer(self.graph, name, tensor)

    def node(
        self,
        op_type: str,
        inputs: collections.abc.Sequence[ir.Value | None],
        base: str,
        domain: str = "",
        **attrs: int,
    ) -> ir.Node:
        node = ir.node(op_type, inputs, attributes=attrs, domain=domain, name=self.names(f"{base}_{op_type}"))
        node.outputs[0].name, node.outputs[0].type = self.names(base), ir.TensorType(_FLOAT)
        return node

    def quantized_weight(self, site: _Site) -> list[ir.Value]:
        """Initializers (and for qdq the DequantizeLinear output) of a MatMul weight, cached."""
        key = (id(site.weight), "gemm_t" if site.transposed else "matmul")
        if key in self.cache:
            return self.cache[key]
        weight = site.weight.const_value.numpy().astype(np.float32)  # type: ignore[union-attr]
        weight = np.ascontiguousarray(weight.T) if site.transposed else weight
        name, spec = site.weight.name or "w", self.spec
        style = "nbits" if spec.weight_format == "ort" else "qdq"
        x_name = _activation_name(site.node)
        if x_name in self.hessians:
            if not isinstance(self.hessians[x_name], tuple):  # factor once per shared input
                self.hessians[x_name] = inverse_factor(self.hessians[x_name])  # type: ignore[assignment]
            quantized = gptq_quantize(
                weight, self.hessians[x_name], spec.block_size, symmetric=spec.symmetric_weights, style=style
            )
        else:
            quantized = quantize_blocks(
                weight, 0, spec.block_size, symmetric=spec.symmetric_weights, style=style
            )
        if spec.weight_format == "ort":
            packed, scales, zero_points = to_matmul_nbits(quantized)
            values = [self.const(f"{name}_q4", packed), self.const(f"{name}_scale", scales)]
            if zero_points is not None:
                values.append(self.const(f"{name}_zero_point", zero_points))
        else:
            values = [self._dequantize(quantized, name)]
        self.cache[key] = values
        return values

    def int4_inputs(self, quantized: BlockQuantized, name: str) -> list[ir.Value]:
        """``[levels, scales(, zero points)]`` as int4 (signed levels) or uint4 initializers."""
        dtype = ir.DataType.INT4 if quantized.zero_points is None else ir.DataType.UINT4
        values = [
            self.const(f"{name}_q4", quantized.levels, dtype),
            self.const(f"{name}_scale", quantized.scales),
        ]
        if quantized.zero_points is not None:
            values.append(self.const(f"{name}_zero_point", quantized.zero_points, dtype))
        return values

    def _dequantize(self, quantized: BlockQuantized, name: str) -> ir.Value:
        """A blocked opset-21 DequantizeLinear of ``quantized``, at the top of the graph."""
        inputs = self.int4_inputs(quantized, name)
        dequant = self.node(
            "DequantizeLinear", inputs, f"{name}_dq", axis=quantized.axis, block_size=quantized.block_size
        )
        dequant.outputs[0].shape = ir.Shape(quantized.levels.shape)
        first = next(iter(self.graph), None)
        if first is None:
            self.graph.append(dequant)
        else:
            self.graph.insert_before(first, dequant)
        return dequant.outputs[0]

    def rewrite_matmul(self, site: _Site) -> None:
        node, x = site.node, site.node.inputs[0]
        assert x is not None
        weight_shape = site.weight.shape
        assert weight_shape is not None
        rows, columns = (weight_shape[1], weight_shape[0]) if site.transposed else tuple(weight_shape)
        weights = self.quantized_weight(site)
        out = node.outputs[0]
        base = out.name or "y"
        if self.spec.weight_format == "ort":
            assert isinstance(rows, int) and isinstance(columns, int)  # a constant's shape is static
            level = {"accuracy_level": self.spec.accuracy_level} if self.spec.accuracy_level else {}
            product = self.node(
                "MatMulNBits", [x, *weights], f"{base}_q4", domain=_MS_DOMAIN,
                K=int(rows), N=int(columns), bits=4, block_size=self.spec.block_size, **level,
            )  # fmt: skip
        else:
            product = self.node("MatMul", [x, weights[0]], f"{base}_q4")
        new_nodes = [product]
        bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
        if bias is not None:
            new_nodes.append(self.node("Add", [product.outputs[0], bias], f"{base}_biased"))
        final = new_nodes[-1].outputs[0]
        final.shape = out.shape
        ir.convenience.replace_nodes_and_values(self.graph, node, [node], new_nodes, [out], [final])
        self._drop_if_unused(site.weight)
        self.matmuls += 1

    def rewrite_gather(self, site: _Site) -> None:
        node, table = site.node, site.weight
        indices = node.inputs[1]
        assert indices is not None
        key = (id(table), "gather")
        name = table.name or "table"
        spec = self.spec
        if key not in self.cache:
            weights = table.const_value.numpy().astype(np.float32)  # type: ignore[union-attr]
            quantized = quantize_blocks(
                weights, 1, spec.block_size, symmetric=spec.symmetric_weights, style="numpy"
            )
            if spec.weight_format == "ort":
                self.cache[key] = self.int4_inputs(quantized, name)
            else:  # levels one per byte: onnxruntime has no int4 Gather (see the module docstring)
                self.cache[key] = [
                    self.const(f"{name}_q4", quantized.levels),
                    self.const(f"{name}_scale", quantized.scales),
                ]
                if quantized.zero_points is not None:
                    self.cache[key].append(self.const(f"{name}_zero_point", quantized.zero_points))
        values = self.cache[key]
        out = node.outputs[0]
        base = out.name or "embedding"
        if spec.weight_format == "ort":
            inputs = [values[0], indices, *values[1:]]
            new_nodes = [
                self.node(
                    "GatherBlockQuantized",
                    inputs,
                    f"{base}_q4",
                    domain=_MS_DOMAIN,
                    gather_axis=0,
                    quantize_axis=1,
                    block_size=spec.block_size,
                )
            ]
        else:  # gather the rows' levels, scales and zero points, then dequantize only those rows
            gathered = [
                self.node("Gather", [value, indices], f"{value.name}_rows", axis=0) for value in values
            ]
            for gather, value in zip(gathered, values, strict=True):
                gather.outputs[0].type = ir.TensorType(value.dtype)  # type: ignore[arg-type]
            dequant = self.node(
                "DequantizeLinear",
                [g.outputs[0] for g in gathered],
                f"{base}_q4",
                axis=-1,
                block_size=spec.block_size,
            )
            new_nodes = [*gathered, dequant]
        final = new_nodes[-1].outputs[0]
        final.shape = out.shape
        ir.convenience.replace_nodes_and_values(self.graph, node, [node], new_nodes, [out], [final])
        self._drop_if_unused(table)
        self.gathers += 1

    def _drop_if_unused(self, value: ir.Value) -> None:
        if not value.uses() and not value.is_graph_output() and value.name in self.graph.initializers:
            self.graph.initializers.pop(value.name)  # type: ignore[arg-type]


def quantize_int4(
    model: ir.Model,
    spec: QuantSpec,
    *,
    samples: collections.abc.Iterable[collections.abc.Mapping[str, np.ndarray]] | None = None,
    progress: collections.abc.Callable[[str, int, int | None], None] | None = None,
) -> QuantizeReport:
    """Quantize ``model``'s MatMul/Gemm weights and Gather tables to 4 bits, in place.

    Args:
        model: A model with inferred dtypes (its main graph is rewritten; subgraphs stay float).
        spec: ``bits=4`` weight-only spec (block size, symmetry, format, algorithm).
        samples: Calibration feeds, iterated once; used (and required) by ``gptq`` only.
        progress: Called as ``progress("calibrate", samples_in_batch, None)`` during GPTQ's pass.

    Returns:
        The report's core: op counts, skipped nodes and their reasons, what was inserted.

    Raises:
        PreconditionError: nothing in the model can be quantized to 4 bits.
        UsageError: ``gptq`` without samples.
        CalibrationError: bad calibration data (see ``gptq.collect_hessians``).
    """
    sites, skipped, labels = _plan(model, spec)
    if not sites:
        reasons = "; ".join(f"{node}: {why}" for node, why in list(skipped.items())[:5])
        raise PreconditionError(
            "nothing to quantize to 4 bits: no float32 MatMul/Gemm with a constant 2-D weight and no "
            "constant Gather table" + (f" ({reasons})" if reasons else "")
        )
    report = QuantizeReport("weight-only", spec.to_json(), {}, skipped, {}, {}, {}, 0, 0)
    rewriter = _Int4Rewriter(model, spec)
    if spec.weight_algorithm == "gptq":
        rewriter.hessians = _hessians(model, sites, samples, report, progress)
    for site in sites:
        if site.node.op_type == "Gather":
            rewriter.rewrite_gather(site)
        else:
            rewriter.rewrite_matmul(site)
        logger.debug("int4: %s '%s'", site.node.op_type, site.node.name)
    if spec.weight_format == "ort" and sites:
        model.opset_imports.setdefault(_MS_DOMAIN, 1)
    for node, label in labels.items():
        if label in skipped or any(site.node is node for site in sites):
            entry = report.op_counts.setdefault(node.op_type, {"quantized": 0, "float": 0})
            entry["float" if label in skipped else "quantized"] += 1
    report.inserted = {"int4_matmul_weights": rewriter.matmuls, "int4_gather_tables": rewriter.gathers}
    logger.info("int4: %d MatMul/Gemm weights, %d Gather tables", rewriter.matmuls, rewriter.gathers)
    return report


def _hessians(
    model: ir.Model,
    sites: list[_Site],
    samples: collections.abc.Iterable[collections.abc.Mapping[str, np.ndarray]] | None,
    report: QuantizeReport,
    progress: collections.abc.Callable[[str, int, int | None], None] | None,
) -> dict[str, np.ndarray]:
    """GPTQ's ``X^T X / n`` of every quantized MatMul/Gemm input, from one pass over ``samples``."""
    if samples is None:
        raise UsageError("--algorithm gptq needs calibration data: pass --calib DIR (.npy/.npz files)")
    names = list(dict.fromkeys(_activation_name(s.node) for s in sites if s.node.op_type != "Gather"))
    start = time.perf_counter()

    def counted(size: int) -> None:
        report.calibration_samples += size
        if progress is not None:
            progress("calibrate", size, None)

    hessians = collect_hessians(model, samples, names, on_batch=counted)
    report.calibration_seconds = time.perf_counter() - start
    report.notes.append(
        f"gptq: 4-bit levels chosen to minimize each layer's output error on {report.calibration_samples} "
        "calibration samples (not bit-identical to round-to-nearest)"
    )
    return hessians


def _plan(model: ir.Model, spec: QuantSpec) -> tuple[list[_Site], dict[str, str], dict[ir.Node, str]]:
    sites: list[_Site] = []
    skipped: dict[str, str] = {}
    labels: dict[ir.Node, str] = {}
    wanted = {op for op in INT4_OP_TYPES if op in spec.op_types or op == "Gather"}
    for index, node in enumerate(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in (*wanted, "Conv"):
            continue
        label = node_label(node, index)
        if node.op_type == "Gather":
            table = node.inputs[0]
            if table is None or table.dtype != _FLOAT or not _is_constant(table):
                continue  # shape arithmetic and activations: not a weight table at all
        labels[node] = label
        reason = "excluded by the spec" if node.name in spec.exclude_nodes else _refusal(node)
        if reason:
            skipped[label] = reason
            continue
        weight = node.inputs[0] if node.op_type == "Gather" else node.inputs[1]
        transposed = node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0))
        sites.append(_Site(node, weight, transposed))  # type: ignore[arg-type]
    return sites, skipped, labels


def _refusal(node: ir.Node) -> str | None:
    """Why ``node`` keeps its float weight under 4-bit weight-only (None when it can be quantized)."""
    if node.op_type == "Conv":
        return "4-bit weight-only covers MatMul/Gemm/Gather; Conv has no 4-bit kernel (use --bits 8)"
    if node.op_type == "Gather":
        table = node.inputs[0]
        if len(table.shape or ()) != 2:  # type: ignore[union-attr]
            return f"the table has rank {len(table.shape or ())}; 4-bit Gather takes 2-D tables"  # type: ignore[union-attr]
        if node.attributes.get_int("axis", 0) != 0:
            return "Gather on axis != 0 (only row lookups are quantized)"
        return None
    x, weight = node.inputs[0], node.inputs[1]
    if x is None or x.dtype != _FLOAT:
        return "the activation input is not float32 (only float32 models are quantized)"
    if _is_constant(x):
        return "the constant operand is on the left (not supported)"
    if not _is_constant(weight) or weight.dtype != _FLOAT:
        return "the weight (right operand) is not a constant float32 initializer"
    if len(weight.shape or ()) != 2:
        return f"the weight has rank {len(weight.shape or ())}; 4-bit weights must be 2-D"
    if x.shape is not None and len(x.shape) < 2:
        return "the activation is 1-D (MatMulNBits needs rank >= 2)"
    if node.op_type == "Gemm":
        alpha, beta = node.attributes.get_float("alpha", 1.0), node.attributes.get_float("beta", 1.0)
        if alpha != 1.0 or beta != 1.0 or node.attributes.get_int("transA", 0) != 0:
            return f"Gemm with alpha={alpha}, beta={beta}, transA (only 1.0, 1.0, 0 is supported)"
    if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
        return "a second output is used"
    return None


def _is_constant(value: ir.Value | None) -> typing.TypeGuard[ir.Value]:
    return value is not None and value.const_value is not None and not value.is_graph_input()


def _activation_name(node: ir.Node) -> str:
    """Name of a planned MatMul/Gemm's activation input (``_refusal`` made sure it is there)."""
    x = node.inputs[0]
    assert x is not None
    return x.name or ""
