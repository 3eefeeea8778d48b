"""Fold a constant per-channel Mul / Add / Sub / Div into the linear op that produces its input.

Before → after::

    c = Conv(x, W, B)
    m = Mul(c, s)        (s: scalar, [C,1,1] or [1,C,1,1])        y = Conv(x, W', B')
    y = Add(m, t)        (t: likewise)                       =>

One rule per (producer, element-wise op); the pass applies them until none matches, so a Mul
then an Add both fold. The producer may be Conv, ConvTranspose, Gemm or BatchNormalization
(a BN that cannot fold into a producer then absorbs the Mul/Add chain behind it). Math, with
``s`` and ``t`` as length-C vectors along the output-channel axis (axis 1; for Gemm's [M, N]
output that is N, the last axis):

* ``Conv(x, W, B) * s = Conv(x, W * s[:, None, ...], B * s)``, ``Conv(x, W, B) + t = Conv(x, W, B + t)``;
* ConvTranspose: W is [C_in, C_out/group, k...]; output channel ``g * C_out/group + j`` reads
  ``W[g-th block of C_in, j]``, so ``s`` scales W viewed as [group, C_in/group, C_out/group, k...];
* ``Gemm(A, B, C; alpha, beta) * s = Gemm(A, B * s (along N), beta * C * s; alpha, beta=1)``;
* ``BN(x; g, b, mean, var) * s = BN(x; g * s, b * s, mean, var)``, ``BN(...) + t = BN(x; g, b + t, ...)``;
* ``Sub(c, t) = Add(c, -t)`` and ``Div(c, s) = Mul(c, 1 / s)``.

New tensors are computed in float64 and rounded once to the weights' dtype; their names derive
from the old ones (``W`` → ``W_affine``) and never collide.

Preconditions (per match): the constant broadcasts along the channel axis only, i.e. its rank
is at most the output's and, right-aligned, every dimension but axis 1 is 1 and axis 1 is 1 or C
(so the output shape cannot change); weights and bias (BN scale and bias) are constant
initializers, and the weight tensor has no other user (a shared bias or BN vector is fine: the
fold copies it, cheaply); the producer's output has no other consumer (the rule engine refuses
a match whose inner values escape it); dtypes agree and are floating point.
Refused: a constant varying over batch or spatial axes, of higher rank than the output, or
non-finite (and zero for Div), where ``x * inf`` and ``W * inf`` disagree; a training-mode BN;
legacy (opset < 7) element-wise ops with ``broadcast``/``axis`` attributes, which do not follow
numpy broadcasting; ``Sub(t, c)`` and ``Div(s, c)``, which are not affine in c.
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter import _basics as basics

from modelpress.passes._rewriting import unique_names
from modelpress.passes.base import RulesPass
from modelpress.passes.fuse_batchnorm import has_channel_statistics, is_inference_batchnorm
from modelpress.passes.rules import (
    PatternOp,
    PatternValue,
    PatternVar,
    RewriteOp,
    checked_const,
    const_array,
    int_attr,
    producer_of,
)

__all__ = ["FuseConvAffinePass", "channel_vector"]

_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "BatchNormalization")
_FLOAT_TYPES = (np.float16, np.float32, np.float64)


def channel_vector(constant: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``constant`` as a float64 length-``channels`` vector, if it varies along axis 1 only.

    Args:
        constant: The Mul/Add operand.
        rank: The rank of the producer's output (the other operand).
        channels: The size of that output's axis 1.

    Returns:
        The vector, or None when broadcasting ``constant`` would vary over another axis, or
        change the output's shape or rank.
    """
    if rank < 2 or constant.ndim > rank:
        return None
    aligned = (1,) * (rank - constant.ndim) + constant.shape
    if any(dim != 1 for axis, dim in enumerate(aligned) if axis != 1) or aligned[1] not in (1, channels):
        return None
    return np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,))


def _weight_inputs(node: ir.Node) -> list[ir.Value]:
    """The inputs a fold rewrites: W and B, Gemm's B and C, or BN's scale and bias."""
    return [v for v in node.inputs[1:3] if v is not None]


def _rank_and_channels(node: ir.Node) -> tuple[int, int] | None:
    """(output rank, output channels) of the producer, from its constant weights."""
    weight = const_array(node.inputs[1])
    if weight is None:
        return None
    if node.op_type == "Conv":
        return weight.ndim, weight.shape[0]
    if node.op_type == "ConvTranspose":
        return weight.ndim, weight.shape[1] * int_attr(node, "group", 1)
    if node.op_type == "Gemm":
        return 2, weight.shape[0] if int_attr(node, "transB", 0) else weight.shape[-1]
    x = node.inputs[0]
    rank = None if x is None or x.shape is None else len(x.shape)
    return None if rank is None else (rank, weight.shape[0])


def _producer_fails(node: ir.Node) -> str | None:
    """Why ``node``'s weights cannot absorb an affine op, or None if they can."""
    for value in _weight_inputs(node):
        if const_array(value) is None:
            return f"'{value.name}' of {node.op_type} '{node.name}' is not a constant initializer"
    # The fold writes new tensors and never mutates shared ones, so sharing is only a size
    # question: a private copy of a per-channel vector is cheap, of a weight tensor is not.
    weight = node.inputs[1]
    weight_array = const_array(weight)
    if weight is None or weight_array is None:  # W, B (Gemm) and scale (BN) are required inputs
        return f"{node.op_type} '{node.name}' has no weight input"
    if node.op_type != "BatchNormalization" and len(weight.uses()) != 1:
        return f"weight '{weight.name}' is shared with another node (folding would duplicate it)"
    if weight_array.dtype.type not in _FLOAT_TYPES:
        return "weights are not floating point"
    if node.op_type == "BatchNormalization":
        if not is_inference_batchnorm(node) or not has_channel_statistics(node):
            return "BatchNormalization is in training mode or lacks per-channel statistics"
    if node.op_type == "ConvTranspose":
        if weight_array.ndim < 3 or weight_array.shape[0] % int_attr(node, "group", 1):
            return "ConvTranspose in_channels not divisible by group"
    if node.op_type == "Gemm" and weight_array.ndim != 2:
        return "Gemm weight is not 2-D"
    return None


class _FoldAffine(RewriteRuleClassBase):
    """``<elementwise>(<producer>(x, ...), constant)`` → ``<producer>(x, ...)`` with new weights."""

    def __init__(self, producer: str, elementwise: str) -> None:
        super().__init__(name=f"Fold{elementwise}Into{producer}")
        self.producer = producer
        self.elementwise = elementwise

    def pattern(self, op: PatternOp, x: PatternVar, constant: PatternVar) -> PatternValue:
        inner = getattr(op, self.producer)(
            x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["inner"]
        )
        # No other attributes: opset < 7 Mul/Add carry broadcast/axis, with other semantics.
        return getattr(op, self.elementwise)(inner, constant, _allow_other_attributes=False, _outputs=["y"])

    def check(
        self, context: basics.MatchContext, x: ir.Value, constant: ir.Value, inner: ir.Value, y: ir.Value
    ) -> basics.MatchResult:
        result = basics.MatchResult()
        node = producer_of(inner)
        reason = _producer_fails(node)
        if reason:
            return result.fail(reason, node)
        value = const_array(constant)
        if value is None:
            return result.fail(f"{self.elementwise} operand is not a constant")
        if value.dtype != checked_const(node.inputs[1]).dtype:  # _producer_fails: constant
            return result.fail(f"{self.elementwise} operand dtype {value.dtype} differs from the weights'")
        if not np.isfinite(value).all() or (self.elementwise == "Div" and not value.all()):
            return result.fail(f"{self.elementwise} operand has non-finite values (or zeros for Div)")
        shape = _rank_and_channels(node)
        if shape is None:
            return result.fail(f"rank of the {node.op_type} input is unknown", node)
        if channel_vector(value, *shape) is None:
            return result.fail(f"{self.elementwise} operand {value.shape} is not per-channel", producer_of(y))
        return result

    def rewrite(
        self, op: RewriteOp, x: ir.Value, constant: ir.Value, inner: ir.Value, y: ir.Value
    ) -> ir.Value:
        node = producer_of(inner)
        shape = _rank_and_channels(node)
        assert shape is not None  # check() required it
        vector = channel_vector(checked_const(constant), *shape)
        assert vector is not None  # check() required a per-channel constant
        if self.elementwise in ("Mul", "Div"):
            scale = 1.0 / vector if self.elementwise == "Div" else vector
            new_inputs, attributes = _scaled(node, scale)
        else:
            shift = -vector if self.elementwise == "Sub" else vector
            new_inputs, attributes = _shifted(node, shift)
        dtype = checked_const(node.inputs[1]).dtype
        inputs = list(node.inputs) + [None] * (3 - len(node.inputs))
        missing_bias = f"{_stem(inputs[1])}_bias"
        stems = [missing_bias if inputs[i] is None else _stem(inputs[i]) for i in new_inputs]
        # One call for all names: two new tensors (e.g. a BN scale and bias that CSE merged
        # into one value) must not receive the same fresh name.
        names = unique_names(node.graph, [f"{stem}_affine" for stem in stems])
        for (index, array), name in zip(new_inputs.items(), names, strict=True):
            inputs[index] = op.initializer(ir.tensor(array.astype(dtype)), name=name)
        while inputs and inputs[-1] is None:
            inputs.pop()
        return getattr(op, self.producer)(*inputs, **attributes)


def _stem(value: ir.Value | None) -> str:
    """The name a derived initializer starts from, without an earlier fold's ``_affine``."""
    name = value.name if value is not None else None
    return (name or "weight").removesuffix("_affine")


def _scaled(node: ir.Node, scale: np.ndarray) -> tuple[dict[int, np.ndarray], dict[str, ir.Attr]]:
    """Inputs (by index) and attributes of ``node`` multiplied by ``scale`` per channel."""
    attributes = dict(node.attributes)
    weight = checked_const(node.inputs[1]).astype(np.float64)
    bias = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
    bias = None if bias is None else bias.astype(np.float64)
    if node.op_type == "BatchNormalization":
        assert bias is not None  # has_channel_statistics: BN's bias is constant
        return {1: weight * scale, 2: bias * scale}, attributes
    if node.op_type == "Conv":
        weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    elif node.op_type == "ConvTranspose":
        group = int_attr(node, "group", 1)
        blocks = weight.reshape(group, weight.shape[0] // group, *weight.shape[1:])
        per_group = scale.reshape(group, 1, -1, *(1,) * (weight.ndim - 2))
        weight = (blocks * per_group).reshape(weight.shape)
    else:  # Gemm: scale the N axis of B, fold beta into C.
        weight = weight * (scale[:, None] if int_attr(node, "transB", 0) else scale[None, :])
        beta = attributes.pop("beta", None)
        bias = None if bias is None else bias * (1.0 if beta is None else beta.as_float())
    return ({1: weight} if bias is None else {1: weight, 2: bias * scale}), attributes


def _shifted(node: ir.Node, shift: np.ndarray) -> tuple[dict[int, np.ndarray], dict[str, ir.Attr]]:
    """The bias input (by index) and attributes of ``node`` with ``shift`` added per channel."""
    attributes = dict(node.attributes)
    # Gemm scales C by beta: apply it to the old C now and drop it, so the new C is not scaled.
    beta = attributes.pop("beta", None) if node.op_type == "Gemm" else None
    bias = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if bias is None:
        return {2: shift}, attributes
    return {2: bias.astype(np.float64) * (1.0 if beta is None else beta.as_float()) + shift}, attributes


class FuseConvAffinePass(RulesPass):
    """Fold constant per-channel Mul/Add/Sub/Div into Conv, ConvTranspose, Gemm or BatchNormalization."""

    name = "fuse-conv-affine"
    summary = "fold per-channel constant Mul/Add/Sub/Div into the Conv/ConvTranspose/Gemm/BN before it"

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """One rule per (producer, element-wise op); Mul and Add also with the constant first."""
        rules: list[RewriteRule] = []
        for producer in _PRODUCERS:
            for elementwise in ("Mul", "Add", "Sub", "Div"):
                rule = _FoldAffine.rule(producer, elementwise)
                rules.extend(rule.commute() if elementwise in ("Mul", "Add") else [rule])
        return rules
