"""Pure statistics of a benchmark: latency percentiles, throughput and ratios to a baseline.

Kept free of onnxruntime and timing so that tests can feed it made-up timings and check every
number by hand. Percentiles use numpy's default (linear interpolation between the two closest
ranks, "type 7" of Hyndman & Fan), so p50 of an even count is the mean of the middle two.
"""

from __future__ import annotations

import collections.abc
import dataclasses

import numpy as np

from modelpress.errors import UsageError

__all__ = ["LatencyStats", "latency_stats", "ratio"]


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Latency of one run of a model (a batch of ``batch`` samples), in milliseconds.

    Attributes:
        p50_ms: Median latency.
        p90_ms: 90th percentile.
        p99_ms: 99th percentile.
        mean_ms: Mean latency.
        min_ms: Fastest run.
        max_ms: Slowest run.
        throughput: Samples per second: ``batch * runs / total seconds``.
        runs: Number of timed runs.
    """

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    throughput: float
    runs: int

    def to_json(self) -> dict[str, float | int]:
        """The statistics as a JSON-ready dict (same keys as the attributes)."""
        return dataclasses.asdict(self)


def latency_stats(seconds: collections.abc.Sequence[float], batch: int) -> LatencyStats:
    """Summarize the wall times of timed runs, each processing ``batch`` samples.

    Args:
        seconds: Wall time of each run, in seconds.
        batch: Samples per run (the batch size), for throughput.

    Raises:
        UsageError: no timings, a negative timing, or a batch size below 1.
    """
    if len(seconds) == 0:
        raise UsageError("no timed runs to summarize; give --runs 1 or more")
    if batch < 1:
        raise UsageError(f"batch size {batch} must be 1 or more")
    times_ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if (times_ms < 0).any():
        raise UsageError(
            f"negative run time {times_ms.min():.3f} ms; timings must come from a monotonic clock"
        )
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    total_s = float(times_ms.sum()) / 1e3
    return LatencyStats(
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(times_ms.mean()),
        min_ms=float(times_ms.min()),
        max_ms=float(times_ms.max()),
        # A zero total only comes from a clock too coarse for the run: report infinity honestly.
        throughput=batch * len(times_ms) / total_s if total_s > 0 else float("inf"),
        runs=len(times_ms),
    )


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or None when either is unknown or the baseline is zero."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline
