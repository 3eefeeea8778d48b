"""Property tests (STYLE.md §4.6): random small chains stay valid and numerically equal.

Each example is a chain of Conv / BatchNormalization / Add / Mul / Relu / Transpose / Reshape /
Slice on a small 4-D input with random shapes, constants (broadcast, of lower rank, on either
side) and Slice parameters (negative axes and steps, clamped and INT64 bounds). The model is
run through the whole ``all`` pipeline and through each reordering pass alone; the result must
pass ``verify(full=True)`` and match the original on onnxruntime within fp32 rounding.
"""

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from modelpress.optimize import optimize_model
from modelpress.passes.fold_constant_chains import FoldConstantChainsPass
from modelpress.passes.reorder_slices import MoveSlicesUpPass
from tests.testing import assert_equivalent, run_pass

F32 = ir.DataType.FLOAT
I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min
OPS = ("Conv", "BatchNormalization", "Add", "Mul", "Relu", "Transpose", "Reshape", "Slice")
# Element-wise ops and Slices drawn more often, so the reordering passes find work.
DRAWN_OPS = (*OPS, "Add", "Mul", "Relu", "Slice", "Slice")
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    # The autouse verify fixture wraps every pass once per test, which is what we want here.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _conv(draw, rng, b, t, shape):
    if len(shape) != 4:
        return t, shape
    c_out, kernel = draw(st.integers(1, 4)), draw(st.sampled_from([1, 3]))
    w = rng.standard_normal((c_out, shape[1], kernel, kernel)).astype(np.float32)
    inputs = [t, b.const(w)]
    if draw(st.booleans()):
        inputs.append(b.const(rng.standard_normal(c_out).astype(np.float32)))
    return b.op("Conv", *inputs, pads=[kernel // 2] * 4), [shape[0], c_out, *shape[2:]]


def _batchnorm(draw, rng, b, t, shape):
    if len(shape) < 2:
        return t, shape
    channels = shape[1]
    params = [rng.standard_normal(channels), rng.standard_normal(channels),
              rng.standard_normal(channels), rng.random(channels) + 0.5]  # fmt: skip
    return b.op("BatchNormalization", t, *(b.const(p.astype(np.float32)) for p in params)), shape


def _broadcast_constant(draw, rng, b, t, shape, op_type):
    rank = draw(st.integers(0, len(shape)))
    const_shape = [d if draw(st.booleans()) else 1 for d in shape[len(shape) - rank :]]
    const = b.const(rng.standard_normal(const_shape).astype(np.float32))
    return (b.op(op_type, const, t) if draw(st.booleans()) else b.op(op_type, t, const)), shape


def _transpose(draw, rng, b, t, shape):
    perm = draw(st.permutations(range(len(shape))))
    return b.op("Transpose", t, perm=list(perm)), [shape[p] for p in perm]


def _reshape(draw, rng, b, t, shape):
    if len(shape) >= 3 and draw(st.booleans()):
        axis = draw(st.integers(0, len(shape) - 2))
        new = [*shape[:axis], shape[axis] * shape[axis + 1], *shape[axis + 2 :]]
    else:
        axis = draw(st.integers(0, len(shape)))
        new = [*shape[:axis], 1, *shape[axis:]]
    if len(new) > 5:
        return t, shape
    return b.op("Reshape", t, b.const(np.array(new, np.int64))), new


def _slice_axis(draw, dim):
    """(start, end, step, length): bounds where Python slicing agrees with ONNX Slice."""
    step = draw(st.sampled_from([1, 1, 2, -1, -2]))
    if step > 0:
        start = draw(st.sampled_from([*range(-dim, dim), -100]))
        end = draw(st.sampled_from([*range(-dim, dim + 1), 100, I64_MAX]))
    else:  # ONNX clamps a start below -dim to 0 for negative steps, Python to -1: avoid it
        start = draw(st.sampled_from([*range(-dim, dim), I64_MAX]))
        end = draw(st.sampled_from([*range(-dim - 1, dim), -100, I64_MIN]))
    length = len(range(dim)[slice(start, end, step)])
    return (start, end, step, length) if length else (0, I64_MAX, 1, dim)


def _slice(draw, rng, b, t, shape):
    rank = len(shape)
    axes = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    new, params = list(shape), []
    for axis in axes:
        start, end, step, new[axis] = _slice_axis(draw, shape[axis])
        params.append((start, end, axis - rank if draw(st.booleans()) else axis, step))
    starts, ends, raw_axes, steps = (
        b.const(np.array(column, np.int64)) for column in zip(*params, strict=True)
    )
    return b.op("Slice", t, starts, ends, raw_axes, steps), new


BUILDERS = {
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "Add": lambda draw, rng, b, t, shape: _broadcast_constant(draw, rng, b, t, shape, "Add"),
    "Mul": lambda draw, rng, b, t, shape: _broadcast_constant(draw, rng, b, t, shape, "Mul"),
    "Relu": lambda draw, rng, b, t, shape: (b.op("Relu", t), shape),
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Slice": _slice,
}


@st.composite
def chains(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = [1, draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5))]
    b = GraphBuilder()
    t = b.input("x", F32, shape)
    op_types = draw(st.lists(st.sampled_from(DRAWN_OPS), min_size=1, max_size=8))
    note(f"input {shape}, ops {op_types}")
    for op_type in op_types:
        t, shape = BUILDERS[op_type](draw, rng, b, t, shape)
    if t.producer() is None:
        t = b.op("Relu", t)
    return b.build([t])


def _check(before, after):
    verify(after, full=True)
    assert_equivalent(before, after, rtol=1e-5, seeds=(0,))


@SETTINGS
@given(chains())
def test_random_chains_survive_every_pass_and_the_all_pipeline(model):
    verify(model, full=True)
    optimized, _ = optimize_model(model, level="all", verify=False)
    _check(model, optimized)
    for pass_cls in (MoveSlicesUpPass, FoldConstantChainsPass):
        after, _ = run_pass(pass_cls(), model)
        _check(model, after)
        _, again = run_pass(pass_cls(), after)
        assert again is False, f"{pass_cls.name} is not idempotent"


@pytest.mark.parametrize("seed", range(3))
def test_reordering_then_the_pipeline_on_a_fixed_chain(seed):
    # A deterministic witness that the property test's pieces connect (no hypothesis database).
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 6, 6])
    t = b.op("Conv", x, b.const(rng.standard_normal((4, 3, 3, 3)).astype(np.float32)), pads=[1] * 4)
    t = b.op("Mul", t, b.const(rng.standard_normal((4, 1, 1)).astype(np.float32)))
    t = b.op("Add", t, b.const(rng.standard_normal((4, 1, 1)).astype(np.float32)))
    t = b.op("Relu", t)
    t = b.op("Slice", t, *(b.const(np.array(v, np.int64)) for v in ([-1], [I64_MIN], [-1], [-2])))
    model = b.build([t])
    for pass_cls in (MoveSlicesUpPass, FoldConstantChainsPass):
        _check(model, run_pass(pass_cls(), model)[0])
    _check(model, optimize_model(model, level="all", verify=False)[0])
