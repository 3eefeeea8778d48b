"""Fuse ``Add(MatMul(a, b), c)`` into ``Gemm(a, b, c)`` where Gemm's contract allows it.

Before → after::

    m = MatMul(a, b)          (a: [M,K], b: [K,N])
    y = Add(m, c)             (c broadcastable to [M,N])   =>   y = Gemm(a, b, c)

Also with a Transpose(perm=[1,0]) on a and/or b, which become ``transA``/``transB``.
Valid only when a and b are rank 2 and c broadcasts *unidirectionally* to [M, N] (Add
broadcasts both ways: a c of shape [2, M, N] would change the output's rank under Gemm).
The rules are onnxscript's ``_matmul_add_to_gemm``; we add the check on c.
"""

from __future__ import annotations

import collections.abc

from onnxscript.rewriter import RewriteRule
from onnxscript.rewriter import _basics as basics
from onnxscript.rewriter.rules.common import _matmul_add_to_gemm as mm

from modelpress.passes.base import RulesPass

__all__ = ["FuseMatMulAddPass"]


def _bias_fits(input_c) -> bool:
    """c has a known shape of rank <= 2 (Gemm's C must broadcast to [M, N], not beyond)."""
    return input_c.shape is not None and len(input_c.shape) <= 2


def _checked(cls: type) -> type:
    class Checked(cls):  # type: ignore[misc, valid-type]
        def check(self, context, input_a, input_b, input_c=None, **kwargs) -> basics.MatchResult:
            result = super().check(context, input_a, input_b, input_c=input_c, **kwargs)
            if result and not _bias_fits(input_c):
                return basics.MatchResult().fail("bias rank unknown or > 2")
            return result

    Checked.__name__ = cls.__name__
    return Checked


class FuseMatMulAddPass(RulesPass):
    """Turn rank-2 MatMul + Add(bias) into one Gemm."""

    name = "fuse-matmul-add"
    summary = "fuse rank-2 MatMul + Add (and Transposes) into Gemm"

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """The four onnxscript MatMul+Add rules, each with our bias-shape check."""
        classes = (mm.MatMulAddToGemm, mm.TransAMatMulAddToGemm, mm.TransBMatMulAddToGemm, mm.TransABMatMulAddToGemm)
        return [_checked(cls)().rule() for cls in classes]
