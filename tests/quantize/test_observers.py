"""Streaming observers against known distributions (pure numpy, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.quantize.observers import HistogramObserver, MinMaxObserver


def _fed(values: np.ndarray, batches: int = 10, bins: int = 2048) -> HistogramObserver:
    observer = HistogramObserver(bins)
    for chunk in np.array_split(values, batches):
        observer.update(chunk)
    return observer


def test_minmax_keeps_the_running_extremes():
    observer = MinMaxObserver()
    for values in ([1.0, 2.0], [-3.0, 0.5], [7.0]):
        observer.update(np.array(values))
    assert observer.range() == (-3.0, 7.0)


def test_an_observer_that_saw_nothing_refuses_to_give_a_range():
    for observer in (MinMaxObserver(), HistogramObserver()):
        with pytest.raises(ValueError, match="no values observed"):
            observer.range()
    with pytest.raises(ValueError, match="no values observed"):
        HistogramObserver().entropy()


@pytest.mark.parametrize("observer_class", [MinMaxObserver, HistogramObserver])
def test_state_size_does_not_grow_with_the_number_of_samples(observer_class):
    rng = np.random.default_rng(0)
    few, many = observer_class(), observer_class()
    few.update(rng.standard_normal(100))
    size = few.state_nbytes
    for i in range(300):  # a growing range forces repeated re-binning
        many.update(rng.standard_normal(1000) * (1 + i / 10))
    assert many.state_nbytes == size


def test_histogram_rebinning_is_exact():
    """Old bins nest in new ones: the streamed counts equal binning all data on the final grid."""
    rng = np.random.default_rng(1)
    batches = [
        rng.standard_normal(5000) * scale + shift for scale, shift in [(0.1, 0), (1, 2), (5, -10), (0.5, 40)]
    ]
    observer = HistogramObserver(512)
    for batch in batches:
        observer.update(batch)
    everything = np.concatenate(batches)
    direct, _ = np.histogram(everything, bins=observer.edges)
    assert observer.counts.sum() == everything.size
    # Values within float rounding of an edge may land one bin over; nothing else differs.
    assert np.abs(observer.counts - direct).sum() <= 4
    assert observer.range() == (everything.min(), everything.max())
    assert observer.edges[0] <= everything.min() and observer.edges[-1] >= everything.max()


def test_constant_and_zero_data_give_degenerate_but_valid_ranges():
    constant = _fed(np.full(100, 3.5))
    assert constant.range() == (3.5, 3.5)
    assert constant.percentile(99.9) == (3.5, 3.5)
    zeros = _fed(np.zeros(100))
    assert zeros.entropy() == (0.0, 0.0) and zeros.mse() == (0.0, 0.0)


def test_percentile_of_a_standard_normal():
    observer = _fed(np.random.default_rng(2).standard_normal(1_000_000))
    low, high = observer.percentile(99.9)
    assert low == pytest.approx(-3.090, abs=0.03) and high == pytest.approx(3.090, abs=0.03)
    low, high = observer.percentile(97.5)
    assert low == pytest.approx(-1.960, abs=0.02) and high == pytest.approx(1.960, abs=0.02)


def test_percentile_of_one_signed_data_starts_at_its_minimum():
    observer = _fed(np.random.default_rng(3).uniform(0, 10, 100_000))
    low, high = observer.percentile(99)
    assert 0 <= low < 0.2 and high == pytest.approx(9.9, abs=0.1)


def test_mse_clips_a_gaussian_and_a_laplacian_where_theory_says():
    """8-bit MSE-optimal clipping (Banner et al., ACIQ): about 4 sigma (Gaussian), 9.9 b (Laplace)."""
    rng = np.random.default_rng(4)
    gaussian = _fed(rng.standard_normal(1_000_000))
    low, high = gaussian.mse()
    assert 3.6 < high < 4.4 and low == -high
    laplace = _fed(rng.laplace(0, 1, 1_000_000))
    assert 9.0 < laplace.mse()[1] < 10.8


def test_mse_and_entropy_keep_the_whole_range_of_uniform_data():
    observer = _fed(np.random.default_rng(5).uniform(0, 1, 200_000))
    assert observer.mse()[1] > 0.97
    assert observer.entropy()[1] > 0.97


def test_entropy_ignores_rare_outliers():
    rng = np.random.default_rng(6)
    values = rng.standard_normal(1_000_000)
    values[:20] = 60.0  # 0.002 % outliers at 60 sigma
    observer = _fed(values)
    low, high = observer.entropy()
    assert observer.range()[1] == 60.0
    assert 3.0 < high < 15.0 and low == pytest.approx(-high)


def test_entropy_of_a_gaussian_lies_between_the_999th_percentile_and_the_max():
    observer = _fed(np.random.default_rng(7).standard_normal(1_000_000))
    high = observer.entropy()[1]
    assert observer.percentile(99.9)[1] < high <= observer.range()[1]


def test_one_signed_ranges_never_go_below_the_data():
    observer = _fed(np.abs(np.random.default_rng(8).standard_normal(100_000)))
    for low, high in (observer.entropy(), observer.mse(), observer.percentile(99.99)):
        assert low >= 0.0 and high > 2.0


def test_entropy_leaves_exact_zeros_out():
    """A ReLU's spike of exact zeros does not move the threshold (see observers' docstring)."""
    rng = np.random.default_rng(9)
    positive = np.abs(rng.standard_normal(400_000))
    with_zeros = np.concatenate([positive, np.zeros(400_000)])
    rng.shuffle(with_zeros)
    low, high = _fed(with_zeros).entropy()
    assert low == 0.0 and high == pytest.approx(_fed(positive).entropy()[1], rel=0.1)
    assert high > 4.0  # counted as data, the zeros pulled it down to 1.9


def test_a_range_that_grows_by_many_orders_of_magnitude():
    observer = HistogramObserver(256)
    observer.update(np.zeros(10))  # a constant first batch: a tiny grid
    observer.update(np.array([-1e12, 3e15]))
    assert observer.counts.sum() == 12
    assert observer.range() == (-1e12, 3e15)
    assert observer.edges[0] <= -1e12 and observer.edges[-1] >= 3e15
