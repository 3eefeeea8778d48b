"""Fuse Conv + activation, and Conv + residual Add (+ activation), into onnxruntime's FusedConv.

Before → after::

    c = Conv(x, W, B)                  y = com.microsoft.FusedConv<activation="Relu">(x, W, B)
    y = Relu(c)                   =>

    c = Conv(x, W, B)
    s = Add(c, z)         (or Sum)     y = com.microsoft.FusedConv<activation="Relu">(x, W, B, z)
    y = Relu(s)                   =>

    c = Conv(x, W, B)                  y = com.microsoft.FusedConv(x, W, B, z)
    y = Add(c, z)                 =>   (no activation: a residual Add not followed by one)

``FusedConv`` computes ``act(conv(x, W) + B + z)`` in one MLAS kernel, so the activation and
the residual addition cost no extra pass over memory (the brief's 算子融合: results stay in
cache). onnxruntime itself fuses only the first form (at EXTENDED); the residual forms save
one more node per residual block (the kernel writes the convolution onto ``z``'s buffer, so the
Add costs no pass over memory). A bare residual Add is fused only when its result does not
feed an activation the residual+activation form would take. Activations that MLAS fuses:
Relu, LeakyRelu(alpha), Sigmoid, Tanh, Clip(min, max constant), HardSigmoid(alpha, beta).

Refused per match: non-float32 Conv (the CPU kernel is float-only), an intermediate value
with another consumer or that is a graph output, a residual ``z`` whose static shape is not
the Conv output's (FusedConv does not broadcast ``z``; a symbolic dim matches the same named
dim, e.g. both ``batch``), Clip bounds that are not constants.
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter import _basics as basics

from modelpress.passes._rewriting import unique_names
from modelpress.passes.base import RulesPass
from modelpress.passes.rules import (
    PatternOp,
    PatternValue,
    PatternVar,
    RewriteOp,
    const_array,
    producer_of,
    same_shape,
)

__all__ = ["FuseConvActivationPass"]

MS_DOMAIN = "com.microsoft"
_ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid")


def _activation_params(act: ir.Node) -> list[float] | None:
    """FusedConv's ``activation_params`` for ``act``, or None when it cannot be fused."""
    if act.op_type == "LeakyRelu":
        attr = act.attributes.get("alpha")
        return [0.01 if attr is None else attr.as_float()]  # ONNX default alpha = 0.01
    if act.op_type == "HardSigmoid":
        alpha, beta = act.attributes.get("alpha"), act.attributes.get("beta")
        return [0.2 if alpha is None else alpha.as_float(), 0.5 if beta is None else beta.as_float()]
    if act.op_type == "Clip":
        if "min" in act.attributes or "max" in act.attributes:  # opset < 11 Clip
            low, high = act.attributes.get("min"), act.attributes.get("max")
            return [
                float(np.finfo(np.float32).min) if low is None else low.as_float(),
                float(np.finfo(np.float32).max) if high is None else high.as_float(),
            ]
        bounds = []
        for index, default in ((1, np.finfo(np.float32).min), (2, np.finfo(np.float32).max)):
            value = act.inputs[index] if len(act.inputs) > index else None
            if value is None:
                bounds.append(float(default))
                continue
            array = const_array(value)
            if array is None or array.size != 1:
                return None
            bounds.append(float(array.reshape(())))
        return bounds
    return []


def _fused_attributes(conv: ir.Node, act: ir.Node, activation: str) -> dict[str, object]:
    """Conv's attributes plus FusedConv's activation and (typed, non-empty) parameters."""
    attributes: dict[str, object] = {name: attr for name, attr in conv.attributes.items()}
    attributes["activation"] = activation
    params = _activation_params(act)
    if params:  # an empty list would be typed INTS; the schema wants FLOATS or nothing
        attributes["activation_params"] = ir.AttrFloat32s("activation_params", params)
    return attributes


def _single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def _check_conv(conv_out: ir.Value, act_out: ir.Value) -> str | None:
    """Why this Conv/activation pair cannot fuse, or None."""
    if conv_out.dtype != ir.DataType.FLOAT:
        return "FusedConv's CPU kernel is float32 only"
    if _activation_params(producer_of(act_out)) is None:
        return "activation parameters are not constant"
    return None


class _ConvActivation(RewriteRuleClassBase):
    def __init__(self, activation: str) -> None:
        super().__init__(name=f"FusedConv_{activation}")
        self.activation = activation

    def pattern(self, op: PatternOp, x: PatternVar) -> PatternValue:
        conv = op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"])
        return getattr(op, self.activation)(
            conv, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["act_out"]
        )

    def check(
        self, context: basics.MatchContext, x: ir.Value, conv_out: ir.Value, act_out: ir.Value
    ) -> basics.MatchResult:
        result = basics.MatchResult()
        reason = _check_conv(conv_out, act_out) or (
            None if _single_use(conv_out) else "Conv output has other consumers"
        )
        return result.fail(reason) if reason else result

    def rewrite(self, op: RewriteOp, x: ir.Value, conv_out: ir.Value, act_out: ir.Value) -> ir.Value:
        conv = producer_of(conv_out)
        return op.FusedConv(
            *conv.inputs,
            _domain=MS_DOMAIN,
            **_fused_attributes(conv, producer_of(act_out), self.activation),
        )


class _ConvAddActivation(RewriteRuleClassBase):
    def __init__(self, activation: str, add: str) -> None:
        super().__init__(name=f"FusedConv_{add}_{activation}")
        self.activation, self.add = activation, add

    def pattern(self, op: PatternOp, x: PatternVar, z: PatternVar) -> PatternValue:
        conv = op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"])
        added = getattr(op, self.add)(conv, z, _outputs=["add_out"])
        return getattr(op, self.activation)(
            added, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["act_out"]
        )

    def check(
        self,
        context: basics.MatchContext,
        x: ir.Value,
        z: ir.Value,
        conv_out: ir.Value,
        add_out: ir.Value,
        act_out: ir.Value,
    ) -> basics.MatchResult:
        result = basics.MatchResult()
        if reason := _check_conv(conv_out, act_out):
            return result.fail(reason)
        if not (_single_use(conv_out) and _single_use(add_out)):
            return result.fail("an intermediate value has other consumers")
        reason = _residual_refusal(conv_out, z)
        return result.fail(reason) if reason else result

    def rewrite(
        self,
        op: RewriteOp,
        x: ir.Value,
        z: ir.Value,
        conv_out: ir.Value,
        add_out: ir.Value,
        act_out: ir.Value,
    ) -> ir.Value:
        conv = producer_of(conv_out)
        return op.FusedConv(
            *_with_bias(op, conv),
            z,
            _domain=MS_DOMAIN,
            **_fused_attributes(conv, producer_of(act_out), self.activation),
        )


class _ConvAdd(RewriteRuleClassBase):
    """Conv + residual Add with no activation after it (MobileNetV2's linear bottlenecks)."""

    def __init__(self, add: str) -> None:
        super().__init__(name=f"FusedConv_{add}")
        self.add = add

    def pattern(self, op: PatternOp, x: PatternVar, z: PatternVar) -> PatternValue:
        conv = op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"])
        return getattr(op, self.add)(conv, z, _outputs=["add_out"])

    def check(
        self, context: basics.MatchContext, x: ir.Value, z: ir.Value, conv_out: ir.Value, add_out: ir.Value
    ) -> basics.MatchResult:
        result = basics.MatchResult()
        if conv_out.dtype != ir.DataType.FLOAT:
            return result.fail("FusedConv's CPU kernel is float32 only")
        if not _single_use(conv_out):
            return result.fail("Conv output has other consumers")
        if any(use.node.op_type in _ACTIVATIONS and use.node.domain == "" for use in add_out.uses()):
            return result.fail("the sum feeds an activation: left to the residual+activation form")
        reason = _residual_refusal(conv_out, z)
        return result.fail(reason) if reason else result

    def rewrite(
        self, op: RewriteOp, x: ir.Value, z: ir.Value, conv_out: ir.Value, add_out: ir.Value
    ) -> ir.Value:
        conv = producer_of(conv_out)
        attributes = {name: attr for name, attr in conv.attributes.items()}
        return op.FusedConv(*_with_bias(op, conv), z, _domain=MS_DOMAIN, **attributes)


def _residual_refusal(conv_out: ir.Value, z: ir.Value) -> str | None:
    """Why the residual ``z`` cannot become FusedConv's sum input, or None."""
    if _no_bias_size(conv_out):
        return "the Conv has no bias and W's output-channel count is not a known integer"
    if not same_shape(conv_out, z):
        return f"residual shape {z.shape} is not the Conv output shape {conv_out.shape}"
    return None


def _bias_channels(conv: ir.Node) -> int | None:
    """The size of the zero bias a Conv without one needs: W's output channels, when known."""
    weight = conv.inputs[1] if len(conv.inputs) > 1 else None
    channels = None if weight is None or weight.shape is None else weight.shape[0]
    return channels if isinstance(channels, int) else None


def _no_bias_size(conv_out: ir.Value) -> bool:
    """Whether the Conv has no bias and the size of the zero bias it would need is unknown."""
    conv = conv_out.producer()
    assert conv is not None
    has_bias = len(conv.inputs) >= 3 and conv.inputs[2] is not None
    return not has_bias and _bias_channels(conv) is None


def _with_bias(op: RewriteOp, conv: ir.Node) -> list[ir.Value | None]:
    """Conv's (x, W, B), with a zero bias made when it has none (FusedConv's z is input 3)."""
    inputs = list(conv.inputs)
    if len(inputs) >= 3 and inputs[2] is not None:
        return inputs[:3]
    weight = inputs[1]
    channels = _bias_channels(conv)
    assert weight is not None and channels is not None, "check() refuses a Conv without a known bias size"
    # onnxscript silently replaces an initializer of the same name: take a fresh one.
    (name,) = unique_names(conv.graph, [(weight.name or "conv") + "_zero_bias"])
    return [inputs[0], weight, op.initializer(ir.tensor(np.zeros(channels, np.float32)), name=name)]


def _residual_shapes_missing(graph: ir.Graph) -> bool:
    for node in graph:
        if node.op_type == "Conv" and node.domain == "" and node.outputs[0].shape is None:
            if any(use.node.op_type in ("Add", "Sum") for use in node.outputs[0].uses()):
                return True
    return False


class FuseConvActivationPass(RulesPass):
    """Fuse Conv (+ residual Add) (+ activation) into onnxruntime's FusedConv."""

    name = "fuse-conv-activation-ort"
    summary = "onnxruntime target: Conv(+residual Add)(+activation) -> com.microsoft FusedConv"

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """Residual forms first (they contain the plain form)."""
        rules: list[RewriteRule] = []
        for activation in _ACTIVATIONS:
            for add in ("Add", "Sum"):
                rules.extend(_ConvAddActivation.rule(activation, add).commute())
        rules.extend(_ConvActivation.rule(activation) for activation in _ACTIVATIONS)
        for add in ("Add", "Sum"):
            rules.extend(_ConvAdd.rule(add).commute())
        return rules

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Apply the rules; declare the com.microsoft opset when a FusedConv was made.

        The residual forms compare the Conv output's shape with the residual's: when a Conv
        feeds an Add whose operands have no shape (exporters rarely write intermediate
        shapes), ONNX shape inference fills them in first (best effort, in place: it only
        adds shapes, so it does not count as a change).
        """
        if _residual_shapes_missing(model.graph):
            try:
                common_passes.ShapeInferencePass(strict_mode=False)(model)
            except Exception:  # best effort: without shapes the residual forms are refused
                pass
        result = super().call(model)
        if result.modified:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        return result
