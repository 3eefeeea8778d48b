"""modelpress.ir.stats: op histograms and the summary behind `modelpress info`."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from modelpress.ir import io
from modelpress.ir.stats import ValueSummary, count_nodes, model_stats, op_histogram

MODEL = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1, "com.microsoft" : 1], producer_name: "tests",
 producer_version: "1.0">
g (float[batch, 4] x, bool c, float[?, 4] u) => (float[batch, 4] y, float[batch, 4] z) {
    a = Relu(x)
    b = local.Twice(a)
    y = If(c) <then_branch = t () => (float[batch, 4] p) { p = Neg(b) },
               else_branch = e () => (float[batch, 4] q) { q = Relu(b) }>
    z = com.microsoft.Gelu(a)
}
<domain: "local", opset_import: ["" : 17]>
Twice (v) => (w) { w = Add(v, v) }
"""


def _model() -> ir.Model:
    model = io.from_text(MODEL)
    weight = ir.tensor(np.ones((3, 4), np.float32), name="w")
    model.graph.initializers["w"] = ir.Value(name="w", const_value=weight)
    return model


def test_histogram_counts_subgraphs_and_functions_with_domains():
    assert op_histogram(_model()) == {
        "Relu": 2,
        "Add": 1,
        "If": 1,
        "Neg": 1,
        "com.microsoft::Gelu": 1,
        "local::Twice": 1,
    }
    assert count_nodes(_model()) == 7


def test_histogram_is_sorted_by_count_then_name():
    assert list(op_histogram(_model()))[:2] == ["Relu", "Add"]


def test_model_stats_fields():
    stats = model_stats(_model())
    assert stats.ir_version == 8
    assert stats.opsets == {"": 17, "local": 1, "com.microsoft": 1}
    assert stats.producer == "tests 1.0"
    assert stats.inputs == [
        ValueSummary("x", "float", ["batch", 4]),
        ValueSummary("c", "bool", []),
        ValueSummary("u", "float", [None, 4]),
    ]
    assert [o.name for o in stats.outputs] == ["y", "z"]
    assert stats.nodes == 7
    assert stats.parameters == 12
    assert stats.weight_bytes == 48
    assert stats.external_weight_bytes == 0
    assert stats.functions == 1


def test_to_json_is_json_serializable_with_the_info_keys():
    data = json.loads(json.dumps(model_stats(_model()).to_json()))
    assert {"opsets", "inputs", "outputs", "ops", "parameters", "weight_bytes"} <= set(data)
    assert data["inputs"][0] == {"name": "x", "dtype": "float", "shape": ["batch", 4]}


def test_external_weights_are_counted_without_loading(tmp_path):
    path = io.save(_model(), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    loaded = io.load(path)
    stats = model_stats(loaded)
    assert stats.weight_bytes == stats.external_weight_bytes == 48
    assert stats.parameters == 12


def test_unknown_rank_and_non_tensor_values():
    model = io.from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (seq(float[2]) s) { s = SequenceConstruct(x, x) }
        """
    )
    model.graph.inputs[0].shape = None
    stats = model_stats(model)
    assert stats.inputs == [ValueSummary("x", "float", None)]
    assert stats.outputs[0].name == "s"
    assert "Sequence" in stats.outputs[0].dtype
