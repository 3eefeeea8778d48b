"""Weight sharing: codebook sizes, exact zeros, error vs bits, k-means on a known mixture."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from modelpress.compress import share_weights
from modelpress.compress.prune import prune_array
from modelpress.compress.sharing import kmeans_1d


def _weights(n=20_000, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n // 100, 100)).astype(dtype)


@pytest.mark.parametrize("bits", range(1, 9))
def test_at_most_two_to_the_bits_distinct_nonzero_values_and_zeros_stay_zero(bits):
    array = prune_array(_weights(), 0.6)
    sharing = share_weights(array, bits)
    decoded = sharing.decode()
    assert decoded.shape == array.shape and decoded.dtype == array.dtype
    assert sharing.codebook.size <= 2**bits
    assert len(np.unique(decoded[decoded != 0])) <= 2**bits
    np.testing.assert_array_equal(decoded == 0, array == 0)
    # decode() is codebook[indices] scattered at the kept positions
    expected = np.zeros(array.size, np.float32)
    expected[sharing.positions] = sharing.codebook[sharing.indices]
    np.testing.assert_array_equal(decoded.reshape(-1), expected)
    # every value went to its nearest centroid
    kept = array.reshape(-1)[sharing.positions]
    nearest = np.abs(kept[:, None] - sharing.codebook[None, :]).min(axis=1)
    np.testing.assert_allclose(np.abs(kept - decoded.reshape(-1)[sharing.positions]), nearest, atol=1e-6)


def test_error_shrinks_as_bits_grow():
    array = _weights()
    errors = [float(np.mean((share_weights(array, bits).decode() - array) ** 2)) for bits in range(1, 9)]
    assert all(later < earlier for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-4


def test_kmeans_finds_the_centers_of_a_known_mixture():
    rng = np.random.default_rng(1)
    centers = np.array([-4.0, 1.0, 6.0])
    values = np.concatenate([rng.normal(c, 0.1, 5000) for c in centers])
    centroids, iterations = kmeans_1d(np.sort(values), 3)
    np.testing.assert_allclose(centroids, centers, atol=0.01)
    assert iterations < 1000  # converged: no value changed cluster


def test_float16_weights_decode_in_float16():
    array = _weights(dtype=np.float16)
    sharing = share_weights(array, 5)
    assert sharing.decode().dtype == np.float16
    # Counted in float32: np.unique on float16 returns duplicates in numpy 2.4 (hash-based unique).
    assert len(np.unique(sharing.decode().astype(np.float32))) <= 32


def test_two_million_values_complete():
    sharing = share_weights(_weights(2_000_000), 8)
    assert sharing.indices.size == 2_000_000 and sharing.iterations <= 1000


def test_all_zero_and_constant_tensors():
    assert share_weights(np.zeros((4, 4), np.float32), 5).decode().tolist() == np.zeros((4, 4)).tolist()
    constant = np.full((3, 3), 0.25, np.float32)
    np.testing.assert_array_equal(share_weights(constant, 5).decode(), constant)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_an_already_shared_tensor_round_trips_exactly(bits, dtype):
    # Values k-means would merge: a tight group far from the rest (linear init leaves the
    # centroids between them empty), plus zeros that must stay zeros.
    rng = np.random.default_rng(bits)
    values = np.concatenate([[-3.0], 0.1 + 1e-3 * np.arange(2**bits - 2), [2.5]])[: 2**bits]
    array = np.where(rng.random(5000) < 0.7, 0.0, rng.choice(values, 5000)).astype(dtype).reshape(50, 100)
    sharing = share_weights(array, bits)
    assert sharing.iterations == 0
    assert sharing.decode().tobytes() == array.tobytes()
    np.testing.assert_array_equal(sharing.codebook, np.unique(array[array != 0]).astype(np.float32))
    # sharing is idempotent: a decoded tensor is its own codebook
    again = share_weights(sharing.decode(), bits)
    assert again.decode().tobytes() == array.tobytes() and again.iterations == 0


def test_one_value_more_than_the_codebook_still_clusters():
    array = np.arange(1, 2**5 + 2, dtype=np.float32)  # 33 distinct values, 5 bits
    sharing = share_weights(array, 5)
    assert sharing.iterations > 0 and sharing.codebook.size == 32
    assert len(np.unique(sharing.decode())) <= 32
