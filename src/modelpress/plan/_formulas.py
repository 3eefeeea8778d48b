"""FLOP formulas per ONNX op type, from the inferred shapes of a node's inputs and outputs.

Conventions (stated once, used everywhere):

* A multiply-add counts as 2 FLOPs, so a dot product of length K costs 2K.
* Conv: ``2 * prod(Y) * prod(W.shape[1:])``: every output element is a dot product over
  ``C/group * prod(kernel)`` inputs. Strides, pads, dilations and groups need no terms of
  their own: they are already in Y's inferred shape and in W's shape ``[M, C/group, k...]``.
  A bias adds 1 FLOP per output element.
* ConvTranspose: ``2 * prod(X) * prod(W.shape[1:])``: every input element is scattered into
  ``M/group * prod(kernel)`` outputs (W is ``[C, M/group, k...]``); a bias adds 1 per output.
* MatMul (batched, broadcasting): ``2 * prod(Y) * K``, K the contracted length; broadcasting
  is in Y's shape. Attention built from MatMul + Softmax is costed by these parts.
* Gemm: ``2 * M * N * K``, plus 1 per output element when C is given (alpha/beta scaling is
  not counted).
* Element-wise ops: ``_ELEMENTWISE[op]`` FLOPs per output element (1 for arithmetic;
  a stated small constant for transcendental and normalizing ops).
* Pooling: 1 FLOP per window element per output (``prod(Y) * prod(kernel)``); global pooling
  and reductions: 1 FLOP per input element.
* Data-movement ops (Reshape, Transpose, Gather, Concat, Slice, Cast...): 0 FLOPs; their
  bytes are still counted by the caller.

A formula returns None when it needs a shape that inference did not produce; the caller then
lists the node as unknown.
"""

from __future__ import annotations

import collections.abc
import math

import onnx_ir as ir

__all__ = ["DATA_MOVEMENT", "ELEMENTWISE", "FORMULAS", "Shapes"]

# Shape of each input and output of a node, None where unknown (or an absent optional input).
Shapes = list[tuple[int, ...] | None]

# FLOPs per output element. 1 for plain arithmetic; the constants below are rough counts of
# the arithmetic a fused kernel does per element, not measurements:
# Erf ~ a rational approximation (8); Gelu = x * 0.5 * (1 + erf(x / sqrt 2)) (12);
# Softmax = max, subtract, exp, sum, divide (5); LayerNormalization / InstanceNormalization /
# GroupNormalization = mean, subtract, square, mean, rsqrt, scale, shift (8);
# BatchNormalization at inference = one scale and one shift (2); Sigmoid / Tanh ~ exp + a few (4).
ELEMENTWISE: dict[str, int] = {
    **dict.fromkeys(
        (
            "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log",
            "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Clip", "Max", "Min", "Mean", "Sum",
            "Where", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And",
            "Or", "Xor", "Floor", "Ceil", "Round", "Sign", "Mod", "IsNaN", "IsInf",
            "QuantizeLinear", "DequantizeLinear", "Resize", "Upsample",
        ),
        1,
    ),
    "HardSigmoid": 2, "HardSwish": 3, "Softplus": 3, "Sigmoid": 4, "Tanh": 4, "Erf": 8,
    "Gelu": 12, "FastGelu": 12, "Softmax": 5, "LogSoftmax": 6, "BatchNormalization": 2,
    "LayerNormalization": 8, "SimplifiedLayerNormalization": 6, "InstanceNormalization": 8,
    "GroupNormalization": 8,
}  # fmt: skip

# Ops that only move or reinterpret data: no FLOPs, bytes in and out.
DATA_MOVEMENT: frozenset[str] = frozenset(
    (
        "Reshape", "Transpose", "Gather", "GatherElements", "GatherND", "Squeeze", "Unsqueeze",
        "Flatten", "Identity", "Concat", "Split", "Slice", "Expand", "Tile", "Pad", "Cast",
        "CastLike", "Shape", "Size", "ConstantOfShape", "Range", "DepthToSpace", "SpaceToDepth",
        "ScatterND", "ScatterElements", "Dropout", "Trilu", "OneHot", "NonZero",
    )
)  # fmt: skip


def _elements(shape: tuple[int, ...] | None) -> int | None:
    return None if shape is None else math.prod(shape)


def _conv(node: ir.Node, inputs: Shapes, outputs: Shapes) -> int | None:
    y, w = outputs[0], inputs[1] if len(inputs) > 1 else None
    if y is None or w is None:
        return None
    bias = math.prod(y) if len(inputs) > 2 and inputs[2] is not None else 0
    return 2 * math.prod(y) * math.prod(w[1:]) + bias


def _conv_transpose(node: ir.Node, inputs: Shapes, outputs: Shapes) -> int | None:
    x, w, y = inputs[0], inputs[1] if len(inputs) > 1 else None, outputs[0]
    if x is None or w is None or y is None:
        return None
    bias = math.prod(y) if len(inputs) > 2 and inputs[2] is not None else 0
    return 2 * math.prod(x) * math.prod(w[1:]) + bias


def _matmul_on(a_index: int) -> collections.abc.Callable[[ir.Node, Shapes, Shapes], int | None]:
    """MatMul-like ops whose A operand is input ``a_index`` (QLinearMatMul interleaves scales)."""

    def formula(node: ir.Node, inputs: Shapes, outputs: Shapes) -> int | None:
        a, y = inputs[a_index], outputs[0]
        if a is None or y is None or len(a) == 0:
            return None
        return 2 * math.prod(y) * a[-1]

    return formula


def _qlinear_conv(node: ir.Node, inputs: Shapes, outputs: Shapes) -> int | None:
    # QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B?): W is input 3.
    y, w = outputs[0], inputs[3] if len(inputs) > 3 else None
    if y is None or w is None:
        return None
    return 2 * math.prod(y) * math.prod(w[1:])


def _gemm(node: ir.Node, inputs: Shapes, outputs: Shapes) -> int | None:
    a, y = inputs[0], outputs[0]
    if a is None or y is None or len(a) != 2:
        return None
    k = a[0] if node.attributes.get_int("transA", 0) else a[1]
    c = math.prod(y) if len(inputs) > 2 and inputs[2] is not None else 0
    return 2 * math.prod(y) * k + c


def _pool(node: ir.Node, inputs: Shapes, outputs: Shapes) -> int | None:
    y = outputs[0]
    kernel = node.attributes.get_ints("kernel_shape")
    if y is None or kernel is None:
        return None
    return math.prod(y) * math.prod(kernel)


def _per_input_element(node: ir.Node, inputs: Shapes, outputs: Shapes) -> int | None:
    return _elements(inputs[0])


def _elementwise(node: ir.Node, inputs: Shapes, outputs: Shapes) -> int | None:
    count = _elements(outputs[0])
    return None if count is None else count * ELEMENTWISE[node.op_type]


def _no_flops(node: ir.Node, inputs: Shapes, outputs: Shapes) -> int | None:
    return 0


_REDUCTIONS = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ArgMax", "ArgMin",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "CumSum", "TopK",
)  # fmt: skip

# op type -> formula(node, input shapes, output shapes) -> FLOPs, None if a shape is missing.
FORMULAS: dict[str, collections.abc.Callable[[ir.Node, Shapes, Shapes], int | None]] = {
    "Conv": _conv,
    "ConvInteger": _conv,
    "QLinearConv": _qlinear_conv,
    "ConvTranspose": _conv_transpose,
    "MatMul": _matmul_on(0),
    "MatMulInteger": _matmul_on(0),
    "QLinearMatMul": _matmul_on(0),
    "Gemm": _gemm,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    **dict.fromkeys(_REDUCTIONS, _per_input_element),
    **dict.fromkeys(ELEMENTWISE, _elementwise),
    **dict.fromkeys(DATA_MOVEMENT, _no_flops),
}
