"""Scale each hidden channel by a random positive factor, undone by the next layer's weights.

Before -> after (``s`` random per-channel factors in ``[low, high]``, here of a Conv pair)::

    h = Conv(x, W1, B1)        h' = Conv(x, W1 * s[:, None, None, None], B1 * s)
    a = Relu(h)                a' = Relu(h')
    y = Conv(a, W2, B2)        y  = Conv(a', W2 / s[None, :, None, None], B2)

Math: the producer's channel ``c`` becomes ``h'_c = s_c h_c``. An op ``f`` lets the factor
through when it is positively homogeneous, ``f(s x) = s f(x)`` for every ``s > 0``:

* Relu, LeakyRelu, PRelu (``max(s x, a s x) = s max(x, a x)``), Identity, Abs, Neg;
* MaxPool, AveragePool, LpPool and their Global forms (maxima, means and p-norms of ``s x``);
* Clip with no bound but 0 and +-infinity (``max(s x, 0) = s max(x, 0)``);
* BatchNormalization with ``mean' = s mean`` and ``bias' = s bias``:
  ``g (s x - s m) / sqrt(v + eps) + s b = s BN(x)`` (``eps`` untouched, so exact);
* depthwise Conv with ``B' = s B``; Add/Sub of two group tensors (``s x + s y``) or of a
  constant ``t' = s t`` (a scalar ``t`` becomes a per-channel vector); Mul/Div by a constant;
* Flatten(axis=1) of ``[N, C, 1, ...]`` and Slice along other axes (they move no value).

A consumer divides its input-channel weights by ``s``: ``W2[:, c] / s_c * s_c h_c``. Not
homogeneous, and refused: Clip with a finite non-zero bound (ReLU6: ``min(s x, 6) != s min(x, 6)``),
Sigmoid, Tanh, Erf (GELU), the other activations, ``x * y`` and ``x / y`` of group tensors
(``s^2``, ``s^0``), ``k / x``. These groups may still be permuted (``permute_channels``).
Also refused: whatever ``permute_channels`` refuses (see ``modelpress.channels.groups``).

Factors are log-uniform in ``[low, high]`` (so ``s`` and ``1/s`` are equally likely when
``low = 1/high``), drawn per group from ``numpy.random.default_rng(seed)`` in graph order.
New weights are computed in float64 and rounded once to their dtype: each rescaled product
``W1 s`` and ``W2 / s`` adds one rounding (about 6e-8 relative in fp32, far inside 1e-5;
about 5e-4 in fp16, inside fp16's 1e-3). Permutation, by contrast, rounds nothing.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import onnx_ir as ir

from modelpress.channels.groups import find_channel_groups
from modelpress.channels.ops import Role, Site
from modelpress.channels.sites import rewrite_sites
from modelpress.errors import UsageError
from modelpress.passes.base import ModelpressPass

__all__ = ["RescaleChannelsPass", "rescaled"]

logger = logging.getLogger(__name__)


def rescaled(array: np.ndarray, site: Site, scales: np.ndarray) -> np.ndarray:
    """``array`` (as float64) times ``scales`` (role SCALE) or over them (UNSCALE) along ``site.axis``.

    A broadcast constant with one entry along the axis, or too few dims to have it, is
    expanded to one entry per channel (``Add(x, 0.1)`` becomes ``Add(x, 0.1 * s)``).
    """
    if site.role is Role.KEEP:
        return array
    work = array.astype(np.float64)
    if site.axis < 0 and work.ndim < -site.axis:
        work = work.reshape((1,) * (-site.axis - work.ndim) + work.shape)
    shape = [1] * work.ndim
    shape[site.axis] = len(scales)
    factor = scales if site.role is Role.SCALE else 1.0 / scales
    return work * factor.reshape(shape)


class RescaleChannelsPass(ModelpressPass):
    """Scale hidden channels by random positive factors folded into the weights.

    Args:
        seed: Seed of the factors; the same seed gives the same model.
        low: The smallest factor (> 0).
        high: The largest factor (>= ``low``).

    Raises:
        UsageError: ``low`` or ``high`` is not a finite positive number, or ``low > high``.
    """

    name = "rescale-channels"
    summary = "scale hidden channels by random positive factors across ReLU/pooling (no runtime cost)"

    def __init__(self, seed: int, low: float = 0.5, high: float = 2.0) -> None:
        if not (0 < low <= high and math.isfinite(high)):
            raise UsageError(f"rescale factors need 0 < low <= high < inf, got low={low}, high={high}")
        self.seed = seed
        self.low = low
        self.high = high

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, low={self.low}, high={self.high})"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Draw factors for each homogeneous group and rewrite the group's constants."""
        rng = np.random.default_rng(self.seed)
        rescaled_groups = 0
        for group in find_channel_groups(model.graph):
            if not group.can_rescale():
                reason = group.refusal or group.not_homogeneous
                logger.debug("rescale-channels: group '%s' left alone: %s", group.label, reason)
                continue
            scales = np.exp(rng.uniform(math.log(self.low), math.log(self.high), group.channels))
            changed = rewrite_sites(model.graph, group.sites, functools.partial(rescaled, scales=scales))
            rescaled_groups += changed > 0
        if rescaled_groups:
            logger.info("rescale-channels: %d channel groups rescaled", rescaled_groups)
        return ir.passes.PassResult(model, rescaled_groups > 0)
