"""Test helpers: numeric equivalence with stated tolerances, op-count assertions, pass runs."""

from __future__ import annotations

import collections.abc

import onnx_ir as ir

from modelpress.ir import io
from modelpress.ir.stats import op_histogram
from modelpress.runtime.compare import compare_models

# Tolerances of STYLE.md §4.3, relative to each output's largest magnitude.
EXACT = 0.0  # rewrites that leave the arithmetic alone
FP32 = 1e-5  # rewrites that change the arithmetic (folding BN, re-association)


def assert_equivalent(
    before: ir.Model,
    after: ir.Model,
    *,
    rtol: float = FP32,
    seeds: collections.abc.Sequence[int] = (0, 1, 2),
    dim_values: collections.abc.Mapping[str, int] | None = None,
) -> None:
    """Both models give the same outputs on onnxruntime (optimizations off) within ``rtol``."""
    comparison = compare_models(before, after, seeds=seeds, dim_values=dim_values)
    comparison.check(rtol, what="the rewritten model")


def run_pass(pass_: ir.passes.PassBase, model: ir.Model) -> tuple[ir.Model, bool]:
    """Run ``pass_`` on a clone; return (new model, changed)."""
    work = model.clone()
    result = pass_(work)
    return result.model, result.modified


def ops(model: ir.Model) -> dict[str, int]:
    """The op histogram (shorthand for assertions)."""
    return op_histogram(model)


def serialized(model: ir.Model) -> bytes:
    """Deterministic bytes of a model, to assert a negative case left it byte-identical."""
    return io.to_bytes(model)
