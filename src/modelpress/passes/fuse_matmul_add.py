"""Fuse ``Add(MatMul(a, b), c)`` into ``Gemm(a, b, c)`` where Gemm's contract allows it.

Before → after::

    m = MatMul(a, b)          (a: [M,K], b: [K,N])
    y = Add(m, c)             (c broadcastable to [M,N])   =>   y = Gemm(a, b, c)

Also with a Transpose(perm=[1,0]) on a and/or b, which become ``transA``/``transB``, and with
the operands of Add swapped. Refused in opsets < 7, where Gemm broadcasts C only on request.
Valid only when a and b are rank 2 and c broadcasts *unidirectionally* to [M, N] (Add
broadcasts both ways: a c of shape [2, M, N] would change the output's rank under Gemm, and
a c of shape [3, N] with M = 1 its shape), so every dim of c must be 1 or equal M / N.
The rules are onnxscript's ``_matmul_add_to_gemm``; we add the check on c.
"""

from __future__ import annotations

import collections.abc

import onnx_ir as ir
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter import _basics as basics
from onnxscript.rewriter.rules.common import _matmul_add_to_gemm as mm

from modelpress.passes.base import RulesPass

__all__ = ["FuseMatMulAddPass"]


def _bias_fits(
    input_a: ir.Value, input_b: ir.Value, input_c: ir.Value | None, trans_a: bool, trans_b: bool
) -> bool:
    """Whether c broadcasts unidirectionally to the product's [M, N] (Gemm's contract for C).

    Add broadcasts both ways, so each dimension of c must be 1 or provably the output's: a c of
    shape [3, N] with M = 1 (or M unknown) would make Add's output [3, N] where Gemm fails.
    """
    if input_c is None or input_c.shape is None or len(input_c.shape) > 2:
        return False
    if input_a.shape is None or input_b.shape is None:
        return False
    out = (input_a.shape[1 if trans_a else 0], input_b.shape[0 if trans_b else 1])
    aligned = out[2 - len(input_c.shape) :]
    return all(_same_dim(dim, target) for dim, target in zip(input_c.shape, aligned, strict=True))


def _same_dim(dim: int | ir.SymbolicDim, target: int | ir.SymbolicDim) -> bool:
    """``dim`` is 1, or the same known size or named symbol as ``target``."""
    if dim == 1:
        return True
    if isinstance(dim, int) or isinstance(target, int):
        return dim == target
    return dim.value is not None and dim.value == target.value


def _checked(cls: type[RewriteRuleClassBase]) -> type[RewriteRuleClassBase]:
    class Checked(cls):  # type: ignore[misc, valid-type]  # mypy cannot subclass a variable base
        def check(
            self,
            context: basics.MatchContext,
            input_a: ir.Value,
            input_b: ir.Value,
            input_c: ir.Value | None = None,
            **kwargs: object,
        ) -> basics.MatchResult:
            result = super().check(context, input_a, input_b, input_c=input_c, **kwargs)
            if result and context.graph_or_function.opset_imports.get("", 0) < 7:
                # Gemm-6 and older broadcast C only with the legacy `broadcast` attribute.
                return basics.MatchResult().fail("opset < 7: Gemm would not broadcast C")
            if result and not _bias_fits(input_a, input_b, input_c, self.trans_a, self.trans_b):
                return basics.MatchResult().fail("bias does not broadcast unidirectionally to [M, N]")
            return result

    Checked.__name__ = cls.__name__
    return Checked


class FuseMatMulAddPass(RulesPass):
    """Turn rank-2 MatMul + Add(bias) into one Gemm."""

    name = "fuse-matmul-add"
    summary = "fuse rank-2 MatMul + Add (and Transposes) into Gemm"

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """The four onnxscript MatMul+Add rules, each with our bias-shape check, both Add orders."""
        # Most specific first (as onnxscript orders them): the plain rule would otherwise match
        # first and leave the Transpose as a node of its own.
        classes = (
            mm.TransABMatMulAddToGemm,
            mm.TransAMatMulAddToGemm,
            mm.TransBMatMulAddToGemm,
            mm.MatMulAddToGemm,
        )
        # Add is commutative: match the bias on either side.
        return [rule for cls in classes for rule in _checked(cls).rule().commute()]
