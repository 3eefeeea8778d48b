"""Benchmark models and deployment packages side by side on onnxruntime.

``benchmark_models(paths, batches=..., threads=..., runs=..., warmup=...)`` returns a
``BenchReport``: latency p50/p90/p99 and throughput per model, batch size and thread count, the
time split into pre-process / inference / post-process for packages, session load time, model
size, peak RSS and ratios to the first model; ``report.to_json()`` is its JSON form and
``write_html(report, path)`` a self-contained HTML report with plots. ``latency_stats`` is the
pure statistics on which every number rests.
"""

from __future__ import annotations

from modelpress.benchmark.html import render_html, write_html
from modelpress.benchmark.measure import RSS_METHOD, benchmark_models
from modelpress.benchmark.report import SCHEMA, STAGES, BenchReport, Measurement, ModelResult
from modelpress.benchmark.stats import LatencyStats, latency_stats, ratio

__all__ = [
    "RSS_METHOD",
    "SCHEMA",
    "STAGES",
    "BenchReport",
    "LatencyStats",
    "Measurement",
    "ModelResult",
    "benchmark_models",
    "latency_stats",
    "ratio",
    "render_html",
    "write_html",
]
