"""Property test: random CNN chains stay equivalent under channel permutation and rescaling."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from modelpress.protect.obfuscate import PermuteChannelsPass, RescaleChannelsPass, find_channel_groups
from tests.protect.obfuscate.helpers import F32, batchnorm
from tests.testing import assert_equivalent, ops, run_pass

C = 6
# Each op keeps [N, C, 6, 6]: (name, builder). "block" is a residual Conv-Relu-Conv + Add.
OPS = {
    "Relu": lambda b, h, rng: b.op("Relu", h),
    "LeakyRelu": lambda b, h, rng: b.op("LeakyRelu", h, alpha=0.1),
    "Sigmoid": lambda b, h, rng: b.op("Sigmoid", h),
    "ReLU6": lambda b, h, rng: b.op("Clip", h, b.const(np.float32(0)), b.const(np.float32(6))),
    "BatchNormalization": lambda b, h, rng: batchnorm(b, h, C, name=f"bn{len(b.nodes)}"),
    "Mul": lambda b, h, rng: b.op("Mul", h, b.const(rng.uniform(0.5, 1.5, (C, 1, 1)).astype(np.float32))),
    "Add": lambda b, h, rng: b.op("Add", h, b.const(np.float32(rng.normal()))),
    "MaxPool": lambda b, h, rng: b.op("MaxPool", h, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "depthwise": lambda b, h, rng: b.op("Conv", h, _w(b, rng, C, 1, 3), group=C, pads=[1, 1, 1, 1]),
    "Conv": lambda b, h, rng: b.op(
        "Conv", h, _w(b, rng, C, C, 1), b.const(rng.normal(size=C).astype(np.float32))
    ),
    "block": lambda b, h, rng: b.op(
        "Add",
        h,
        b.op(
            "Conv", b.op("Relu", b.op("Conv", h, _w(b, rng, C, C, 3), pads=[1, 1, 1, 1])), _w(b, rng, C, C, 1)
        ),
    ),
}


def _w(b: GraphBuilder, rng: np.random.Generator, c_out: int, c_in: int, k: int) -> ir.Value:
    return b.const((rng.normal(size=(c_out, c_in, k, k)) / np.sqrt(c_in * k * k)).astype(np.float32))


def _chain(names: list[str], head: str, seed: int) -> ir.Model:
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 6, 6])
    h = b.op("Conv", x, _w(b, rng, C, 3, 3), pads=[1, 1, 1, 1])
    for name in names:
        h = OPS[name](b, h, rng)
    if head == "gemm":
        h = b.op("Flatten", b.op("GlobalAveragePool", h))
        y = b.op("Gemm", h, b.const(rng.normal(size=(4, C)).astype(np.float32)), transB=1)
    else:
        y = b.op("Conv", h, _w(b, rng, 4, C, 1))
    return b.build([y])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(st.sampled_from(sorted(OPS)), min_size=0, max_size=6),
    head=st.sampled_from(["gemm", "conv"]),
    seed=st.integers(0, 2**16),
)
def test_random_chains_stay_equivalent(names, head, seed):
    model = _chain(names, head, seed)
    groups = find_channel_groups(model.graph)
    assert all(g.refusal is None for g in groups[:-1]), [g.refusal for g in groups]  # all but the head
    for pass_, expected in (
        (PermuteChannelsPass(seed), any(g.can_permute() for g in groups)),
        (RescaleChannelsPass(seed), any(g.can_rescale() for g in groups)),
    ):
        after, changed = run_pass(pass_, model)
        assert changed is expected
        assert ops(after) == ops(model)
        verify(after)
        assert_equivalent(model, after, rtol=1e-5, seeds=(seed,))
