"""modelpress's static minmax QDQ equals onnxruntime.quantization's on the same data, output for output.

Same scheme on both sides (QDQ, per-channel symmetric int8 weights, uint8 asymmetric
activations, MinMax calibration), so the outputs at ORT_ENABLE_ALL must be identical: this
pins our scales, zero points, bias quantization and Q/DQ placement to the reference
implementation users compare us with.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from modelpress.ir import io
from modelpress.quantize import QuantSpec, quantize_model
from modelpress.runtime.compare import run_model
from tests.quantize import builders


class _Reader(CalibrationDataReader):
    def __init__(self, data):
        self.batches = iter(data)

    def get_next(self):
        return next(self.batches, None)


@pytest.mark.parametrize("build", [builders.conv_relu, builders.small_cnn])
def test_outputs_equal_onnxruntime_quantize_static(tmp_path, build):
    model = build()
    data = builders.samples(model, count=6, batch=4)
    source = io.save(model, tmp_path / "float.onnx")
    quantize_static(
        str(source),
        str(tmp_path / "ort.onnx"),
        _Reader(data),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    ours, _ = quantize_model(model, QuantSpec(activation_dtype="uint8"), samples=data)
    for feeds in builders.samples(model, count=2, seed=5):
        expected = run_model(tmp_path / "ort.onnx", feeds, level="all")["y"]
        np.testing.assert_array_equal(run_model(ours, feeds, level="all")["y"], expected)
