"""Weight sharing (Deep Compression, stage 2): 1-D k-means per tensor, post-training.

Han et al. 2016 ("Deep Compression", §3) replace the weights of a layer by ``2**bits`` shared
values (centroids): each weight then costs a ``bits``-bit index into the layer's codebook. The
paper fine-tunes the centroids afterwards ("trained quantization"); this slice does not train
(no fine-tuning, no data): the centroids are the k-means centroids of the trained weights.

The clustering is plain Lloyd's algorithm in one dimension, which allows an exact vectorized
form: the values are sorted once; with sorted centroids every cluster is a contiguous run of
the sorted values, whose bounds are ``searchsorted(values, midpoints)``, and whose sums come
from one cumulative sum. An iteration therefore costs ``O(k log n)``, not ``O(n k)``, and a
10 M-value tensor is dominated by the one sort. Initialization is linear over ``[min, max]``,
which the paper found best (it keeps centroids on the rare large weights that matter most).

Exact zeros (pruned weights) are not clustered: they stay exact zeros and cost no centroid.

A tensor whose non-zero values already number at most ``2**bits`` (one that ``finetune.py``
shared and fine-tuned in torch, or one this module shared before) is not clustered again: its
distinct values are the codebook, so it round-trips exactly. k-means would be free to merge
two of them (linear initialization can leave a value's nearest centroid empty) or to move a
centroid off a value, which would undo the fine-tuning.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "DEFAULT_CONV_BITS",
    "DEFAULT_EMBEDDING_BITS",
    "DEFAULT_FC_BITS",
    "SharedWeights",
    "kmeans_1d",
    "share_weights",
]

# The paper's choices for AlexNet/VGG: 8 bits for convolutions, 5 bits for fully-connected layers.
DEFAULT_CONV_BITS = 8
DEFAULT_FC_BITS = 5
# Embedding tables (Gather): not in the paper. On MiniLM (fc 5 bits) 8-bit tables give sentence
# cosine 0.9811 vs 0.9792 with 5-bit ones, for 1.9 MiB more (13.98 vs 12.04 MiB, of 86 MiB).
DEFAULT_EMBEDDING_BITS = 8
# Lloyd iterations stop as soon as no value changes cluster: 20-400 on real weights, each
# O(k log n), so the cap only guards against a cycle caused by rounding.
_MAX_ITERATIONS = 1000


@dataclasses.dataclass(frozen=True)
class SharedWeights:
    """A weight tensor as a codebook plus one index per non-zero value.

    Attributes:
        codebook: float32 centroids, sorted ascending, at most ``2**bits`` of them.
        indices: uint8 index into ``codebook`` of each non-zero value, in flat (C) order.
        positions: int64 flat positions of the non-zero values, ascending.
        shape: The tensor's shape.
        dtype: The tensor's dtype (float32 or float16); the decoded values are the codebook
            cast to it.
        bits: The bits the codebook was sized for.
        iterations: Lloyd iterations run.
    """

    codebook: np.ndarray
    indices: np.ndarray
    positions: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    bits: int
    iterations: int

    @property
    def size(self) -> int:
        """Number of elements of the tensor."""
        return int(np.prod(self.shape, dtype=np.int64))

    def decode(self) -> np.ndarray:
        """The shared tensor: ``codebook[indices]`` scattered at ``positions``, zeros elsewhere."""
        out = np.zeros(self.size, dtype=self.dtype)
        out[self.positions] = self.codebook.astype(self.dtype)[self.indices]
        return out.reshape(self.shape)


def kmeans_1d(
    sorted_values: np.ndarray, clusters: int, *, max_iterations: int = _MAX_ITERATIONS
) -> tuple[np.ndarray, int]:
    """Lloyd's k-means on sorted 1-D values, initialized linearly over [min, max].

    Args:
        sorted_values: Ascending values (any float dtype); must not be empty.
        clusters: Number of centroids (>= 1).
        max_iterations: Upper bound on Lloyd iterations.

    Returns:
        (centroids as float64, ascending; iterations run). A centroid whose cluster empties
        keeps its previous position, so the count stays ``clusters``.
    """
    assert sorted_values.size > 0 and clusters >= 1  # callers never pass these
    lowest, highest = float(sorted_values[0]), float(sorted_values[-1])
    centroids = np.linspace(lowest, highest, clusters, dtype=np.float64)
    prefix = np.concatenate(([0.0], np.cumsum(sorted_values, dtype=np.float64)))
    bounds = np.full(clusters + 1, -1, dtype=np.int64)
    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (the count is returned)
        new_bounds = _cluster_bounds(sorted_values, centroids)
        if np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled]
        # Means of contiguous runs are ordered, and kept centroids sit between their
        # neighbours' runs; sorting guards against rounding ties only.
        centroids.sort()
    return centroids, iterations


def _cluster_bounds(sorted_values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Start of every cluster's run in ``sorted_values`` (and the end): nearest-centroid rule."""
    midpoints = ((centroids[:-1] + centroids[1:]) / 2).astype(sorted_values.dtype)
    # A value equal to a midpoint joins the upper cluster (as in share_weights' assignment).
    inner = np.searchsorted(sorted_values, midpoints, side="left")
    return np.concatenate(([0], inner, [sorted_values.size])).astype(np.int64)


def share_weights(array: np.ndarray, bits: int, *, max_iterations: int = _MAX_ITERATIONS) -> SharedWeights:
    """Cluster the non-zero values of ``array`` into at most ``2**bits`` shared values.

    Args:
        array: A float32 or float16 weight tensor (not modified).
        bits: 1 to 8; the codebook has ``2**bits`` centroids (some may coincide or go unused:
            harmless, the entropy coder ignores them). When the non-zero values number at
            most ``2**bits``, the codebook is exactly those values (no k-means, 0 iterations)
            and ``decode()`` returns ``array`` bit for bit (save that -0.0 becomes 0.0).
        max_iterations: Upper bound on Lloyd iterations.

    Returns:
        The codebook, indices and positions; ``decode()`` gives the shared tensor.
    """
    assert 1 <= bits <= 8 and array.dtype in (np.float32, np.float16)  # checked by callers
    flat = np.ascontiguousarray(array).reshape(-1)
    # Cluster in float32 (float16 widened): sorting float32 is twice as fast as float64.
    values32 = flat.astype(np.float32, copy=False)
    positions = np.flatnonzero(values32)
    kept = values32[positions]
    if kept.size == 0:
        codebook = np.zeros(0, dtype=np.float32)
        return SharedWeights(codebook, np.zeros(0, np.uint8), positions, array.shape, array.dtype, bits, 0)
    sorted_kept = np.sort(kept)
    distinct = sorted_kept[np.concatenate(([True], sorted_kept[1:] != sorted_kept[:-1]))]
    if distinct.size <= 2**bits:
        # Already shared: the values are the codebook (ascending, like k-means' centroids).
        indices = np.searchsorted(distinct, kept, side="left").astype(np.uint8)
        return SharedWeights(distinct, indices, positions, tuple(array.shape), array.dtype, bits, 0)
    centroids, iterations = kmeans_1d(sorted_kept, 2**bits, max_iterations=max_iterations)
    codebook = centroids.astype(np.float32)
    midpoints = ((centroids[:-1] + centroids[1:]) / 2).astype(np.float32)
    # Same rule as _cluster_bounds: a value equal to a midpoint joins the upper cluster.
    indices = np.searchsorted(midpoints, kept, side="right").astype(np.uint8)
    return SharedWeights(codebook, indices, positions, tuple(array.shape), array.dtype, bits, iterations)
