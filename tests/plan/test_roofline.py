"""modelpress.plan.roofline and gpus: bounds, memory fit, unsupported precisions, sources."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.plan import GPUS, RooflineParams, plan_model
from modelpress.plan.gpus import PRECISIONS, find_gpu

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _text(body: str) -> ir.Model:
    return io.from_text(HEADER + body)


def _plan(report, gpu="H100", precision="fp16"):
    (row,) = [p for p in report.plans if p.gpu == gpu and p.precision == precision]
    return row


def test_large_elementwise_is_memory_bound_and_large_matmul_compute_bound():
    add = _text("g (float[N, 67108864] a, float[N, 67108864] b) => (float[N, 67108864] y) { y = Add(a, b) }")
    row = _plan(plan_model(add, ["H100"], ["fp16"], batch=1))
    assert row.bound == "memory" and row.compute_s == 0.0
    # 3 tensors of 2**26 fp16 elements at 3.35 TB/s * 0.8, plus one 5 µs launch.
    assert row.latency_s == pytest.approx(3 * 2**27 / (3.35e12 * 0.8) + 5e-6)
    matmul = _text(
        "g (float[N, 4096, 4096] a, float[4096, 4096] b) => (float[N, 4096, 4096] y) { y = MatMul(a, b) }"
    )
    row = _plan(plan_model(matmul, ["H100"], ["fp16"], batch=1))
    assert row.bound == "compute" and row.memory_s == 0.0
    assert row.latency_s == pytest.approx(2 * 4096**3 / (989.4e12 * 0.6) + 5e-6)


def test_tiny_model_at_batch_one_is_bound_by_launch_overhead():
    tiny = _text("g (float[N, 8] x) => (float[N, 8] y) { y = Relu(x) }")
    row = _plan(plan_model(tiny, ["H100"], ["fp16"]))
    assert row.bound == "launch overhead" and row.latency_s == pytest.approx(5e-6, rel=1e-3)
    no_launch = RooflineParams(launch_overhead_s=0.0)
    assert _plan(plan_model(tiny, ["H100"], ["fp16"], params=no_launch)).bound == "memory"


def test_fp8_on_a100_is_an_unsupported_row_not_an_error():
    tiny = _text("g (float[N, 8] x) => (float[N, 8] y) { y = Relu(x) }")
    report = plan_model(tiny, ["A100", "h100"], ["fp16", "FP8"])
    row = _plan(report, "A100", "fp8")
    assert not row.supported and row.latency_s is None and "no fp8" in row.note
    assert _plan(report, "H100", "fp8").supported
    json.dumps(report.to_json())


def test_unknown_gpu_precision_and_parameters_are_usage_errors():
    tiny = _text("g (float[N, 8] x) => (float[N, 8] y) { y = Relu(x) }")
    with pytest.raises(UsageError, match="unknown GPU 'V100'"):
        plan_model(tiny, ["V100"])
    with pytest.raises(UsageError, match="unknown precision 'fp4'"):
        plan_model(tiny, ["H100"], ["fp4"])
    with pytest.raises(UsageError, match="compute_efficiency"):
        plan_model(tiny, params=RooflineParams(compute_efficiency=0.0))


def _mlp(width: int) -> ir.Model:
    model = _text(
        f"g (float[N, 256] x, float[256, {width}] w) => (float[N, {width}] y) {{ y = MatMul(x, w) }}"
    )
    value = ir.Value(name="w", const_value=ir.tensor(np.zeros((256, width), np.float32), name="w"))
    model.graph.initializers["w"] = value
    model.graph.node(0).replace_input_with(1, value)
    model.graph.inputs.pop()
    return model


def test_max_batch_decreases_with_model_size_and_memory():
    params = RooflineParams(max_batch_cap=2**40)
    small, large = (_plan(plan_model(_mlp(w), ["H100"], ["fp16"], params=params)) for w in (64, 4096))
    assert small.fits and large.fits
    assert large.max_batch < small.max_batch
    # weights + max_batch * (x + y per sample) fits in 90 % of 80 GB; one more sample does not.
    usable = 80e9 * 0.9
    per_sample = (256 + 4096) * 2
    assert (
        256 * 4096 * 2 + large.max_batch * per_sample
        <= usable
        < 256 * 4096 * 2 + (large.max_batch + 1) * per_sample
    )
    h200 = _plan(plan_model(_mlp(4096), ["H200"], ["fp16"], params=params), "H200")
    assert h200.max_batch > large.max_batch
    assert large.throughput_per_s is not None and large.throughput_per_s > 0


def test_default_max_batch_is_capped_and_static_batch_is_not_estimated():
    assert _plan(plan_model(_mlp(64), ["H100"], ["fp16"])).max_batch == 4096
    static = _text("g (float[4, 8] x) => (float[4, 8] y) { y = Relu(x) }")
    row = _plan(plan_model(static, ["H100"], ["fp16"], batch=16))
    assert row.max_batch is None and "static batch" in row.note and row.batch == 4


def test_lower_precision_moves_fewer_bytes():
    add = _text("g (float[N, 67108864] a, float[N, 67108864] b) => (float[N, 67108864] y) { y = Add(a, b) }")
    report = plan_model(add, ["H100"], ["fp32", "fp16", "fp8"])
    fp32, fp16, fp8 = (_plan(report, "H100", p).memory_s for p in ("fp32", "fp16", "fp8"))
    assert fp32 == pytest.approx(2 * fp16) and fp16 == pytest.approx(2 * fp8)


def test_every_gpu_entry_has_a_source_and_dense_peaks():
    for gpu in GPUS.values():
        assert gpu.source and "datasheet" in gpu.source.lower() and gpu.checked_against
        assert "not reached in practice" in gpu.note
        assert set(gpu.peak_tflops) <= set(PRECISIONS)
        assert gpu.peak_tflops["fp16"] < gpu.peak_tflops.get("fp8", float("inf"))
    assert not find_gpu("a100").has_precision("fp8")
    # Dense = half the datasheet's sparse figure (H100 SXM: 1979 TFLOPS fp16 with sparsity).
    assert find_gpu("H100").peak_tflops["fp16"] == pytest.approx(1979 / 2, rel=1e-3)
