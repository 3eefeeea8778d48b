"""What ``benchmark_models`` returns: per-model facts, per-configuration timings, ratios, JSON.

The JSON form (``BenchReport.to_json``) is versioned by its ``schema`` key
(``modelpress.bench/1``); the keys below are that schema:

```
{"schema", "settings": {batches, threads, runs, warmup, level, data, interleaved, spinning},
 "environment": {python, onnxruntime, platform, cpu_count}, "rss_method",
 "models": [{name, path, kind, model_bytes, load_ms, peak_rss_mb, pipeline,
             quality: null | {samples, accuracy, agreement_vs_first, cosine_vs_first,
                              max_abs_diff_vs_first}}],
 "measurements": [{model, batch, threads, latency_ms: {p50, p90, p99, mean, min, max},
                   throughput, runs, stages_ms: {preprocess, inference, postprocess},
                   max_abs_diff_vs_first}],
 "ratios": [{model, batch, threads, p50, p99, throughput, model_bytes, load_ms}]}
```
Ratios are ``model / first model`` for the same batch size and thread count: a p50 ratio of 0.5
means twice as fast, a throughput ratio of 2.0 twice as many samples per second.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from modelpress.benchmark.quality import Quality
from modelpress.benchmark.stats import LatencyStats, ratio

__all__ = ["SCHEMA", "STAGES", "BenchReport", "Measurement", "ModelResult"]

SCHEMA = "modelpress.bench/1"
# The time of one end-to-end call, split: a bare model spends it all in inference.
STAGES = ("preprocess", "inference", "postprocess")


@dataclasses.dataclass(frozen=True)
class ModelResult:
    """What was measured once per model rather than per configuration.

    Attributes:
        name: The display name (the file or folder name; a suffix ``#2`` tells repeats apart).
        path: The model file or package folder as given.
        kind: ``onnx``, ``mpe`` (encrypted) or ``package``.
        model_bytes: Size of the model file on disk (for a package, its model file).
        load_ms: Mean time to validate the model and create its onnxruntime session, over the
            sessions created (one per thread count).
        peak_rss_mb: Largest rise of the process's peak RSS while the model's session was
            created and warmed up at every batch size (see ``BenchReport.rss_method``); None
            where the platform does not expose it.
        pipeline: Whether a package pipeline (pre/post-processing) was part of every run.
        quality: Accuracy (with ``labels`` in the data) and agreement with the first model on
            every row of ``--data``; None without data (see ``benchmark.quality``).
    """

    name: str
    path: str
    kind: str
    model_bytes: int
    load_ms: float
    peak_rss_mb: float | None
    pipeline: bool
    quality: Quality | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Timings of one model at one batch size and thread count.

    Attributes:
        model: ``ModelResult.name`` of the model.
        batch: Samples per run.
        threads: onnxruntime intra-op threads.
        latency: Statistics of the end-to-end run times (pre-process + inference + post-process).
        stages_ms: Mean milliseconds per run spent in each of ``STAGES``.
        max_abs_diff_vs_first: Largest absolute difference between this model's outputs and the
            first model's on the same inputs (outputs matched by name and shape); None for the
            first model or when no output matches.
    """

    model: str
    batch: int
    threads: int
    latency: LatencyStats
    stages_ms: dict[str, float]
    max_abs_diff_vs_first: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The measurement as a JSON-ready dict (latency keys without the ``_ms`` suffix)."""
        stats = self.latency
        return {
            "model": self.model,
            "batch": self.batch,
            "threads": self.threads,
            "latency_ms": {
                "p50": stats.p50_ms,
                "p90": stats.p90_ms,
                "p99": stats.p99_ms,
                "mean": stats.mean_ms,
                "min": stats.min_ms,
                "max": stats.max_ms,
            },
            "throughput": stats.throughput,
            "runs": stats.runs,
            "stages_ms": dict(self.stages_ms),
            "max_abs_diff_vs_first": self.max_abs_diff_vs_first,
        }


@dataclasses.dataclass(frozen=True)
class BenchReport:
    """Everything one benchmark measured, models in the order given (the first is the baseline).

    Attributes:
        models: One entry per model.
        measurements: One entry per model, batch size and thread count.
        settings: The options of the run (batches, threads, runs, warmup, level, data...).
        environment: Versions and CPU count of the machine that ran it.
        rss_method: How ``peak_rss_mb`` was measured, in words.
    """

    models: list[ModelResult]
    measurements: list[Measurement]
    settings: dict[str, Any]
    environment: dict[str, Any]
    rss_method: str

    def find(self, model: str, batch: int, threads: int) -> Measurement | None:
        """The measurement of ``model`` at ``batch`` and ``threads``, or None."""
        for item in self.measurements:
            if (item.model, item.batch, item.threads) == (model, batch, threads):
                return item
        return None

    def ratios(self) -> list[dict[str, Any]]:
        """Each model's p50, p99, throughput, size and load time divided by the first model's."""
        if not self.models:
            return []
        first = self.models[0]
        rows = []
        for item in self.measurements:
            base = self.find(first.name, item.batch, item.threads)
            info = next(m for m in self.models if m.name == item.model)
            rows.append(
                {
                    "model": item.model,
                    "batch": item.batch,
                    "threads": item.threads,
                    "p50": ratio(item.latency.p50_ms, base.latency.p50_ms if base else None),
                    "p99": ratio(item.latency.p99_ms, base.latency.p99_ms if base else None),
                    "throughput": ratio(item.latency.throughput, base.latency.throughput if base else None),
                    "model_bytes": ratio(info.model_bytes, first.model_bytes),
                    "load_ms": ratio(info.load_ms, first.load_ms),
                }
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        """The report in the ``modelpress.bench/1`` JSON schema (see the module docstring)."""
        return {
            "schema": SCHEMA,
            "settings": dict(self.settings),
            "environment": dict(self.environment),
            "rss_method": self.rss_method,
            "models": [m.to_json() for m in self.models],
            "measurements": [m.to_json() for m in self.measurements],
            "ratios": self.ratios(),
        }
