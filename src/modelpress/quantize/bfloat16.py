"""bfloat16: weights stored bfloat16 and cast back at load; graph inputs, outputs and compute float32.

Why storage only: onnxruntime's CPU provider has no bfloat16 kernel for any arithmetic op
(probed with onnxruntime 1.32: MatMul, Gemm, Add, Mul, Relu, Softmax, LayerNormalization and
Conv all fail with NOT_IMPLEMENTED or a type error; only Cast and data movement such as
Transpose exist), so a model computing in bfloat16 could neither be checked nor run here.
What bfloat16 does give on CPU is half-size weights *without* float16's range problem:
bfloat16 keeps float32's 8-bit exponent, so every finite weight converts (float16 saturates
above 65504 and flushes below 6e-8) at the cost of precision (8 significant bits: a relative
rounding error of at most 2**-9).

Rewrite, per float32 initializer ``W`` of at least ``MIN_BYTES`` bytes read by a node of the
main graph (and not a graph input, which a user may override)::

    y = Op(x, W)    =>   W_bf16 = <bfloat16 initializer, round-to-nearest-even>
                         W_float = Cast(W_bf16, to=FLOAT)        (at the top of the graph)
                         y = Op(x, W_float)

One Cast per weight, shared by all its consumers; no Cast reads another Cast or is left
without a consumer. onnxruntime folds each Cast at session creation, so the model runs at
float32 speed with float32 memory. Smaller constants (scalars such as ``1/sqrt(d)``, shape
helpers) stay float32: converting them saves nothing and costs precision.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from modelpress.errors import PreconditionError
from modelpress.quantize.qdq import _Names
from modelpress.quantize.report import QuantizeReport
from modelpress.quantize.spec import QuantSpec

__all__ = ["MIN_BYTES", "bfloat16_round", "convert_bfloat16"]

MIN_BYTES = 1024  # smaller float32 constants stay float32


def convert_bfloat16(model: ir.Model, spec: QuantSpec) -> QuantizeReport:
    """Store ``model``'s float32 weights as bfloat16 behind Casts, in place (module docstring).

    Raises:
        PreconditionError: no float32 initializer of at least ``MIN_BYTES`` bytes is used.
    """
    graph = model.graph
    names = _Names(graph)
    first = next(iter(graph), None)
    report = QuantizeReport("bf16", spec.to_json(), {}, {}, {}, {}, {}, 0, 0)
    converted = 0
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or value.dtype != ir.DataType.FLOAT or value.is_graph_input() or not value.uses():
            continue
        if tensor.nbytes < MIN_BYTES:
            report.skipped[name] = f"{tensor.nbytes} bytes: too small to be worth converting"
            continue
        stored_name = names(f"{name}_bf16")
        stored = ir.Value(
            name=stored_name,
            const_value=ir.tensor(tensor.numpy().astype(ml_dtypes.bfloat16), name=stored_name),
            type=ir.TensorType(ir.DataType.BFLOAT16),
            shape=value.shape,
        )
        graph.register_initializer(stored)
        cast = ir.node("Cast", [stored], attributes={"to": ir.DataType.FLOAT}, name=names(f"{name}_Cast"))
        cast.outputs[0].name = names(f"{name}_float")
        cast.outputs[0].type, cast.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), value.shape
        if first is None:
            graph.append(cast)
        else:
            graph.insert_before(first, cast)
        for use in list(value.uses()):
            use.node.replace_input_with(use.idx, cast.outputs[0])
            entry = report.op_counts.setdefault(use.node.op_type, {"quantized": 0, "float": 0})
            entry["quantized"] += 1
        if not value.is_graph_output():
            graph.initializers.pop(name)
        converted += 1
    if not converted:
        raise PreconditionError(
            f"nothing to convert to bfloat16: no float32 initializer of at least {MIN_BYTES} bytes is "
            "read by a node (already converted, or a model without float32 weights)"
        )
    report.inserted = {"bfloat16_weights": converted, "casts": converted}
    report.notes.append(
        "onnxruntime's CPU provider has no bfloat16 arithmetic kernels: the weights are stored "
        "bfloat16 (half size, float32's range) and cast to float32 when the session loads; compute "
        "stays float32"
    )
    return report


def bfloat16_round(array: np.ndarray) -> np.ndarray:
    """``array`` rounded to bfloat16 (nearest, ties to even) and back: what the model computes with."""
    return np.asarray(array, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
