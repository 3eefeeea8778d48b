"""`modelpress prune`, `compress` and `decompress`: happy paths, JSON keys and exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.ir import io
from tests.compress.models import cnn


def _run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_compress_then_decompress(tmp_path):
    model = io.save(cnn(), tmp_path / "m.onnx")
    result = _run(
        "compress", model, "-o", tmp_path / "m.mpz", "--sparsity", "0.5", "--dim", "batch=1", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {
        "original_bytes",
        "compressed_bytes",
        "ratio",
        "tensors",
        "max_rel_error",
        "max_abs_error",
    } <= set(report)
    assert {"name", "op_type", "elements", "sparsity", "bits", "encoded_bytes", "bits_per_weight"} <= set(
        report["tensors"][0]
    )
    assert report["ratio"] > 3
    result = _run("decompress", tmp_path / "m.mpz", "-o", tmp_path / "back.onnx")
    assert result.exit_code == 0, result.output
    assert "written" in result.stdout and io.load(tmp_path / "back.onnx") is not None
    result = _run("compress", model, "-o", tmp_path / "t.mpz")
    assert result.exit_code == 0 and "smaller" in result.stdout and "max rel" in result.stdout


def test_prune_json(tmp_path):
    model = io.save(cnn(), tmp_path / "m.onnx")
    result = _run("prune", model, "-o", tmp_path / "p.onnx", "--sparsity", "0.5", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"layers", "max_rel_error", "pruned_elements"} <= set(report)
    assert _run("prune", model, "-o", tmp_path / "p2.onnx", "--min-elements", "10").exit_code == 0


def test_exit_codes(tmp_path):
    model = io.save(cnn(), tmp_path / "m.onnx")
    for args in (("--sparsity", "1.0"), ("--conv-bits", "0"), ("--fc-bits", "9"), ("--dim", "batch")):
        result = _run("compress", model, "-o", tmp_path / "x.mpz", *args)
        assert result.exit_code == 2, (args, result.output)
    assert _run("prune", model, "-o", tmp_path / "x.onnx", "--sparsity", "-0.5").exit_code == 2
    assert _run("compress", tmp_path / "missing.onnx", "-o", tmp_path / "x.mpz").exit_code == 3
    damaged = tmp_path / "d.mpz"
    assert _run("compress", model, "-o", damaged).exit_code == 0
    damaged.write_bytes(damaged.read_bytes()[:-5])
    result = _run("decompress", damaged, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 11 and "CompressionError" in result.output
    assert not (tmp_path / "x.mpz").exists() and not (tmp_path / "x.onnx").exists()
