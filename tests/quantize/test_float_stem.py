"""``QuantSpec(float_stem=True)``: an image stem (few-channel Conv on a graph input) stays float."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from modelpress.quantize import QuantSpec, quantize_model
from modelpress.quantize.plan import build_plan
from modelpress.quantize.report import runtime_ops
from modelpress.runtime.compare import run_model
from tests.quantize import builders
from tests.quantize.test_qdq import quantized
from tests.testing import ops

SPEC = QuantSpec(activation_dtype="uint8", float_stem=True)


def _stem(model: ir.Model) -> tuple[ir.Node, ir.Node]:
    conv = next(n for n in model.graph if n.op_type == "Conv")
    return conv, conv.outputs[0].uses()[0].node


def test_the_stem_and_its_relu_stay_float_with_a_reason():
    model = builders.small_cnn()
    conv, relu = _stem(model)
    plan = build_plan(model, SPEC)
    assert plan.skipped[conv.name].startswith("image stem (3 input channel(s) from the graph input")
    assert plan.skipped[relu.name] == "follows a float image stem (float_stem)"
    assert set(plan.skipped) == {conv.name, relu.name}
    assert plan.op_counts(model)["Conv"] == {"quantized": 2, "float": 1}


def test_small_cnn_structure_is_exact():
    after = quantized(builders.small_cnn(), SPEC)
    verify(after, full=True)
    # No pair on x; pairs on Relu1 (read by Conv2 and the Add), Conv2, the Relu after the Add,
    # MaxPool and Relu3: 5. Weight/bias DQs for Conv2 and Conv3 only: 4.
    assert ops(after) == {
        "DequantizeLinear": 9,
        "QuantizeLinear": 5,
        "Conv": 3,
        "Relu": 3,
        "Add": 1,
        "MaxPool": 1,
    }
    stem, relu = _stem(after)
    assert stem.inputs[0].name == "x" and stem.inputs[1].name == "w1"  # float weights, float input
    assert relu.outputs[0].uses()[0].node.op_type == "QuantizeLinear"
    kernels = runtime_ops(after)
    assert kernels.get("com.microsoft::QLinearConv") == 2 and kernels.get("com.microsoft::QLinearAdd") == 1


@pytest.mark.parametrize(
    ("channels", "on_input"),
    [(8, True), (3, False)],
    ids=["too-many-channels", "not-on-a-graph-input"],
)
def test_other_convs_are_not_stems(channels, on_input):
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", builders.FLOAT, ["N", channels if on_input else 8, 8, 8])
    # Off the input: an 8-channel Conv first (not a stem either), then the 3-channel one.
    h = x if on_input else b.op("Relu", b.op("Conv", x, b.const(rng.standard_normal((3, 8, 1, 1)), "w0")))
    y = b.op("Conv", h, b.const(rng.standard_normal((4, channels, 3, 3)), "w"))
    y.name = "y"
    model = b.build([y])
    plan = build_plan(model, SPEC)
    assert plan.skipped == {}
    assert plan.op_counts(model)["Conv"] == {"quantized": 1 if on_input else 2, "float": 0}


def test_float_stem_is_static_only():
    with pytest.raises(UsageError, match="float_stem applies to --mode static"):
        QuantSpec(mode="weight-only", float_stem=True)


class _Reader(CalibrationDataReader):
    def __init__(self, data):
        self.batches = iter(data)

    def get_next(self):
        return next(self.batches, None)


def test_outputs_equal_onnxruntime_quantize_static_with_the_stem_excluded(tmp_path):
    model = builders.small_cnn()
    data = builders.samples(model, count=6, batch=4)
    source = io.save(model, tmp_path / "float.onnx")
    conv, relu = _stem(model)
    quantize_static(
        str(source),
        str(tmp_path / "ort.onnx"),
        _Reader(data),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=[conv.name, relu.name],
    )
    ours, _ = quantize_model(model, SPEC, samples=data)
    assert runtime_ops(ours).get("com.microsoft::QLinearConv") == 2
    for feeds in builders.samples(model, count=2, seed=5):
        expected = run_model(tmp_path / "ort.onnx", feeds, level="all")["y"]
        np.testing.assert_array_equal(run_model(ours, feeds, level="all")["y"], expected)
