"""Replace an inference BatchNormalization that no producer absorbed by ``Mul`` then ``Add``.

Before → after (x of rank r >= 2, C channels on axis 1)::

    y = BatchNormalization(x, g, beta, mean, var)   =>   m = Mul(x, bn_scale)
                                                         y = Add(m, bn_shift)

Math: ``BN(x) = (x - mean) / sqrt(var + eps) * g + beta = x * s + t`` with
``s = g / sqrt(var + eps)`` and ``t = beta - mean * s`` (ONNX default ``epsilon = 1e-5``),
precomputed in float64 by ``batchnorm_scale_shift`` and stored as [C, 1, ..., 1] (r - 1 dims,
so they broadcast along axis 1 only; [C] for r = 2).

When it pays: onnxruntime's BatchNormalization kernel is already a one-pass per-channel
scale-and-shift, and measured here a lone BN on [8, 64, 56, 56] takes 1.14 ms against 1.37 ms
for the Mul + Add pair (2 threads, median of 40). The replacement wins when the Mul/Add merge
with a neighbouring constant Mul/Add/Sub/Div (a Caffe-style BN + Scale pair, densenet's
BN + Mul + Add: 3 nodes become 2, folded by ``fold-constant-chains``). So by default a BN is
replaced only when its producer or its single consumer is such an affine op;
``ReplaceBatchNormWithScalePass(always=True)`` replaces every one (for runtimes whose BN
kernel is slower than Mul + Add, as in MindSpore Lite and ncnn's reason for "Scale").

Registered after ``fuse-batchnorm`` (and ``fuse-conv-affine``): only BNs that could not be
folded into a Conv/ConvTranspose/Gemm/MatMul reach this pass. The new initializers are named
``<bn>_scale`` and ``<bn>_shift`` (after the BN node, else its output), made unique.
Preconditions per match: only output 0 used and ``training_mode`` off; constant 1-D
statistics of one length (not BN-7 ``spatial=0``); the input's rank known and >= 2; the
statistics' dtype equal to the input's (BN-15 allows them to differ, Mul/Add do not); opset >= 7
(older Mul/Add need the legacy ``broadcast`` attribute). A non-match leaves the BN as it is.
"""

from __future__ import annotations

import collections.abc

import onnx_ir as ir
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter import _basics as basics

from modelpress.passes._rewriting import unique_names
from modelpress.passes.base import RulesPass
from modelpress.passes.fuse_batchnorm import (
    batchnorm_scale_shift,
    has_channel_statistics,
    is_inference_batchnorm,
)
from modelpress.passes.rules import (
    PatternOp,
    PatternValue,
    PatternVar,
    RewriteOp,
    checked_const,
    const_array,
    producer_of,
)

__all__ = ["ReplaceBatchNormWithScalePass"]


_AFFINE = frozenset({"Mul", "Add", "Sub", "Div"})


def _is_constant_affine(node: ir.Node | None) -> bool:
    """A default-domain Mul/Add/Sub/Div with one constant operand."""
    if node is None or node.op_type not in _AFFINE or node.domain not in ("", "ai.onnx"):
        return False
    return sum(const_array(v) is not None for v in node.inputs) == 1


def _has_affine_neighbour(x: ir.Value, y: ir.Value) -> bool:
    producer_merges = _is_constant_affine(x.producer()) and len(x.uses()) == 1
    consumers = [user for user, _ in y.uses()]
    consumer_merges = len(consumers) == 1 and not y.is_graph_output() and _is_constant_affine(consumers[0])
    return producer_merges or consumer_merges


class _BatchNormToMulAdd(RewriteRuleClassBase):
    """``BatchNormalization(x, ...)`` (inference) → ``Add(Mul(x, scale), shift)``."""

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        self.always = always

    def pattern(self, op: PatternOp, x: PatternVar) -> PatternValue:
        return op.BatchNormalization(
            x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["y"]
        )

    def check(self, context: basics.MatchContext, x: ir.Value, y: ir.Value) -> basics.MatchResult:
        result = basics.MatchResult()
        bn = producer_of(y)
        if not is_inference_batchnorm(bn):
            return result.fail("BatchNormalization is in training mode or its extra outputs are used", bn)
        if not has_channel_statistics(bn):
            return result.fail("BN statistics are not constant 1-D per-channel vectors", bn)
        if x.shape is None or len(x.shape) < 2:
            return result.fail("BN input rank is unknown or < 2: cannot place the channel axis", bn)
        scale = checked_const(bn.inputs[1])  # has_channel_statistics: constant
        if x.dtype is None or scale.dtype != x.dtype.numpy():
            return result.fail(f"BN statistics dtype {scale.dtype} differs from input {x.dtype}", bn)
        channels = x.shape[1]
        if isinstance(channels, int) and channels != scale.shape[0]:
            return result.fail(f"input has {channels} channels, statistics {scale.shape[0]}", bn)
        if context.graph_or_function.opset_imports.get("", 0) < 7:
            return result.fail("opset < 7: Mul/Add would need the legacy broadcast attribute", bn)
        if not self.always and not _has_affine_neighbour(x, y):
            return result.fail("no constant Mul/Add/Sub/Div next to it: BN is faster than Mul + Add", bn)
        return result

    def rewrite(self, op: RewriteOp, x: ir.Value, y: ir.Value) -> ir.Value:
        bn = producer_of(y)
        folded = batchnorm_scale_shift(bn)
        assert folded is not None and x.shape is not None  # check() required both
        scale, shift = folded
        shape = (scale.shape[0],) + (1,) * (len(x.shape) - 2)
        graph = bn.graph
        stem = bn.name or y.name or "batchnorm"
        scale_name, shift_name = unique_names(graph, [f"{stem}_scale", f"{stem}_shift"])
        scale_value = op.initializer(ir.tensor(scale.reshape(shape)), name=scale_name)
        shift_value = op.initializer(ir.tensor(shift.reshape(shape)), name=shift_name)
        return op.Add(op.Mul(x, scale_value), shift_value)


class ReplaceBatchNormWithScalePass(RulesPass):
    """Turn each inference BatchNormalization left after folding into a Mul and an Add."""

    name = "replace-batchnorm-with-scale"
    summary = "replace an unfoldable BatchNormalization by Mul(x, scale) + shift where they merge"

    def __init__(self, *, always: bool = False) -> None:
        super().__init__()
        self.always = always

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """The single BatchNormalization → Mul + Add rule."""
        return [_BatchNormToMulAdd.rule(self.always)]
