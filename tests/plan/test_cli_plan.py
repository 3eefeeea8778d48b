"""``modelpress plan`` through typer's CliRunner, on an app with only this verb registered."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from modelpress.cli.plan import register
from modelpress.ir import io

MODEL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 64] x, float[64, 64] w) => (float[batch, 64] y) {
    h = MatMul(x, w)
    y = Relu(h)
}"""


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a callback keeps `plan` a subcommand, as in the real app
        pass

    register(app)
    return app


def _run(*args):
    return CliRunner().invoke(_app(), ["plan", *map(str, args)], env={"COLUMNS": "200"})


@pytest.fixture
def model_path(tmp_path):
    return io.save(io.from_text(MODEL), tmp_path / "m.onnx")


def test_tables_and_the_estimate_disclaimer(model_path):
    result = _run(model_path, "--gpus", "A100,H100", "--precision", "fp16,fp8")
    assert result.exit_code == 0, result.output
    assert "cost by op type" in result.output and "MatMul" in result.output
    assert "A100 has no fp8 tensor cores" in result.output
    assert result.output.strip().splitlines()[-1].endswith("not validated on real hardware.")


def test_json_output(model_path):
    result = _run(model_path, "--gpus", "H100", "--precision", "fp16", "--batch", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["batch"] == 4 and data["dims"] == {"batch": 4}
    assert data["costs"]["fp16"]["total_flops"] == 2 * 4 * 64 * 64 + 4 * 64
    (row,) = data["plans"]
    assert row["gpu"] == "H100" and row["supported"] and row["latency_s"] > 0
    assert "not validated" in data["note"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--gpus", "V100"), "unknown GPU"),
        (("--precision", "fp4"), "unknown precision"),
        (("--dim", "sequence"), "NAME=SIZE"),
        (("--batch", "0"), "--batch"),
    ],
)
def test_usage_errors_exit_2(model_path, args, message):
    result = _run(model_path, *args)
    assert result.exit_code == 2 and message in result.output


def test_unreadable_model_exits_3(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert _run(bad).exit_code == 3
    assert _run(tmp_path / "missing.onnx").exit_code == 3
