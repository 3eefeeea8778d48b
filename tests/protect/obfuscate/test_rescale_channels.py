"""RescaleChannelsPass: factors land in the weights and cancel; non-homogeneous ops are refused."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.errors import UsageError
from modelpress.examples.cnn import build_example_cnn
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.protect.obfuscate import RescaleChannelsPass, find_channel_groups
from tests.protect.obfuscate.helpers import (
    F32,
    C,
    assert_transforms,
    batchnorm,
    conv_pair,
    positive,
    rand,
    weight,
)
from tests.testing import assert_refused, run_pass

RESCALE = RescaleChannelsPass(seed=11)


def _factors(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The per-output-channel factor ``s`` with ``after[c] = before[c] * s[c]`` (checked)."""
    ratios = (after.astype(np.float64) / before).reshape(len(before), -1)
    factors = ratios.mean(axis=1)
    np.testing.assert_allclose(ratios, factors[:, None] * np.ones_like(ratios), rtol=1e-6)
    return factors


def test_conv_bn_relu_pool_conv_scales_and_unscales():
    middle = lambda b, h: b.op("MaxPool", b.op("Relu", batchnorm(b, h)), kernel_shape=[2, 2], strides=[2, 2])  # noqa: E731
    model = conv_pair(middle)
    after = assert_transforms(RESCALE, model)
    s = _factors(weight(model, "w1"), weight(after, "w1"))
    assert np.all((s >= 0.5) & (s <= 2.0)) and np.ptp(s) > 0.1
    np.testing.assert_allclose(weight(after, "b1"), weight(model, "b1") * s, rtol=1e-6)
    np.testing.assert_allclose(weight(after, "bn.mean"), weight(model, "bn.mean") * s, rtol=1e-6)
    np.testing.assert_allclose(weight(after, "bn.bias"), weight(model, "bn.bias") * s, rtol=1e-6)
    for unchanged in ("bn.scale", "bn.var", "b2"):
        np.testing.assert_array_equal(weight(after, unchanged), weight(model, unchanged))
    np.testing.assert_allclose(weight(after, "w2"), weight(model, "w2") / s[None, :, None, None], rtol=1e-6)


@pytest.mark.parametrize(
    "middle",
    [
        pytest.param(lambda b, h: b.op("LeakyRelu", h, alpha=0.2), id="LeakyRelu"),
        pytest.param(lambda b, h: b.op("PRelu", h, b.const(rand(C, 1, 1))), id="PRelu"),
        pytest.param(lambda b, h: b.op("Clip", h, b.const(np.float32(0))), id="Clip-min-0"),
        pytest.param(
            lambda b, h: b.op("AveragePool", h, kernel_shape=[3, 3], pads=[1, 1, 1, 1]), id="AveragePool"
        ),
        pytest.param(lambda b, h: b.op("Mul", h, b.const(positive(C, 1, 1))), id="Mul-constant"),
        pytest.param(lambda b, h: b.op("Sub", b.const(rand(C, 8, 8)), h), id="Sub-from-constant"),
        pytest.param(lambda b, h: b.op("Add", h, b.op("Relu", h)), id="Add-of-group-tensors"),
        pytest.param(
            lambda b, h: b.op(
                "Conv",
                b.op("Relu", h),
                b.const(rand(C, 1, 3, 3)),
                b.const(rand(C), "dw_b"),
                group=C,
                pads=[1, 1, 1, 1],
            ),
            id="depthwise",
        ),
    ],
)
def test_homogeneous_ops_between_two_convs(middle):
    model = conv_pair(middle)
    after = assert_transforms(RESCALE, model)
    s = _factors(weight(model, "w1"), weight(after, "w1"))
    np.testing.assert_allclose(weight(after, "w2"), weight(model, "w2") / s[None, :, None, None], rtol=1e-6)


def test_scalar_add_becomes_a_per_channel_vector():
    model = conv_pair(lambda b, h: b.op("Relu", b.op("Add", h, b.const(np.float32(0.25), "shift"))))
    after = assert_transforms(RESCALE, model)
    s = _factors(weight(model, "w1"), weight(after, "w1"))
    assert weight(after, "shift").shape == (C, 1, 1)
    np.testing.assert_allclose(weight(after, "shift").reshape(-1), 0.25 * s, rtol=1e-6)


def test_gap_flatten_gemm_head_and_residual_stream():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = b.op("Relu", b.op("Conv", x, b.const(rand(C, 3, 1, 1), "stem")))
    h = b.op("Relu", b.op("Add", h, b.op("Conv", h, b.const(rand(C, C, 3, 3), "body"), pads=[1, 1, 1, 1])))
    h = b.op("Flatten", b.op("GlobalAveragePool", h))
    model = b.build([b.op("Gemm", h, b.const(rand(5, C), "fc"), b.const(rand(5), "fc_b"), transB=1)])
    after = assert_transforms(RESCALE, model)
    s = _factors(weight(model, "stem"), weight(after, "stem"))
    # body reads and writes the same stream: W'[o, i] = W[o, i] * s[o] / s[i]
    expected = weight(model, "body") * s[:, None, None, None] / s[None, :, None, None]
    np.testing.assert_allclose(weight(after, "body"), expected, rtol=1e-6)
    np.testing.assert_allclose(weight(after, "fc"), weight(model, "fc") / s[None, :], rtol=1e-6)


def test_example_cnn_is_equivalent():
    model = build_example_cnn()
    after = assert_transforms(RESCALE, model)
    assert not np.array_equal(weight(after, "stem.w"), weight(model, "stem.w"))


# --- refusals -------------------------------------------------------------------------------------

NOT_HOMOGENEOUS = {
    "ReLU6": lambda b, h: b.op("Clip", h, b.const(np.float32(0)), b.const(np.float32(6))),
    "Clip-min-negative": lambda b, h: b.op("Clip", h, b.const(np.float32(-1))),
    "Sigmoid": lambda b, h: b.op("Sigmoid", h),
    "Tanh": lambda b, h: b.op("Tanh", h),
    "x*y of group tensors": lambda b, h: b.op("Mul", h, b.op("Relu", h)),
    "k/x": lambda b, h: b.op("Div", b.const(positive(C, 1, 1)), b.op("Abs", h)),
}


@pytest.mark.parametrize("case", sorted(NOT_HOMOGENEOUS))
def test_non_homogeneous_ops_are_refused(case):
    model = conv_pair(NOT_HOMOGENEOUS[case])
    (group, _) = find_channel_groups(model.graph)
    assert group.can_permute() and not group.can_rescale() and group.not_homogeneous
    assert_refused(RESCALE, model)


def test_groups_refused_for_structure_are_refused_here_too():
    model = conv_pair(lambda b, h: b.op("Relu", h), extra_outputs=True)
    assert_refused(RESCALE, model)


@pytest.mark.parametrize("low, high", [(0.0, 2.0), (-1.0, 2.0), (2.0, 0.5), (0.5, float("inf"))])
def test_bad_factor_ranges_are_usage_errors(low, high):
    with pytest.raises(UsageError, match="0 < low <= high"):
        RescaleChannelsPass(seed=0, low=low, high=high)


def test_unit_factors_change_nothing():
    assert_refused(RescaleChannelsPass(seed=0, low=1.0, high=1.0), conv_pair(lambda b, h: b.op("Relu", h)))


def test_same_seed_gives_identical_bytes_and_different_seeds_differ():
    model = conv_pair(lambda b, h: b.op("Relu", h))
    first, _ = run_pass(RescaleChannelsPass(seed=5), model)
    again, _ = run_pass(RescaleChannelsPass(seed=5), model)
    other, _ = run_pass(RescaleChannelsPass(seed=6), model)
    assert io.to_bytes(first) == io.to_bytes(again)
    assert not np.array_equal(weight(first, "w1"), weight(other, "w1"))
