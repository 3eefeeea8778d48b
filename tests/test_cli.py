"""The modelpress command line: commands, output formats, exit codes, nothing written on failure."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import onnx_ir as ir
import pytest
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.ir import io
from modelpress.optimize import workflow
from modelpress.passes.base import ModelpressPass
from modelpress.runtime.compare import Comparison, OutputDiff

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
    a = Identity(x)
    b = Relu(a)
    y = Add(b, c)
}
"""


def _model() -> ir.Model:
    model = io.from_text(MODEL)
    c = ir.Value(name="c", const_value=ir.tensor(np.linspace(-1, 1, 4, dtype=np.float32), name="c"))
    model.graph.initializers["c"] = c
    add = next(n for n in model.graph if n.op_type == "Add")
    add.replace_input_with(1, c)
    return model


@pytest.fixture
def model_path(tmp_path) -> pathlib.Path:
    return io.save(_model(), tmp_path / "model.onnx")


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_help_lists_the_commands():
    result = _run("--help")
    assert result.exit_code == 0
    for command in ("info", "optimize", "passes", "deploy"):
        assert command in result.output


def test_help_does_not_load_the_heavy_libraries():
    # `modelpress --help` (and every argument error) should answer at once: onnx_ir pulls in
    # sympy (0.3 s), onnxruntime and torch more; verbs import them when they run.
    code = (
        "import sys, modelpress.cli.main; "
        "print(sorted(m for m in ('onnx_ir', 'onnx', 'onnxruntime', 'torch') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_no_arguments_shows_help():
    result = _run()
    assert "optimize" in result.output


def test_info_table(model_path):
    result = _run("info", model_path)
    assert result.exit_code == 0, result.output
    for text in ("IR v8", "opsets", "input", "output", "batch", "Identity", "Relu", "Add", "4 parameters"):
        assert text in result.output


def test_info_json(model_path):
    result = _run("info", model_path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"opsets", "inputs", "outputs", "ops", "parameters", "file_bytes", "weight_bytes"} <= set(data)
    assert data["opsets"] == {"": 17}
    assert data["inputs"] == [{"name": "x", "dtype": "float", "shape": ["batch", 4]}]
    assert data["outputs"][0]["name"] == "y"
    assert data["ops"] == {"Add": 1, "Identity": 1, "Relu": 1}
    assert data["parameters"] == 4
    assert data["file_bytes"] == model_path.stat().st_size


def test_info_of_a_model_with_external_data(tmp_path):
    path = io.save(_model(), tmp_path / "m.onnx", external_data=True, size_threshold_bytes=0)
    data = json.loads(_run("info", path, "--json").stdout)
    assert data["external_weight_bytes"] == 16


@pytest.mark.parametrize("content", [b"", b"garbage bytes", b"\x08\x07"])
def test_info_on_a_corrupt_file_exits_3_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    result = _run("info", path)
    assert result.exit_code == 3
    assert "ModelLoadError" in result.output
    assert str(path) in result.output
    assert "Traceback" not in result.output


def test_info_on_a_missing_file_exits_3(tmp_path):
    result = _run("info", tmp_path / "nope.onnx")
    assert result.exit_code == 3
    assert "no such file" in result.output


def test_error_messages_with_brackets_are_printed_verbatim(tmp_path):
    from onnx import TensorProto, helper

    tensor = TensorProto(name="w[bold]", data_type=TensorProto.FLOAT, dims=[-1], raw_data=b"")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w[bold]"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", 1, [1])],
        [tensor],
    )
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    result = _run("info", path)
    assert result.exit_code == 3
    assert "tensor 'w[bold]' has a negative dimension [-1]" in result.output


def test_optimize_writes_the_output_and_prints_the_report(model_path, tmp_path):
    out = tmp_path / "out" / "opt.onnx"
    result = _run("optimize", model_path, "-o", out)
    assert result.exit_code == 0, result.output
    assert "eliminate-no-ops" in result.output
    assert "verified on onnxruntime" in result.output
    assert f"written: {out}" in result.output.replace("\n", "")
    optimized = io.load(out)
    assert "Identity" not in [n.op_type for n in optimized.graph]


def test_optimize_json_schema(model_path, tmp_path):
    out = tmp_path / "opt.onnx"
    result = _run("optimize", model_path, "-o", out, "--json", "--level", "basic")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["input"] == str(model_path)
    assert report["output"] == str(out)
    assert report["level"] == "basic"
    assert report["nodes_before"] == 3
    assert report["nodes_after"] == 2
    assert report["ops_after"] == {"Add": 1, "Relu": 1}
    names = [p["name"] for p in report["passes"]]
    assert "eliminate-no-ops" in names
    assert "fuse-batchnorm" not in names  # an extended-level pass
    for record in report["passes"]:
        assert {"name", "changed", "runs", "seconds", "nodes_delta", "op_delta"} <= set(record)
    verification = report["verification"]
    assert verification["rtol"] == 1e-4
    assert verification["max_rel"] == 0.0
    assert [o["output"] for o in verification["outputs"]] == ["y"]


def test_optimize_with_chosen_passes_runs_only_those(model_path, tmp_path):
    result = _run(
        "optimize", model_path, "-o", tmp_path / "o.onnx", "--json", "--passes", "eliminate-dead-code"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [p["name"] for p in report["passes"]] == ["eliminate-dead-code"]
    assert report["ops_after"]["Identity"] == 1


def test_optimize_with_dims_and_rtol(model_path, tmp_path):
    result = _run(
        "optimize", model_path, "-o", tmp_path / "o.onnx", "--dim", "batch=3", "--dim", "*=2", "--rtol", "0"
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--passes", "fold-constants,no-such-pass", "unknown pass(es) no-such-pass; known passes: "),
        ("--passes", " , ", "--passes is empty"),
        ("--level", "bogus", "unknown level 'bogus'; choose one of: basic, extended, all"),
        ("--target", "tpu", "unknown target 'tpu'"),
        ("--dim", "batch", "--dim 'batch' must look like NAME=SIZE"),
        ("--dim", "batch=-1", "must look like NAME=SIZE"),
    ],
)
def test_bad_options_exit_2_with_a_message(model_path, tmp_path, option, value, expected):
    out = tmp_path / "o.onnx"
    result = _run("optimize", model_path, "-o", out, option, value)
    assert result.exit_code == 2, result.output
    assert "UsageError" in result.output
    assert expected in result.output
    assert not out.exists()


def test_unknown_pass_message_lists_every_known_pass(model_path, tmp_path):
    from modelpress.passes.registry import PASSES

    result = _run("optimize", model_path, "-o", tmp_path / "o.onnx", "--passes", "nope")
    for name in PASSES:
        assert name in result.output


def test_bad_options_are_reported_before_reading_the_model(tmp_path):
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(b"garbage")
    assert _run("optimize", corrupt, "-o", tmp_path / "o.onnx", "--level", "bogus").exit_code == 2


def test_negative_rtol_is_rejected(model_path, tmp_path):
    assert _run("optimize", model_path, "-o", tmp_path / "o.onnx", "--rtol", "-1").exit_code == 2


def test_missing_output_option_is_a_usage_error(model_path):
    assert _run("optimize", model_path).exit_code == 2


def test_corrupt_input_exits_3_and_writes_nothing(tmp_path):
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(_model_bytes()[:40])
    out = tmp_path / "o.onnx"
    result = _run("optimize", corrupt, "-o", out)
    assert result.exit_code == 3
    assert f"{corrupt}: not an ONNX model" in result.output
    assert not out.exists()


def _model_bytes() -> bytes:
    return io.to_bytes(_model())


def _bad_comparison(*args, **kwargs) -> Comparison:
    return Comparison([OutputDiff("y", 0, 1.5, 0.5, (1, 2))])


def test_numeric_mismatch_exits_6_and_writes_nothing(model_path, tmp_path, monkeypatch):
    monkeypatch.setattr(workflow, "compare_models", _bad_comparison)
    out = tmp_path / "o.onnx"
    result = _run("optimize", model_path, "-o", out)
    assert result.exit_code == 6
    assert "NumericMismatchError" in result.output
    assert "output 'y' (seed 0)" in result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_numeric_mismatch_leaves_an_existing_output_byte_identical(model_path, tmp_path, monkeypatch):
    out = tmp_path / "o.onnx"
    out.write_bytes(b"previous contents")
    monkeypatch.setattr(workflow, "compare_models", _bad_comparison)
    assert _run("optimize", model_path, "-o", out, "--json").exit_code == 6
    assert out.read_bytes() == b"previous contents"


class CorruptWeightsPass(ModelpressPass):
    """A broken 'optimization': adds 1 to every initializer."""

    name = "corrupt-weights"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for value in model.graph.initializers.values():
            value.const_value = ir.tensor(value.const_value.numpy() + 1, name=value.name)
        return ir.passes.PassResult(model, True)


def test_a_pass_that_breaks_the_numbers_is_caught(model_path, tmp_path, monkeypatch):
    monkeypatch.setattr(workflow, "passes_for", lambda *args, **kwargs: [CorruptWeightsPass()])
    out = tmp_path / "o.onnx"
    previous = _model_bytes()
    out.write_bytes(previous)
    result = _run("optimize", model_path, "-o", out)
    assert result.exit_code == 6
    assert "the optimized model differs from the reference on output 'y'" in result.output
    assert out.read_bytes() == previous


def test_no_verify_skips_the_check(model_path, tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("compare_models called despite --no-verify")

    monkeypatch.setattr(workflow, "compare_models", must_not_run)
    out = tmp_path / "o.onnx"
    result = _run("optimize", model_path, "-o", out, "--no-verify")
    assert result.exit_code == 0, result.output
    assert "not verified" in result.output
    assert out.exists()
    assert (
        json.loads(_run("optimize", model_path, "-o", out, "--no-verify", "--json").stdout)["verification"]
        is None
    )


def test_passes_command_lists_the_registry():
    from modelpress.passes.registry import PASSES

    result = _run("passes")
    assert result.exit_code == 0
    flat = result.output.replace("\n", "").replace("│", "").replace(" ", "")
    for name in PASSES:
        assert name.replace("-", "") in flat.replace("-", "")
