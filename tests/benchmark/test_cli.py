"""`modelpress bench`: tables on stdout, JSON and HTML files, exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from modelpress.cli.bench import parse_sizes
from modelpress.cli.main import app
from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.package import build_package
from tests.package._builders import PIPELINE_YAML, classifier


def _run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def model(tmp_path):
    return io.save(classifier(), tmp_path / "clf.onnx")


def test_bench_writes_json_and_html_and_prints_tables(tmp_path, model):
    (tmp_path / "pipeline.yaml").write_text(PIPELINE_YAML)
    package = build_package(model, tmp_path / "pkg", pipeline=tmp_path / "pipeline.yaml")
    out_json, out_html = tmp_path / "r" / "bench.json", tmp_path / "r" / "bench.html"
    result = _run(
        "bench", model, package, "--batch", "1,2", "--threads", "1", "--runs", "3", "--warmup", "1",
        "--json", out_json, "--report", out_html,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "clf.onnx" in result.output and "pkg" in result.output and "p50" in result.output
    data = json.loads(out_json.read_text())
    assert [m["name"] for m in data["models"]] == ["clf.onnx", "pkg"]
    assert len(data["measurements"]) == 4 and data["settings"]["batches"] == [1, 2]
    page = out_html.read_text()
    assert page.count("data:image/png;base64,") == 2 and "clf.onnx" in page and "pkg" in page


def test_a_missing_model_exits_3(tmp_path):
    result = _run("bench", tmp_path / "missing.onnx", "--runs", "1")
    assert result.exit_code == 3
    assert "no such model" in result.output


@pytest.mark.parametrize("batch", ["0", "x", "1,,-2", ""])
def test_a_bad_batch_exits_2(model, batch):
    result = _run("bench", model, "--batch", batch)
    assert result.exit_code == 2
    assert "--batch" in result.output


def test_parse_sizes_keeps_order_and_drops_repeats():
    assert parse_sizes("8, 1,8", "--batch") == [8, 1]
    with pytest.raises(UsageError):
        parse_sizes("1.5", "--threads")
