"""Bias correction: the mean shift of weight rounding, measured and subtracted from the bias."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.quantize import QuantSpec, quantize_model
from modelpress.quantize.bias_correction import bias_shifts
from modelpress.quantize.plan import build_plan
from modelpress.quantize.qdq import quantize_weight
from modelpress.runtime.compare import run_model

FLOAT = ir.DataType.FLOAT


def _biased_weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Each output channel: one weight 1.0 (sets the scale 1/127), the rest 0.40-0.45 steps.

    Every small weight rounds down to 0, so the rounding error of a channel is one-signed:
    about -0.42/127 per input, which adds up to a mean shift when the inputs are positive.
    """
    w = (0.40 + 0.05 * rng.random(shape)) / 127
    w.reshape(shape[0], -1)[:, 0] = 1.0
    return w.astype(np.float32)


def biased_gemm(seed: int = 0) -> ir.Model:
    """x[N,16] -> Gemm(transB, 16->8, bias) -> y."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("x", FLOAT, ["N", 16])
    bias = b.const((rng.standard_normal(8) * 0.1).astype(np.float32), "b")
    y = b.op("Gemm", x, b.const(_biased_weights(rng, (8, 16)), "w"), bias, transB=1)
    y.name = "y"
    return b.build([y])


def biased_conv(seed: int = 0, bias: bool = True) -> ir.Model:
    """x[N,4,6,6] -> Conv(8, 3x3, stride 2, pads 1) -> Relu -> y: padding makes border sums differ."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("x", FLOAT, ["N", 4, 6, 6])
    inputs = [x, b.const(_biased_weights(rng, (8, 4, 3, 3)), "w")]
    if bias:
        inputs.append(b.const(np.full(8, 0.5, np.float32), "b"))
    y = b.op("Relu", b.op("Conv", *inputs, pads=[1, 1, 1, 1], strides=[2, 2]))
    y.name = "y"
    return b.build([y])


def _positive(model: ir.Model, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    (value,) = model.graph.inputs
    shape = [16, *value.shape[1:]]
    return [{"x": rng.random(shape).astype(np.float32)} for _ in range(count)]


def _mean_error(float_model: ir.Model, quantized: ir.Model, data) -> float:
    """The largest |E[q - f]| over output channels (mean over samples and positions)."""
    diffs = np.concatenate(
        [run_model(quantized, f, level="all")["y"] - run_model(float_model, f)["y"] for f in data]
    )
    return float(np.abs(diffs.mean(axis=tuple(i for i in range(diffs.ndim) if i != 1))).max())


@pytest.mark.parametrize("builder", [biased_gemm, biased_conv])
def test_the_output_mean_error_drops_on_held_out_data(builder):
    model = builder()
    calib, held_out = _positive(model, 8, seed=1), _positive(model, 8, seed=2)
    plain, _ = quantize_model(model, QuantSpec(), samples=calib)
    corrected, report = quantize_model(model, QuantSpec(bias_correction=True), samples=calib)
    before, after = _mean_error(model, plain, held_out), _mean_error(model, corrected, held_out)
    assert before > 0.01  # the rounding bias is real: several output steps
    assert after < before / 5, (before, after)
    result = report.bias_correction
    assert list(result.corrected) == [n.name for n in model.graph if n.op_type in ("Conv", "Gemm")]
    assert result.mean_error_after["y"] < result.mean_error_before["y"] / 5
    assert result.mean_error_before["y"] == pytest.approx(_mean_error(model, plain, calib), rel=1e-4)
    assert report.to_json()["bias_correction"]["mean_error_before"]["y"] > 0.01
    assert report.inserted["int32_biases"] == 1  # the corrected bias is still an int32 DequantizeLinear
    assert not any(name.endswith("_bc_probe") for name in (n.name for n in corrected.graph))


def test_the_measured_gemm_shift_is_the_closed_form():
    model = biased_gemm()
    data = _positive(model, 4, seed=1)
    work = model.clone()
    shifts = bias_shifts(work, build_plan(work, QuantSpec()), data, QuantSpec())
    (shift,) = shifts.values()
    w = model.graph.initializers["w"].const_value.numpy()
    w_i8, w_scale = quantize_weight(w, 0)
    delta = w_i8 * w_scale[:, None] - w
    mean_x = np.concatenate([f["x"] for f in data]).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(shift.shift, delta @ mean_x, rtol=1e-5, atol=1e-9)
    assert shift.relative_shift > 0
    assert io.to_bytes(work) == io.to_bytes(model)  # measuring does not touch the model


def shrunk_gemm(seed: int = 0) -> ir.Model:
    """x[N,16] -> Gemm(transB, 16->8, bias) -> y, weights that rounding shrinks by 18 %.

    Input 0 (fed zeros) carries the weight 1.0 that sets the scale 1/127; the others are
    +-2.45 steps and round to +-2: the output spread comes from them and shrinks to 2 / 2.45.
    """
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("x", FLOAT, ["N", 16])
    w = np.where(rng.random((8, 16)) < 0.5, -2.45, 2.45) / 127
    w[:, 0] = 1.0
    bias = b.const(np.zeros(8, np.float32), "b")
    y = b.op("Gemm", x, b.const(w.astype(np.float32), "w"), bias, transB=1)
    y.name = "y"
    return b.build([y])


def _centered(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    data = [rng.standard_normal((16, 16)).astype(np.float32) for _ in range(count)]
    for x in data:
        x[:, 0] = 0.0
    return [{"x": x} for x in data]


def test_variance_correction_brings_the_channel_spread_back():
    model = shrunk_gemm()
    calib, held_out = _centered(8, seed=1), _centered(8, seed=2)

    def spread_error(quantized: ir.Model) -> float:
        ref = np.concatenate([run_model(model, f)["y"] for f in held_out])
        out = np.concatenate([run_model(quantized, f, level="all")["y"] for f in held_out])
        return float(np.abs(out.std(axis=0) / ref.std(axis=0) - 1).max())

    mean_only, _ = quantize_model(model, QuantSpec(bias_correction=True), samples=calib)
    both, report = quantize_model(
        model, QuantSpec(bias_correction=True, variance_correction=True), samples=calib
    )
    assert report.bias_correction.variance_corrected == list(report.bias_correction.corrected)
    assert spread_error(mean_only) > 0.15  # 1 - 2 / 2.45
    assert spread_error(both) < 0.03


def test_a_conv_without_bias_is_reported_not_corrected():
    model = biased_conv(bias=False)
    _, report = quantize_model(model, QuantSpec(bias_correction=True), samples=_positive(model, 2, 1))
    result = report.bias_correction
    assert result.corrected == {}
    assert list(result.skipped.values()) == ["no bias to correct (add a zero bias to correct it)"]


def test_per_tensor_weights_get_no_variance_correction():
    model = biased_gemm()
    spec = QuantSpec(per_channel=False, bias_correction=True, variance_correction=True)
    _, report = quantize_model(model, spec, samples=_positive(model, 2, 1))
    assert report.bias_correction.variance_corrected == []
    assert "per-tensor weights" in next(iter(report.bias_correction.skipped.values()))
    assert report.bias_correction.corrected  # the mean is still corrected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"variance_correction": True}, "variance correction comes with bias correction"),
        ({"bias_correction": True, "mode": "weight-only"}, "bias correction needs calibration data"),
    ],
)
def test_bad_specs(options, message):
    with pytest.raises(UsageError, match=message):
        QuantSpec(**options)


def test_one_shot_samples_are_refused_and_the_input_is_untouched():
    model = biased_gemm()
    before = io.to_bytes(model)
    with pytest.raises(UsageError, match="reads the calibration samples twice"):
        quantize_model(model, QuantSpec(bias_correction=True), samples=iter(_positive(model, 2, 1)))
    quantize_model(model, QuantSpec(bias_correction=True), samples=_positive(model, 2, 1))
    assert io.to_bytes(model) == before
