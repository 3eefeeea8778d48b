"""The server's counters and histograms, exposed in the Prometheus text format (version 0.0.4).

Hand-written rather than ``prometheus_client``: three families do not justify a dependency and
its process-global registry (two apps in one process, as in the tests, must not share counts).
Every update takes one lock, since model runs record batch sizes from the worker thread.
"""

from __future__ import annotations

import bisect
import collections
import threading

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS_S", "ServerMetrics"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    """Cumulative-bucket histogram as Prometheus defines it (``le`` upper bounds, plus ``+Inf``)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            label = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{label}"}} {running}')
        return [*out, f"{name}_sum {self.total:.9g}", f"{name}_count {running}"]


class ServerMetrics:
    """Request counts by route and status, predict latency, rows per model run, inference errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self._latency = _Histogram(LATENCY_BUCKETS_S)
        self._batch = _Histogram(BATCH_BUCKETS)
        self._inference_errors = 0

    def record_request(self, route: str, status: int, seconds: float | None) -> None:
        """Count one response; ``seconds`` (predict only) goes to the latency histogram."""
        with self._lock:
            self._requests[route, status] += 1
            if seconds is not None:
                self._latency.observe(seconds)

    def record_batch(self, rows: int) -> None:
        """Record one model run of ``rows`` rows."""
        with self._lock:
            self._batch.observe(rows)

    def record_inference_error(self) -> None:
        """Count one request that failed inside inference (answered 500)."""
        with self._lock:
            self._inference_errors += 1

    def render(self) -> str:
        """The metrics in the Prometheus text exposition format."""
        with self._lock:
            lines = [
                "# HELP modelpress_requests_total HTTP responses by route and status code.",
                "# TYPE modelpress_requests_total counter",
            ]
            for (route, status), count in sorted(self._requests.items()):
                lines.append(f'modelpress_requests_total{{route="{route}",code="{status}"}} {count}')
            lines += [
                "# HELP modelpress_request_duration_seconds Latency of POST /v1/predict.",
                "# TYPE modelpress_request_duration_seconds histogram",
                *self._latency.lines("modelpress_request_duration_seconds"),
                "# HELP modelpress_batch_size Rows per model run (micro-batches included).",
                "# TYPE modelpress_batch_size histogram",
                *self._batch.lines("modelpress_batch_size"),
                "# HELP modelpress_inference_errors_total Requests that failed inside inference.",
                "# TYPE modelpress_inference_errors_total counter",
                f"modelpress_inference_errors_total {self._inference_errors}",
            ]
        return "\n".join(lines) + "\n"
