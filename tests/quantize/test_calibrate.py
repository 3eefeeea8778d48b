"""Calibration: streamed batches, constant observer memory, the model left as it was."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import onnx_ir.passes.common as common_passes
import pytest

from modelpress.errors import CalibrationError
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.quantize.calibrate import calibrate, observe
from modelpress.quantize.plan import build_plan
from modelpress.quantize.spec import CALIBRATORS, QuantSpec
from tests.quantize import builders


def _model():
    model = builders.small_cnn()
    common_passes.ShapeInferencePass()(model)
    return model


@pytest.mark.parametrize("calibrator", CALIBRATORS)
def test_observer_state_does_not_grow_with_the_number_of_samples(calibrator):
    model = _model()
    spec = QuantSpec(calibrator=calibrator, histogram_bins=512)
    targets = build_plan(model, spec).calibration_targets
    few = observe(model, builders.samples(model, count=2, seed=0), targets, spec)
    many = observe(model, builders.samples(model, count=40, seed=1), targets, spec)
    assert set(few) == set(many) == set(targets)
    assert sum(o.state_nbytes for o in few.values()) == sum(o.state_nbytes for o in many.values())


def test_batches_are_released_as_soon_as_they_are_observed():
    model = _model()
    spec = QuantSpec(calibrator="entropy")
    targets = build_plan(model, spec).calibration_targets
    refs: list[weakref.ref] = []

    def stream():
        rng = np.random.default_rng(0)
        for _ in range(6):
            # Two batches back must be gone: calibration keeps no sample.
            if len(refs) >= 2:
                gc.collect()
                assert refs[-2]() is None, "calibration kept a reference to an old batch"
            batch = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
            refs.append(weakref.ref(batch))
            yield {"x": batch}

    observe(model, stream(), targets, spec)


def test_calibration_leaves_the_model_unchanged():
    model = _model()
    before = io.to_bytes(model)
    calibrate(model, builders.samples(model), QuantSpec())
    assert io.to_bytes(model) == before


def test_ranges_cover_the_observed_values_and_graph_inputs_come_from_the_feeds():
    model = _model()
    data = builders.samples(model)
    ranges = calibrate(model, data, QuantSpec())
    everything = np.concatenate([feed["x"].ravel() for feed in data])
    assert ranges["x"] == (float(everything.min()), float(everything.max()))
    # The Conv before the Add gets its own pair; the Relu outputs are non-negative.
    assert set(ranges) == {"x", "Relu_2_out", "Conv_3_out", "Relu_5_out", "y"}
    assert all(ranges[name][0] >= 0.0 for name in ("Relu_2_out", "Relu_5_out", "y"))
    assert ranges["Conv_3_out"][0] < 0.0


def test_histogram_calibrators_clip_inside_the_minmax_range():
    model = _model()
    data = builders.samples(model, count=16)
    minmax = calibrate(model, data, QuantSpec())
    for calibrator in ("percentile", "entropy", "mse"):
        ranges = calibrate(model, data, QuantSpec(calibrator=calibrator))
        for name, (low, high) in ranges.items():
            assert minmax[name][0] <= low <= high <= minmax[name][1], (calibrator, name)


def test_no_samples_is_an_error():
    model = _model()
    with pytest.raises(CalibrationError, match="no calibration samples"):
        calibrate(model, [], QuantSpec())


def test_non_finite_activations_name_the_tensor_and_batch():
    b = GraphBuilder(opset=17)
    x = b.input("x", builders.FLOAT, [1, 4])
    w = b.const(np.eye(4, dtype=np.float32), "w")
    logged = b.op("Log", b.op("MatMul", x, w))
    logged.name = "logged"
    y = b.op("MatMul", logged, w)
    model = b.build([y])
    good = {"x": np.ones((1, 4), np.float32)}
    bad = {"x": -np.ones((1, 4), np.float32)}
    with pytest.raises(CalibrationError, match=r"tensor 'logged' holds NaN/Inf on calibration batch 1"):
        calibrate(model, [good, bad], QuantSpec())
