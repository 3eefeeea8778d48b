"""The planner on real exports: MiniLM (if built by the benchmarks) and the torch zoo."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpress.ir import io
from modelpress.plan import plan_model

pytestmark = pytest.mark.slow

MINILM = Path(__file__).resolve().parents[2] / "build" / "bench_quantize" / "minilm.onnx"


def test_minilm_flops_match_the_hand_count():
    if not MINILM.exists():
        pytest.skip(f"{MINILM} not built (bench/ builds it)")
    report = plan_model(io.load(MINILM), ["H100"], ["fp16"], {"sequence": 128}, batch=1)
    cost = report.costs["fp16"]
    # 6 layers x (2 * 128 tokens * (4*384^2 + 2*384*1536) weights + 2 * 2*128^2*384 attention).
    expected = 6 * (2 * 128 * (4 * 384**2 + 2 * 384 * 1536) + 2 * 2 * 128**2 * 384)
    assert cost.by_op["MatMul"].flops == pytest.approx(expected, rel=1e-6)
    assert len(cost.unknown) <= 2


def test_resnet_like_conv_flops(tmp_path):
    pytest.importorskip("torch")
    from modelpress.examples import torch_models

    module = torch_models.resnet_like()
    path = torch_models.export_onnx(
        module,
        torch_models.example_inputs(torch_models.ZOO["resnet_like"]),
        tmp_path / "r.onnx",
        constant_folding=True,
    )
    report = plan_model(io.load(path), ["H100"], ["fp16"], batch=1)
    cost = report.costs["fp16"]
    assert cost.unknown == []
    assert cost.by_op["Conv"].flops > 0.9 * cost.total_flops
