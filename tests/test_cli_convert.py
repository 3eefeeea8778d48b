"""`modelpress convert` on the command line: report, JSON, exit codes, the trust flag."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from modelpress.cli.main import app
from tests.convert import _models

M = "tests.convert._models"


def _run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_convert_is_listed_and_its_help_warns_about_pickles():
    assert "convert" in _run("--help").output
    result = _run("convert", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--trust-pickle" in text and "runs any code" in text


def test_convert_prints_the_report_and_writes_the_model(tmp_path):
    out = tmp_path / "cnn.onnx"
    result = _run("convert", f"{M}:small_cnn", "-o", out, "--example-input", "x=1x3x8x8")
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert "verified on onnxruntime" in result.output and "seed 2, batch 2" in result.output
    assert "written:" in result.output


def test_convert_json(tmp_path):
    out = tmp_path / "lr.onnx"
    result = _run("convert", f"{M}:digits_logistic_regression", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kind"] == "sklearn" and report["output_path"] == str(out)
    assert {c["output"] for c in report["checks"]} == {"label", "probabilities"}
    assert all(c["ok"] for c in report["checks"])


def test_unsupported_operator_exits_8_naming_it(tmp_path):
    out = tmp_path / "svd.onnx"
    result = _run("convert", f"{M}:svd", "-o", out, "-i", "x=2x3x3")
    assert result.exit_code == 8
    assert "ConversionError" in result.output and "aten::linalg_svd" in result.output
    assert not out.exists()


def test_pickle_without_trust_exits_2_and_with_trust_converts(tmp_path):
    saved = tmp_path / "cnn.pt"
    torch.save(_models.small_cnn(), saved)
    out = tmp_path / "cnn.onnx"
    refused = _run("convert", saved, "-o", out, "-i", "x=1x3x8x8")
    assert refused.exit_code == 2 and "--trust-pickle" in refused.output
    accepted = _run("convert", saved, "-o", out, "-i", "x=1x3x8x8", "--trust-pickle")
    assert accepted.exit_code == 0, accepted.output
    assert out.exists()


def test_numeric_mismatch_exits_6_and_bad_spec_exits_2(tmp_path):
    frozen = _run("convert", f"{M}:frozen_batch", "-o", tmp_path / "f.onnx", "-i", "x=1x3")
    assert frozen.exit_code == 6 and "NumericMismatchError" in frozen.output
    bad_spec = _run("convert", f"{M}:small_cnn", "-o", tmp_path / "m.onnx", "-i", "x=1by3")
    assert bad_spec.exit_code == 2 and "NAME=1x3x224x224" in bad_spec.output
