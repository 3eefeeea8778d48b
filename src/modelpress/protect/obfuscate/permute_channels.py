"""Relabel the hidden channels of every channel group by a random permutation.

Before -> after (``p`` a random permutation of the C hidden channels, here of a Conv pair)::

    h = Conv(x, W1, B1)                          h' = Conv(x, W1[p], B1[p])
    a = Relu(BatchNormalization(h, g, b, m, v))  a' = Relu(BatchNormalization(h', g[p], b[p], m[p], v[p]))
    y = Conv(a, W2, B2)                          y  = Conv(a', W2[:, p], B2)

Math: a producer's output channel ``j`` becomes its old channel ``p[j]`` (``W1'[j] = W1[p[j]]``),
so every hidden tensor is ``h'[:, j] = h[:, p[j]]``; a channel-wise op ``f`` with per-channel
constants ``k`` gives ``f(h', k[p]) = f(h, k)[:, p]``; a consumer sums over the channels, and
``sum_j W2[:, p[j]] h'[:, j] = sum_c W2[:, c] h[:, c]``, so its output is unchanged. The graph,
its op counts and its shapes stay the same: onnxruntime runs the same kernels, at no extra
cost. Results differ from the original only by the order of the consumers' fp32 sums (about
1e-7 relative); the weights themselves are moved, never rounded.

Groups are found by ``modelpress.channels.groups``: a residual Add joins everything it adds into one
group, so a whole ResNet stage is permuted at once. ``p`` is a derangement (no channel keeps
its index), drawn per group from ``numpy.random.default_rng(seed)`` in graph order, so the
same seed on the same model gives the same result, and no weight row stays in its place.
A random relabelling leaves a tensor of n entries correlated with its original by about
``1/sqrt(n)`` by chance (0.05 for a 16x3x3x3 stem): the pass draws up to ``max_draws``
derangements and keeps the first whose weight tensors all correlate by at most ``target``
(else the least correlated), so that a small layer does not stay recognizable by luck.

Refused (the group is left untouched, the reason logged at debug level): channels that reach
a graph input or output, or an op that mixes them (Concat, Reshape, Transpose, Softmax,
LayerNormalization, Flatten of a spatial map, a grouped Conv that is not depthwise, MatMul or
Gemm reading them on another axis), nodes in subgraphs, non-constant or non-float weights,
and weights shared with other nodes. Groups of one channel have nothing to permute.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import onnx_ir as ir

from modelpress.channels.groups import find_channel_groups
from modelpress.channels.ops import Kind, Site, constant_array
from modelpress.channels.sites import rewrite_sites
from modelpress.passes.base import ModelpressPass

__all__ = ["PermuteChannelsPass", "derangement", "permuted"]

logger = logging.getLogger(__name__)


def derangement(rng: np.random.Generator, size: int) -> np.ndarray:
    """A uniformly random permutation of ``range(size)`` with no fixed point (``size >= 2``)."""
    if size < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {size}")
    identity = np.arange(size)
    while True:  # about e ~ 2.7 draws on average
        order = rng.permutation(size)
        if not np.any(order == identity):
            return order


def permuted(array: np.ndarray, site: Site, order: np.ndarray, channels: int | None = None) -> np.ndarray:
    """``array`` with its entries along ``site.axis`` taken in ``order``.

    ``channels`` is the group's channel count (default ``len(order)``: ``order`` is a
    permutation); an ``order`` of fewer distinct indices keeps only those channels (structured
    pruning, ``compress.structured``). A broadcast constant with one entry (or no axis) there
    is the same for every channel and is returned as is.
    """
    expected = len(order) if channels is None else channels
    if not -array.ndim <= site.axis < array.ndim or array.shape[site.axis] != expected:
        return array
    return np.take(array, order, axis=site.axis)


class PermuteChannelsPass(ModelpressPass):
    """Permute the hidden channels of every channel group (weights moved, function unchanged).

    Args:
        seed: Seed of the permutations; the same seed gives the same model.
        target: Stop drawing once every weight tensor of the group correlates with its
            original by at most this much (absolute Pearson correlation, flattened).
        max_draws: Derangements drawn at most per group; the least correlated one is kept.
    """

    name = "permute-channels"
    summary = "relabel hidden channels by a random permutation folded into the weights (no runtime cost)"

    def __init__(self, seed: int, *, target: float = 0.05, max_draws: int = 16) -> None:
        self.seed = seed
        self.target = target
        self.max_draws = max(1, max_draws)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, target={self.target}, max_draws={self.max_draws})"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Draw a derangement per group that can be permuted and rewrite the group's constants."""
        rng = np.random.default_rng(self.seed)
        originals: dict[tuple[ir.Node, int], np.ndarray] = {}
        permuted_groups = 0
        for group in find_channel_groups(model.graph):
            if not group.can_permute():
                logger.debug("permute-channels: group '%s' left alone: %s", group.label, group.refusal)
                continue
            weights = [site for site in group.sites if site.kind is Kind.WEIGHT]
            for site in weights:
                originals.setdefault((site.node, site.index), _current(site))
            order = self._draw(rng, group.channels, weights, originals)
            changed = rewrite_sites(model.graph, group.sites, functools.partial(permuted, order=order))
            permuted_groups += changed > 0
        if permuted_groups:
            logger.info("permute-channels: %d channel groups permuted", permuted_groups)
        return ir.passes.PassResult(model, permuted_groups > 0)

    def _draw(
        self,
        rng: np.random.Generator,
        channels: int,
        weights: list[Site],
        originals: dict[tuple[ir.Node, int], np.ndarray],
    ) -> np.ndarray:
        """The least correlated of up to ``max_draws`` derangements (the first under ``target``)."""
        best, best_score = derangement(rng, channels), math.inf
        for draw in range(self.max_draws):
            order = best if draw == 0 else derangement(rng, channels)
            # A weight may hold two sites of the group (a Conv reading and writing one stream).
            moved: dict[tuple[ir.Node, int], np.ndarray] = {}
            for site in weights:
                key = (site.node, site.index)
                moved[key] = permuted(moved.get(key, _current(site)), site, order)
            scores = [_abs_correlation(originals[key], array) for key, array in moved.items()]
            score = max(scores, default=0.0)
            if score < best_score:
                best, best_score = order, score
            if best_score <= self.target:
                break
        return best


def _current(site: Site) -> np.ndarray:
    array = constant_array(site.node.inputs[site.index])
    assert array is not None, "sites are checked before they are rewritten"
    return array


def _abs_correlation(original: np.ndarray, moved: np.ndarray) -> float:
    """|Pearson correlation| of two tensors of one shape, flattened (0 for constant tensors)."""
    a = original.astype(np.float64).reshape(-1)
    b = moved.astype(np.float64).reshape(-1)
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a @ a) * (b @ b)))
    return abs(float(a @ b)) / norm if norm > 0 else 0.0
