"""Small graphs and assertions shared by the obfuscation tests."""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir

from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from tests.testing import assert_equivalent, ops, run_pass

F32 = ir.DataType.FLOAT
C = 8  # hidden channels of the small graphs
RNG = np.random.default_rng(0)

Middle = collections.abc.Callable[[GraphBuilder, ir.Value], ir.Value]


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def positive(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 1.5, shape).astype(np.float32)


def batchnorm(b: GraphBuilder, h: ir.Value, c: int = C, name: str = "bn") -> ir.Value:
    return b.op(
        "BatchNormalization",
        h,
        b.const(positive(c), f"{name}.scale"),
        b.const(rand(c), f"{name}.bias"),
        b.const(rand(c), f"{name}.mean"),
        b.const(positive(c), f"{name}.var"),
    )


def conv_pair(middle: Middle, *, c_out: int = 4, extra_outputs: bool = False) -> ir.Model:
    """x[2,3,8,8] -> Conv(w1, b1) -> middle -> Conv(w2, b2) -> y; ``extra_outputs`` also outputs the hidden tensor."""
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = b.op("Conv", x, b.const(rand(C, 3, 3, 3), "w1"), b.const(rand(C), "b1"), pads=[1, 1, 1, 1])
    h = middle(b, h)
    y = b.op("Conv", h, b.const(rand(c_out, C, 3, 3), "w2"), b.const(rand(c_out), "b2"), pads=[1, 1, 1, 1])
    return b.build([y, h] if extra_outputs else [y])


def weight(model: ir.Model, name: str) -> np.ndarray:
    """The array of the initializer ``name``."""
    return model.graph.initializers[name].const_value.numpy()  # type: ignore[union-attr]


def node_input(model: ir.Model, node_name: str, index: int) -> np.ndarray:
    """The constant at input ``index`` of node ``node_name`` (follows renamed private copies)."""
    node = next(n for n in model.graph if n.name == node_name)
    return node.inputs[index].const_value.numpy()  # type: ignore[union-attr]


def assert_transforms(pass_: ir.passes.PassBase, model: ir.Model, *, rtol: float = 1e-5) -> ir.Model:
    """The pass changes ``model`` (on a clone), keeps every op count, stays valid and equivalent."""
    verify(model, full=True)
    after, changed = run_pass(pass_, model)
    assert changed is True
    assert ops(after) == ops(model)
    verify(after, full=True)
    assert_equivalent(model, after, rtol=rtol)
    return after


def recovered_order(before: np.ndarray, after: np.ndarray, axis: int = 0) -> np.ndarray:
    """The ``p`` with ``after == take(before, p, axis)`` (rows are distinct random vectors)."""
    old = np.moveaxis(before, axis, 0).reshape(before.shape[axis], -1)
    new = np.moveaxis(after, axis, 0).reshape(after.shape[axis], -1)
    order = np.array([int(np.flatnonzero((old == row).all(axis=1))[0]) for row in new])
    np.testing.assert_array_equal(np.take(before, order, axis=axis), after)
    return order


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two tensors of one shape, flattened."""
    return float(np.corrcoef(a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1))[0, 1])
