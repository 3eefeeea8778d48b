"""Fold an inference BatchNormalization into the Conv / ConvTranspose / Gemm / MatMul before it.

Before → after::

    c = Conv(x, W, B)                                   y = Conv(x, W', B')
    y = BatchNormalization(c, g, beta, mean, var)  =>

With ``s = g / sqrt(var + eps)`` per output channel (ONNX default ``epsilon = 1e-5``):
``W' = W * s`` along the output-channel axis, ``B' = (B - mean) * s + beta``. For
``MatMul(x, W)`` (W constant, 2-D) the BN runs over axis 1 of a rank-2 output, so the
output-channel axis of W is its last one and the result is ``Gemm(x, W', B')``.

Conv/ConvTranspose/Gemm come from onnxscript's ``_fuse_batchnorm`` rules, wrapped with two
checks they lack (inference mode: they would fold a ``training_mode=1`` BN whose extra outputs
are unused, which normalizes with batch statistics; and 1-D per-channel statistics) and with
fresh initializer names (``<name>_bnfold``): onnxscript names the fused bias ``<W>_bias`` and
overwrites any initializer already called that. MatMul is ours.
Refused per match: non-constant weights or BN statistics, weights shared with another node,
a producer whose output has other consumers, BN in training mode (``training_mode=1`` or
extra outputs used), statistics that are not 1-D per-channel vectors (BN-7 ``spatial=0``).
"""

from __future__ import annotations

import collections.abc
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter import _basics as basics
from onnxscript.rewriter.rules import common as osr

from modelpress.passes._rewriting import NameReserver
from modelpress.passes.base import RulesPass
from modelpress.passes.rules import (
    PatternOp,
    PatternValue,
    PatternVar,
    RewriteOp,
    checked_const,
    const_array,
    producer_of,
)

__all__ = [
    "FuseBatchNormPass",
    "batchnorm_scale_shift",
    "has_channel_statistics",
    "is_inference_batchnorm",
]


def batchnorm_scale_shift(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel ``(scale, shift)`` with ``BN(y) == y * scale + shift``, or None if not constant.

    ``scale = g / sqrt(var + eps)`` and ``shift = beta - mean * scale``, computed in float64
    then cast back to the input dtype, so folding adds no more than one rounding.
    """
    params = [p for p in (const_array(v) for v in bn.inputs[1:5]) if p is not None]
    if len(params) != 4:
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    attr = bn.attributes.get("epsilon")
    eps = 1e-5 if attr is None else attr.as_float()  # ONNX default epsilon
    scale = gamma / np.sqrt(var + eps)
    dtype = params[0].dtype
    return scale.astype(dtype), (beta - mean * scale).astype(dtype)


def is_inference_batchnorm(bn: ir.Node) -> bool:
    """True when only the first output is used and training_mode is off (its default)."""
    if any(out.uses() or out.is_graph_output() for out in bn.outputs[1:]):
        return False
    attr = bn.attributes.get("training_mode")
    return attr is None or attr.as_int() == 0


def has_channel_statistics(bn: ir.Node) -> bool:
    """True when scale, bias, mean and var are constant 1-D vectors of one length.

    BatchNormalization-7 with ``spatial=0`` has per-activation statistics of shape [C, H, W]
    instead; folding those along the weights' channel axis would be wrong.
    """
    params = [p for p in (const_array(v) for v in bn.inputs[1:5]) if p is not None and p.ndim == 1]
    if len(params) != 4:
        return False
    return len({p.shape for p in params}) == 1


class _DerivedNames:
    """Builder proxy: every initializer the wrapped rewrite creates gets a fresh ``<name>_bnfold``."""

    def __init__(self, op: RewriteOp, graph: ir.Graph | None, names: NameReserver) -> None:
        self._op = op
        self._graph = graph
        self._names = names

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._op, attr)

    def initializer(self, tensor: ir.TensorProtocol, name: str | None = None) -> ir.Value:
        """Create the initializer under a derived name that collides with nothing."""
        return self._op.initializer(
            tensor, name=self._names.names(self._graph, [f"{name or 'bn'}_bnfold"])[0]
        )


def _checked(cls: type[RewriteRuleClassBase], names: NameReserver) -> type[RewriteRuleClassBase]:
    """``cls`` (an onnxscript BN-fusion rule) with our inference/statistics checks and fresh names."""

    class Checked(cls):  # type: ignore[misc, valid-type]  # mypy cannot subclass a variable base
        def check(
            self, context: basics.MatchContext, x: ir.Value, inbound_out: ir.Value, batchnorm_out: ir.Value
        ) -> basics.MatchResult:
            bn = producer_of(batchnorm_out)
            if not is_inference_batchnorm(bn):
                return basics.MatchResult().fail("BatchNormalization is in training mode")
            if not has_channel_statistics(bn):
                return basics.MatchResult().fail("BN statistics are not constant 1-D per-channel vectors")
            return super().check(context, x, inbound_out, batchnorm_out)

        def rewrite(
            self, op: RewriteOp, x: ir.Value, inbound_out: ir.Value, batchnorm_out: ir.Value
        ) -> ir.Value:
            graph = producer_of(inbound_out).graph
            return super().rewrite(_DerivedNames(op, graph, names), x, inbound_out, batchnorm_out)

    Checked.__name__ = cls.__name__
    return Checked


class _FuseBatchNormIntoMatMul(RewriteRuleClassBase):
    """``BatchNormalization(MatMul(x, W))`` on a rank-2 output -> ``Gemm(x, W', B')``."""

    def __init__(self, names: NameReserver) -> None:
        super().__init__()
        self.names = names

    def pattern(self, op: PatternOp, x: PatternVar, w: PatternVar) -> PatternValue:
        return op.BatchNormalization(
            op.MatMul(x, w), _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["y"]
        )

    def check(
        self, context: basics.MatchContext, x: ir.Value, w: ir.Value, y: ir.Value
    ) -> basics.MatchResult:
        result = basics.MatchResult()
        bn = producer_of(y)
        weight = const_array(w)
        if weight is None or weight.ndim != 2:
            return result.fail("MatMul weight is not a constant 2-D matrix")
        if x.shape is None or len(x.shape) != 2:
            return result.fail("MatMul input is not known to be rank 2 (BN channel axis would differ)")
        if len(w.uses()) != 1:
            return result.fail("MatMul weight is shared with another node")
        if not is_inference_batchnorm(bn) or not has_channel_statistics(bn):
            return result.fail("BatchNormalization is in training mode or has non-constant statistics")
        return result

    def rewrite(self, op: RewriteOp, x: ir.Value, w: ir.Value, y: ir.Value) -> ir.Value:
        folded = batchnorm_scale_shift(producer_of(y))
        assert folded is not None  # check() required constant statistics
        scale, shift = folded
        weight = checked_const(w) * scale[np.newaxis, :]
        graph = producer_of(y).graph
        stem = (w.name or "matmul_w") + "_bnfold"
        w_name, b_name = self.names.names(graph, [stem, stem + "_bias"])
        return op.Gemm(
            x,
            op.initializer(ir.tensor(weight.astype(scale.dtype)), name=w_name),
            op.initializer(ir.tensor(shift), name=b_name),
        )


class FuseBatchNormPass(RulesPass):
    """Fold BatchNormalization into a preceding Conv, ConvTranspose, Gemm or MatMul."""

    name = "fuse-batchnorm"
    summary = "fold BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul that feeds it"

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """The Conv/ConvTranspose/Gemm rules of onnxscript (with our checks), then our MatMul rule."""
        fbn = osr._fuse_batchnorm
        classes = (fbn.FuseBatchNormIntoConv, fbn.FuseBatchNormIntoConvTranspose, fbn.FuseBatchNormIntoGemm)
        names = NameReserver()  # one per run: see NameReserver
        return [*(_checked(cls, names).rule() for cls in classes), _FuseBatchNormIntoMatMul.rule(names)]
