"""Merge or cancel chains of layout ops: Transpose∘Transpose, Reshape∘Reshape, Squeeze/Unsqueeze.

Before → after::

    t = Transpose(x, perm=p1); y = Transpose(t, perm=p2)  =>  y = Transpose(x, perm=p1∘p2)
                                                               (or y is x when the composition is identity)
    r = Reshape(x, s1);  y = Reshape(r, s2)               =>  y = Reshape(x, s2)   (s2 without 0s)
    u = Unsqueeze(x, a1); y = Unsqueeze(u, a2)            =>  y = Unsqueeze(x, a1 ∪ a2 remapped)
    s = Squeeze(x, axes); y = Unsqueeze(s, axes)          =>  y is x   (same constant axes)
    f = Flatten(x) next to a Reshape/Flatten, static shape =>  Reshape, which then merges
                                                               (a lone Flatten stays: nothing to gain)
    c = Cast(x, T1); y = Cast(c, T2) where T1 is wider    =>  y = Cast(x, T2)

Transpose/Reshape/Unsqueeze/Cast/Flatten rules are onnxscript's basic rules;
Squeeze→Unsqueeze cancellation is ours (only with equal, constant, non-negative-normalized axes).
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter import _basics as basics
from onnxscript.rewriter.rules import common as osr
from onnxscript.rewriter.rules.common._basic_rules import Flatten2Reshape

from modelpress.passes.base import RulesPass
from modelpress.passes.rules import PatternOp, PatternValue, PatternVar, RewriteOp, const_array

__all__ = ["MergeTransposesReshapesPass"]


class _SqueezeUnsqueeze(RewriteRuleClassBase):
    """``Unsqueeze(Squeeze(x, axes), axes)`` -> x, axes constant and equal after normalization."""

    def pattern(self, op: PatternOp, x: PatternVar, axes1: PatternVar, axes2: PatternVar) -> PatternValue:
        return op.Unsqueeze(op.Squeeze(x, axes1), axes2)

    def check(
        self, context: basics.MatchContext, x: ir.Value, axes1: ir.Value, axes2: ir.Value
    ) -> basics.MatchResult:
        result = basics.MatchResult()
        a1, a2 = const_array(axes1), const_array(axes2)
        if a1 is None or a2 is None or x.shape is None:
            return result.fail("axes not constant or rank of x unknown")
        rank = len(x.shape)
        n1 = sorted(int(a) % rank for a in np.atleast_1d(a1))
        n2 = sorted(int(a) % rank for a in np.atleast_1d(a2))
        if n1 != n2:
            return result.fail(f"axes differ: {n1} vs {n2}")
        return result

    def rewrite(self, op: RewriteOp, x: ir.Value, axes1: ir.Value, axes2: ir.Value) -> ir.Value:
        return op.Identity(x)


_RESHAPING = ("Reshape", "Flatten")


class _MergeableFlatten(Flatten2Reshape):
    """onnxscript's Flatten -> Reshape, only where the Reshape then merges with a neighbour.

    A lone Flatten turned into a Reshape gains nothing and costs a shape initializer (and was
    measured a few percent slower in mobilenetv2_like at ENABLE_ALL, where onnxruntime keeps
    the graphs otherwise identical), so the conversion waits for a Reshape/Flatten on either side.
    """

    def check(self, context: basics.MatchContext, x: ir.Value) -> basics.MatchResult:
        producer = x.producer()
        users = context.output_values[0].uses()
        beside = (producer is not None and producer.op_type in _RESHAPING and producer.domain == "") or (
            bool(users) and all(use.node.op_type in _RESHAPING and use.node.domain == "" for use in users)
        )
        if not beside:
            return basics.MatchResult().fail("no Reshape/Flatten beside it to merge with")
        return super().check(context, x)


class MergeTransposesReshapesPass(RulesPass):
    """Merge consecutive Transposes, Reshapes, Unsqueezes and Casts; cancel Squeeze/Unsqueeze pairs."""

    name = "merge-transposes-reshapes"
    summary = "merge or cancel consecutive Transpose/Reshape/Squeeze/Unsqueeze/Cast"

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """Onnxscript's merging rules, then ours."""
        return [
            osr.transpose_transpose_rule,
            _MergeableFlatten.rule(),
            osr.reshape_reshape_rule,
            osr.unsqueeze_unsqueeze_rule,
            osr.squeeze_reshape_1d_rule,
            osr.cast_cast_rule,
            _SqueezeUnsqueeze().rule(),
        ]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Apply the rules, then drop the Identity nodes cancellations leave behind."""
        result = super().call(model)
        if result.modified:
            common_passes.IdentityEliminationPass()(model)
        return result
