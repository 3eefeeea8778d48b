"""Test helpers: numeric equivalence with stated tolerances, op-count assertions, pass runs."""

from __future__ import annotations

import collections.abc

import onnx_ir as ir

from modelpress.ir import io
from modelpress.ir.stats import op_histogram
from modelpress.ir.verify import verify
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


def assert_rewrites(
    pass_: ir.passes.PassBase,
    model: ir.Model,
    expected_ops: dict[str, int],
    *,
    rtol: float = FP32,
    dim_values: collections.abc.Mapping[str, int] | None = None,
) -> ir.Model:
    """STYLE.md §4 for one positive case: the pass changes ``model`` to exactly
    ``expected_ops``; input and output pass the full checker; outputs agree on 3 seeds within
    ``rtol``; a second run changes nothing. Returns the rewritten model."""
    verify(model, full=True)
    after, changed = run_pass(pass_, model)
    assert changed is True
    assert ops(after) == expected_ops
    verify(after, full=True)
    assert_equivalent(model, after, seeds=(0, 1, 2), rtol=rtol, dim_values=dim_values)
    _, again = run_pass(pass_, after)
    assert again is False, "not idempotent: a second run changed the model again"
    return after


def assert_refused(pass_: ir.passes.PassBase, model: ir.Model) -> None:
    """A negative case: the pass reports no change and the model is byte-identical."""
    after, changed = run_pass(pass_, model)
    assert changed is False
    assert serialized(after) == serialized(model)


def typed_outputs(model: ir.Model, shape: collections.abc.Sequence[int]) -> ir.Model:
    """Give graph outputs that shape inference could not type (invalid models) a float type."""
    for value in model.graph.outputs:
        value.type = value.type or ir.TensorType(ir.DataType.FLOAT)
        value.shape = value.shape or ir.Shape(list(shape))
    return model
