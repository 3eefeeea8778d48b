"""Remove nodes that compute their input unchanged (Identity, Dropout at inference, no-ops).

Before → after (each line)::

    y = Identity(x)                              =>  y is x
    y = Dropout(x)            (inference)        =>  y is x
    y = Add(x, 0) / Mul(x, 1) / Sub(x, 0) / Div(x, 1)   (scalar constants)  =>  y is x
    y = Cast(x, to=dtype(x)); Transpose(x, perm=identity); Expand(x, shape(x))  =>  y is x
    y = Reshape(x, s)         (s resolves to shape(x))   =>  y is x
    y = Slice(x, ...)         (selects all of x)         =>  y is x
    y = Pad(x, pads=0...)                              =>  y is x
    y = Concat(x) / Sum(x) / Max(x) / Min(x) / Mean(x)  (one input)  =>  y is x

The rules rewrite to ``Identity(x)``; onnx_ir's ``IdentityEliminationPass`` then removes the
Identity, keeping one only where a graph input would otherwise become a graph output.
Rules from onnxscript are reused (``_no_op``, basic no-op Cast/Expand/Transpose,
``collapse_slice``); Reshape, Pad, Dropout and single-input variadic ops are ours.
Preconditions are per match: static input shapes for Reshape, constant pads/shape inputs.
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter import _basics as basics
from onnxscript.rewriter.rules import common as osr

from modelpress.passes.base import RulesPass
from modelpress.passes.rules import (
    PatternOp,
    PatternValue,
    PatternVar,
    RewriteOp,
    const_array,
    int_attr,
    producer_of,
    static_shape,
)

__all__ = ["EliminateNoOpsPass"]


class _NoOpReshape(RewriteRuleClassBase):
    """``Reshape(x, s)`` where ``s`` (with 0 and -1 resolved) equals the static shape of x."""

    def pattern(self, op: PatternOp, x: PatternVar, shape: PatternVar) -> PatternValue:
        return op.Reshape(x, shape, _allow_other_attributes=True, _outputs=["y"])

    def check(
        self, context: basics.MatchContext, x: ir.Value, shape: ir.Value, y: ir.Value
    ) -> basics.MatchResult:
        result = basics.MatchResult()
        in_shape = static_shape(x)
        target = const_array(shape)
        if in_shape is None or target is None:
            return result.fail("input shape not static or target shape not constant")
        allowzero = int_attr(producer_of(y), "allowzero", 0)
        dims = [
            in_shape[i] if (d == 0 and not allowzero and i < len(in_shape)) else int(d)
            for i, d in enumerate(target.tolist())
        ]
        if dims.count(-1) == 1:
            known = int(np.prod([d for d in dims if d != -1]))
            total = int(np.prod(in_shape))
            if known == 0 or total % known:
                return result.fail("cannot resolve -1")
            dims[dims.index(-1)] = total // known
        if tuple(dims) != in_shape:
            return result.fail(f"Reshape to {dims} changes shape {in_shape}")
        return result

    def rewrite(self, op: RewriteOp, x: ir.Value, shape: ir.Value, y: ir.Value) -> ir.Value:
        return op.Identity(x)


class _NoOpPad(RewriteRuleClassBase):
    """``Pad(x, pads)`` whose pads are all zero (opset >= 11, pads as an input)."""

    def pattern(self, op: PatternOp, x: PatternVar, pads: PatternVar) -> PatternValue:
        return op.Pad(x, pads, _allow_other_inputs=True, _allow_other_attributes=True)

    def check(self, context: basics.MatchContext, x: ir.Value, pads: ir.Value) -> basics.MatchResult:
        result = basics.MatchResult()
        values = const_array(pads)
        if values is None or values.any():
            return result.fail("pads not constant zeros")
        return result

    def rewrite(self, op: RewriteOp, x: ir.Value, pads: ir.Value) -> ir.Value:
        return op.Identity(x)


class _NoOpSlice(RewriteRuleClassBase):
    """``Slice`` with step 1 whose normalized [start, end) covers every sliced axis of a static x."""

    def pattern(self, op: PatternOp, x: PatternVar, starts: PatternVar, ends: PatternVar) -> PatternValue:
        return op.Slice(x, starts, ends, _allow_other_inputs=True, _outputs=["y"])

    def check(
        self, context: basics.MatchContext, x: ir.Value, starts: ir.Value, ends: ir.Value, y: ir.Value
    ) -> basics.MatchResult:
        result = basics.MatchResult()
        node = producer_of(y)
        shape = static_shape(x)
        maybe_args = [const_array(v) for v in node.inputs[1:]]
        args = [a for a in maybe_args if a is not None]
        if shape is None or len(args) != len(maybe_args):
            return result.fail("input shape not static or slice parameters not constant")
        starts_, ends_ = args[0], args[1]
        axes = args[2] if len(args) > 2 else np.arange(len(starts_))
        steps = args[3] if len(args) > 3 else np.ones(len(starts_), np.int64)
        for start, end, axis, step in zip(starts_, ends_, axes, steps, strict=True):
            dim = shape[int(axis) % len(shape)]
            # ONNX Slice: negative indices count from the end, then clamp to [0, dim].
            start = min(max(int(start) + dim if start < 0 else int(start), 0), dim)
            end = min(max(int(end) + dim if end < 0 else int(end), 0), dim)
            if step != 1 or start != 0 or end != dim:
                return result.fail(f"Slice on axis {int(axis)} keeps [{start}:{end}:{int(step)}] of {dim}")
        return result

    def rewrite(self, op: RewriteOp, x: ir.Value, starts: ir.Value, ends: ir.Value, y: ir.Value) -> ir.Value:
        return op.Identity(x)


class _InferenceDropout(RewriteRuleClassBase):
    """``Dropout(x[, ratio[, training_mode]])`` with training_mode absent or constant false.

    Only the single-output form: a used ``mask`` output keeps the node.
    """

    def pattern(self, op: PatternOp, x: PatternVar) -> PatternValue:
        return op.Dropout(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context: basics.MatchContext, x: ir.Value, y: ir.Value) -> basics.MatchResult:
        result = basics.MatchResult()
        node = producer_of(y)
        if len(node.outputs) > 1 and node.outputs[1].uses():
            return result.fail("mask output is used")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            training = const_array(node.inputs[2])
            if training is None or bool(training):
                return result.fail("training_mode is not a constant false")
        if "is_test" in node.attributes and not node.attributes["is_test"].as_int():
            return result.fail("opset < 7 Dropout in training mode")
        return result

    def rewrite(self, op: RewriteOp, x: ir.Value, y: ir.Value) -> ir.Value:
        return op.Identity(x)


def _single_input(op_type: str) -> RewriteRule:
    def pattern(op: PatternOp, x: PatternVar) -> PatternValue:
        return getattr(op, op_type)(x, _allow_other_attributes=True)

    def rewrite(op: RewriteOp, x: ir.Value) -> ir.Value:
        return op.Identity(x)

    return RewriteRule(pattern, rewrite, name=f"single_input_{op_type}")


class EliminateNoOpsPass(RulesPass):
    """Remove Identity, inference Dropout and every op that provably returns its input."""

    name = "eliminate-no-ops"
    summary = (
        "remove Identity, inference Dropout and no-op Cast/Transpose/Reshape/Slice/Pad/Expand/Concat/Sum"
    )

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """Onnxscript's no-op rules, then ours."""
        return [
            *osr._no_op.rules,
            osr.no_op_cast_rule,
            osr.no_op_expand_rule,
            osr.no_op_transpose_rule,
            *osr._collapse_slices.rules,
            _NoOpReshape().rule(),
            _NoOpSlice().rule(),
            _NoOpPad().rule(),
            _InferenceDropout().rule(),
            *(_single_input(t) for t in ("Concat", "Sum", "Max", "Min", "Mean")),
        ]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Rewrite no-ops to Identity, then remove Identity nodes."""
        result = super().call(model)
        removed = common_passes.IdentityEliminationPass()(model).modified
        if removed:
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, result.modified or removed)
