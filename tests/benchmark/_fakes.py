"""A BenchReport built from injected timings: report, JSON and HTML tests need no onnxruntime."""

from __future__ import annotations

from modelpress.benchmark import BenchReport, Measurement, ModelResult, latency_stats

NAMES = ("base <model>.onnx", "fast.onnx")


def fake_report() -> BenchReport:
    """Two models; the second is twice as fast at every configuration and half the size."""
    models = [
        ModelResult(NAMES[0], "/m/base.onnx", "onnx", 4000, 10.0, 3.0, False),
        ModelResult(NAMES[1], "/m/fast.onnx", "onnx", 2000, 5.0, None, False),
    ]
    measurements = []
    for batch in (1, 4):
        for threads in (1, 2):
            for name, scale in zip(NAMES, (1.0, 0.5), strict=True):
                times = [scale * batch * t / 1e3 for t in (1.0, 2.0, 3.0, 4.0)]
                stages = {"preprocess": 0.0, "inference": sum(times) / len(times) * 1e3, "postprocess": 0.0}
                diff = None if scale == 1.0 else 1e-6
                measurements.append(
                    Measurement(name, batch, threads, latency_stats(times, batch), stages, diff)
                )
    settings = {"batches": [1, 4], "threads": [1, 2], "runs": 4, "warmup": 0, "level": "all", "data": None}
    return BenchReport(models, measurements, settings, {"python": "3"}, "VmHWM")
