"""--mode bf16: weights stored bfloat16 behind one Cast each, float32 inputs/outputs, exact numerics."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import PreconditionError
from modelpress.ir import io
from modelpress.ir.stats import op_histogram
from modelpress.ir.verify import verify
from modelpress.quantize import QuantSpec, quantize_file, quantize_model
from modelpress.quantize.bfloat16 import bfloat16_round
from modelpress.quantize.float16 import cast_problems
from modelpress.runtime.compare import run_model
from tests.quantize import builders


def test_structure_one_cast_per_weight_and_float32_interface():
    model = builders.attention_block()  # four 16x16 weights (1 KiB each), a scalar, LayerNorm vectors
    converted, report = quantize_model(model, QuantSpec(mode="bf16"))
    verify(converted, full=True)
    assert report.inserted == {"bfloat16_weights": 4, "casts": 4}
    assert report.ops_after == {**op_histogram(model), "Cast": 4}
    assert report.op_counts == {"MatMul": {"quantized": 4, "float": 0}}
    assert set(report.skipped) == {"inv_sqrt_d", "gamma", "beta"}  # < MIN_BYTES: not worth it
    assert cast_problems(converted.graph) == []  # no cascaded, identity or dangling Cast
    for value in [*converted.graph.inputs, *converted.graph.outputs]:
        assert value.dtype == ir.DataType.FLOAT
    stored = {n: v.const_value.dtype for n, v in converted.graph.initializers.items()}
    assert stored["wq_bf16"] == ir.DataType.BFLOAT16 and "wq" not in stored
    assert report.weight_bytes_after < 0.6 * report.weight_bytes_before


def test_outputs_equal_the_float_model_with_bfloat16_rounded_weights():
    """Compute stays float32: the only change is each weight rounded to bfloat16 (nearest even)."""
    model = builders.attention_block()
    converted, _ = quantize_model(model, QuantSpec(mode="bf16"))
    rounded = model.clone()
    for name in ("wq", "wk", "wv", "wo"):
        value = rounded.graph.initializers[name]
        value.const_value = ir.tensor(bfloat16_round(value.const_value.numpy()), name=name)
    for feeds in builders.samples(model, count=3, seed=2):
        expected = run_model(rounded, feeds)["y"]
        for level in ("disable", "all"):
            np.testing.assert_allclose(
                run_model(converted, feeds, level=level)["y"], expected, rtol=1e-5, atol=1e-5
            )
        assert np.abs(run_model(model, feeds)["y"] - expected).max() < 0.05  # 8-bit mantissa weights


def test_bfloat16_keeps_values_float16_cannot_hold():
    w = np.full((16, 32), 1e6, np.float32)
    w[0, 0] = 1e-9
    assert bfloat16_round(w)[1, 1] == pytest.approx(1e6, rel=2**-8)
    assert bfloat16_round(w)[0, 0] == pytest.approx(1e-9, rel=2**-8)


def test_quantize_file_halves_the_size_and_a_converted_model_is_refused(tmp_path):
    source = io.save(builders.mlp(), tmp_path / "f.onnx")
    report = quantize_file(source, tmp_path / "b.onnx", QuantSpec(mode="bf16"))
    assert report.to_json()["mode"] == "bf16" and report.errors[0].max_rel < 0.01
    assert "no bfloat16 arithmetic kernels" in report.notes[0]
    with pytest.raises(PreconditionError, match="nothing to convert to bfloat16"):
        quantize_model(io.load(tmp_path / "b.onnx"), QuantSpec(mode="bf16"))
