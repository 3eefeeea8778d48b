"""The pure statistics: percentiles and throughput on made-up timings, checked by hand."""

from __future__ import annotations

import pytest

from modelpress.benchmark import latency_stats, ratio
from modelpress.errors import UsageError


def test_percentiles_interpolate_linearly_between_ranks():
    # 1..100 ms: rank r (0-based) of percentile q is q/100 * 99.
    stats = latency_stats([ms / 1e3 for ms in range(1, 101)], batch=1)
    assert stats.p50_ms == pytest.approx(50.5)  # mean of the 50th and 51st
    assert stats.p90_ms == pytest.approx(90.1)  # 89.1 rank: 90 + 0.1 * (91 - 90)
    assert stats.p99_ms == pytest.approx(99.01)
    assert (stats.min_ms, stats.max_ms, stats.runs) == (pytest.approx(1.0), pytest.approx(100.0), 100)
    assert stats.mean_ms == pytest.approx(50.5)


def test_percentiles_do_not_depend_on_the_order_of_runs():
    times = [0.004, 0.001, 0.003, 0.002]
    assert latency_stats(times, 1) == latency_stats(sorted(times), 1)
    assert latency_stats(times, 1).p50_ms == pytest.approx(2.5)


def test_throughput_counts_samples_over_the_total_time():
    # 4 runs of 8 samples in 0.1 s in all -> 320 samples/s.
    stats = latency_stats([0.01, 0.02, 0.03, 0.04], batch=8)
    assert stats.throughput == pytest.approx(320.0)


def test_a_single_run_gives_equal_percentiles():
    stats = latency_stats([0.002], 1)
    assert stats.p50_ms == stats.p90_ms == stats.p99_ms == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("times", "batch", "message"),
    [([], 1, "no timed runs"), ([0.1], 0, "batch size 0"), ([-0.1], 1, "negative run time")],
)
def test_bad_input_is_refused(times, batch, message):
    with pytest.raises(UsageError, match=message):
        latency_stats(times, batch)


def test_ratio_is_none_without_a_usable_baseline():
    assert ratio(2.0, 4.0) == 0.5
    assert ratio(2.0, 0.0) is None
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
