"""The optimize workflow on graphs it must pass through untouched or handle: subgraphs,
custom-domain ops, model-local functions, sequences and strings."""

import onnx_ir as ir
import pytest

from modelpress.errors import NumericMismatchError
from modelpress.ir import io
from modelpress.ir.verify import verify
from modelpress.optimize import optimize_file, optimize_model
from modelpress.passes.base import ModelpressPass
from tests.testing import assert_equivalent, ops


def test_if_subgraphs_are_kept_and_still_correct():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (bool cond, float[3] x) => (float[3] y)
{
  a = Identity(x)
  y = If(cond) <
    then_branch = then_g () => (float[3] t) { t = Relu(a) },
    else_branch = else_g () => (float[3] e) { e = Neg(a) }
  >
}
""")
    optimized, report = optimize_model(model)
    verify(optimized, full=True)
    assert "If" in ops(optimized)
    assert report.comparison is not None and report.comparison.max_rel == 0.0
    assert_equivalent(model, optimized, rtol=0.0)


def test_loop_is_kept_and_still_correct():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (int64 trips, float[2] x) => (float[2] y)
{
  cond = Constant<value = bool {1}>()
  y = Loop(trips, cond, x) <
    body = body_g (int64 i, bool c_in, float[2] acc) => (bool c_out, float[2] acc_out) {
      c_out = Identity(c_in)
      acc_out = Add(acc, acc)
    }
  >
}
""")
    optimized, _ = optimize_model(model)
    verify(optimized)
    assert "Loop" in ops(optimized)
    feeds = {
        "trips": __import__("numpy").array(3, dtype="int64"),
        "x": __import__("numpy").ones(2, "float32"),
    }
    from modelpress.runtime.compare import compare_models

    assert compare_models(model, optimized, feeds=feeds).max_rel == 0.0


def test_model_local_functions_pass_through():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[3] x) => (float[3] y)
{
  a = Identity(x)
  y = local.Double(a)
}
<domain: "local", opset_import: ["" : 17]>
Double (v) => (w)
{
  w = Add(v, v)
}
""")
    optimized, report = optimize_model(model)
    verify(optimized)
    assert ops(optimized).get("local::Double") == 1
    assert report.comparison is not None and report.comparison.max_rel == 0.0


def test_unknown_custom_domain_op_is_passed_through(tmp_path):
    # onnxruntime cannot run it, so verification is off; the op and its neighbours survive.
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17, "com.acme" : 1]>
g (float[3] x) => (float[3] y)
{
  a = Identity(x)
  b = com.acme.Mystery<gain = 2.0>(a)
  y = Relu(b)
}
""")
    optimized, report = optimize_model(model, verify=False)
    assert ops(optimized) == {"com.acme::Mystery": 1, "Relu": 1}
    node = next(n for n in optimized.graph if n.op_type == "Mystery")
    assert node.attributes["gain"].as_float() == 2.0
    assert report.comparison is None


def test_sequences_and_strings_pass_through():
    model = io.from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[3] x, string[2] s) => (seq(float[3]) q, string[2] t)
{
  a = Identity(x)
  q = SequenceConstruct(a, a)
  t = Identity(s)
}
""")
    optimized, report = optimize_model(model)
    verify(optimized)
    assert "SequenceConstruct" in ops(optimized)
    assert report.comparison is not None and report.comparison.max_rel == 0.0


class _Corrupt(ModelpressPass):
    """A deliberately wrong pass: scales every float initializer by 2."""

    name = "corrupt"

    def call(self, model):
        for value in model.graph.initializers.values():
            if value.dtype == ir.DataType.FLOAT:
                value.const_value = ir.tensor(value.const_value.numpy() * 2)
        return ir.passes.PassResult(model, True)


def test_numeric_mismatch_raises_and_writes_nothing(tmp_path, monkeypatch):
    from modelpress.examples import build_example_cnn
    from modelpress.passes import registry

    source = tmp_path / "in.onnx"
    io.save(build_example_cnn(), source)
    destination = tmp_path / "out.onnx"
    destination.write_bytes(b"previous")
    monkeypatch.setattr(registry, "passes_for", lambda level, names=None, **_: [_Corrupt()])
    monkeypatch.setattr("modelpress.optimize.workflow.passes_for", registry.passes_for)
    with pytest.raises(NumericMismatchError, match="probabilities"):
        optimize_file(source, destination)
    assert destination.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]
