"""Fold an inference BatchNormalization into the Conv / ConvTranspose / Gemm / MatMul before it.

Before → after::

    c = Conv(x, W, B)                                   y = Conv(x, W', B')
    y = BatchNormalization(c, g, beta, mean, var)  =>

With ``s = g / sqrt(var + eps)`` per output channel (ONNX default ``epsilon = 1e-5``):
``W' = W * s`` along the output-channel axis, ``B' = (B - mean) * s + beta``. For
``MatMul(x, W)`` (W constant, 2-D) the BN runs over axis 1 of a rank-2 output, so the
output-channel axis of W is its last one and the result is ``Gemm(x, W', B')``.

Conv/ConvTranspose/Gemm come from onnxscript's ``_fuse_batchnorm`` rules; MatMul is ours.
Refused per match: non-constant weights or BN statistics, weights shared with another node,
a producer whose output has other consumers, BN in training mode (extra outputs used).
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter import _basics as basics
from onnxscript.rewriter.rules import common as osr

from modelpress.passes.base import RulesPass
from modelpress.passes.rules import const_array

__all__ = ["FuseBatchNormPass", "batchnorm_scale_shift"]


def batchnorm_scale_shift(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel ``(scale, shift)`` with ``BN(y) == y * scale + shift``, or None if not constant.

    ``scale = g / sqrt(var + eps)`` and ``shift = beta - mean * scale``, computed in float64
    then cast back to the input dtype, so folding adds no more than one rounding.
    """
    params = [const_array(v) for v in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)  # type: ignore[union-attr]
    attr = bn.attributes.get("epsilon")
    eps = 1e-5 if attr is None else attr.as_float()  # ONNX default epsilon
    scale = gamma / np.sqrt(var + eps)
    dtype = params[0].dtype  # type: ignore[union-attr]
    return scale.astype(dtype), (beta - mean * scale).astype(dtype)


def is_inference_batchnorm(bn: ir.Node) -> bool:
    """True when only the first output is used and training_mode is off."""
    if any(out.uses() or out.is_graph_output() for out in bn.outputs[1:]):
        return False
    attr = bn.attributes.get("training_mode")
    return attr is None or attr.as_int() == 0


class _FuseBatchNormIntoMatMul(RewriteRuleClassBase):
    """``BatchNormalization(MatMul(x, W))`` on a rank-2 output -> ``Gemm(x, W', B')``."""

    def pattern(self, op, x, w):
        return op.BatchNormalization(
            op.MatMul(x, w), _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["y"]
        )

    def check(self, context, x, w, y) -> basics.MatchResult:
        result = basics.MatchResult()
        bn = y.producer()
        weight = const_array(w)
        if weight is None or weight.ndim != 2:
            return result.fail("MatMul weight is not a constant 2-D matrix")
        if x.shape is None or len(x.shape) != 2:
            return result.fail("MatMul input is not known to be rank 2 (BN channel axis would differ)")
        if len(w.uses()) != 1:
            return result.fail("MatMul weight is shared with another node")
        if not is_inference_batchnorm(bn) or batchnorm_scale_shift(bn) is None:
            return result.fail("BatchNormalization is in training mode or has non-constant statistics")
        return result

    def rewrite(self, op, x, w, y):
        scale, shift = batchnorm_scale_shift(y.producer())  # type: ignore[misc]
        weight = const_array(w) * scale[np.newaxis, :]  # type: ignore[operator]
        w_name = (w.name or "matmul_w") + "_bnfold"
        return op.Gemm(
            x,
            op.initializer(ir.tensor(weight.astype(scale.dtype)), name=w_name),
            op.initializer(ir.tensor(shift), name=w_name + "_bias"),
        )


class FuseBatchNormPass(RulesPass):
    """Fold BatchNormalization into a preceding Conv, ConvTranspose, Gemm or MatMul."""

    name = "fuse-batchnorm"
    summary = "fold BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul that feeds it"

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """onnxscript's Conv/ConvTranspose/Gemm rules plus our MatMul rule."""
        return [*osr._fuse_batchnorm.rules, _FuseBatchNormIntoMatMul().rule()]
