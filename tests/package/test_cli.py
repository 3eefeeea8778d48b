"""`modelpress package` and `modelpress run PACKAGE`: happy paths, JSON output and exit codes."""

from __future__ import annotations

import io as stdio
import json

import numpy as np
import onnx_ir as ir
import pytest
from PIL import Image
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.package import load_package
from tests.package._builders import PIPELINE_YAML, classifier, pipeline

X = np.array([[1, 2, 3, 4], [0, 0, 9, -4]], dtype=np.float32)


def _run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def work(tmp_path):
    model = io.save(classifier(), tmp_path / "model.onnx")
    (tmp_path / "pipeline.yaml").write_text(PIPELINE_YAML)
    np.save(tmp_path / "x.npy", X)
    return tmp_path, model


def _package(tmp_path, model, *extra: object):
    return _run("package", model, "-o", tmp_path / "pkg", "--pipeline", tmp_path / "pipeline.yaml", *extra)


def test_package_then_run_prints_post_processed_json(work):
    tmp_path, model = work
    result = _package(tmp_path, model)
    assert result.exit_code == 0, result.output
    assert "model.onnx" in result.output and "pipeline.yaml" in result.output
    result = _run("run", tmp_path / "pkg", "--input", f"x={tmp_path / 'x.npy'}")
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.stdout)["outputs"]
    expected = load_package(tmp_path / "pkg").run([X])
    assert sorted(outputs) == sorted(expected)
    for name, array in expected.items():
        assert outputs[name]["data"] == array.tolist()
    assert outputs["logits.labels"]["data"][0][0] in ("cat", "dog", "fish")
    positional = _run("run", tmp_path / "pkg", "--input", tmp_path / "x.npy")
    assert json.loads(positional.stdout) == json.loads(result.stdout)


def test_run_package_writes_npz(work):
    tmp_path, model = work
    assert _package(tmp_path, model).exit_code == 0
    result = _run("run", tmp_path / "pkg", "-i", tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "out.npz") as saved:
        assert sorted(saved.files) == ["logits.indices", "logits.labels", "logits.scores"]


def test_existing_output_needs_force(work):
    tmp_path, model = work
    assert _package(tmp_path, model).exit_code == 0
    result = _package(tmp_path, model)
    assert result.exit_code == 2 and "already exists" in result.output
    assert _package(tmp_path, model, "--force").exit_code == 0


def test_tampered_package_exits_with_code_10(work):
    tmp_path, model = work
    assert _package(tmp_path, model).exit_code == 0
    (tmp_path / "pkg" / "extra.onnx").write_bytes(b"x")
    result = _run("run", tmp_path / "pkg", "-i", tmp_path / "x.npy")
    assert result.exit_code == 10
    assert "PackageError" in result.output and "unexpected file(s) extra.onnx" in result.output
    (tmp_path / "pkg" / "extra.onnx").unlink()
    data = bytearray((tmp_path / "pkg" / "model.onnx").read_bytes())
    data[-2] ^= 1
    (tmp_path / "pkg" / "model.onnx").write_bytes(bytes(data))
    result = _run("run", tmp_path / "pkg", "-i", tmp_path / "x.npy")
    assert result.exit_code == 10 and "altered or corrupted" in result.output


def test_image_files_only_for_image_inputs(work):
    tmp_path, model = work
    assert _package(tmp_path, model).exit_code == 0
    (tmp_path / "a.png").write_bytes(b"not used")
    result = _run("run", tmp_path / "pkg", "-i", f"x={tmp_path / 'a.png'}")
    assert result.exit_code == 2 and "give a .npy array" in result.output


def test_run_package_on_image_files(tmp_path):
    b = GraphBuilder()
    image = b.input("image", ir.DataType.FLOAT, ["N", 1, 2, 2])
    out = b.op("ReduceMean", image, axes=[1, 2, 3], keepdims=0)
    out.name = "brightness"
    model = io.save(b.build([out]), tmp_path / "m.onnx")
    (tmp_path / "p.yaml").write_text(
        "inputs:\n  image: [{decode_image: {mode: L}}, {resize: {size: [2, 2]}}, to_tensor]\n"
    )
    for level in (0, 255):
        buffer = stdio.BytesIO()
        Image.new("L", (3, 5), color=level).save(buffer, format="PNG")
        (tmp_path / f"{level}.png").write_bytes(buffer.getvalue())
    assert _run("package", model, "-o", tmp_path / "pkg", "--pipeline", tmp_path / "p.yaml").exit_code == 0
    result = _run(
        "run", tmp_path / "pkg", "-i", f"image={tmp_path / '0.png'}", "-i", f"image={tmp_path / '255.png'}"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"]["brightness"]["data"] == pytest.approx([0.0, 1.0])


def test_encrypted_package_needs_its_key(work):
    tmp_path, model = work
    assert _run("keygen", "-o", tmp_path / "k.key").exit_code == 0
    assert (
        _run(
            "protect", model, "-o", tmp_path / "m.mpe", "--encrypt", "--key-file", tmp_path / "k.key"
        ).exit_code
        == 0
    )
    result = _run(
        "package", tmp_path / "m.mpe", "-o", tmp_path / "sealed", "--pipeline", tmp_path / "pipeline.yaml"
    )
    assert result.exit_code == 0, result.output
    assert "key id" in result.output
    result = _run("run", tmp_path / "sealed", "-i", tmp_path / "x.npy")
    assert result.exit_code == 7 and "give its key" in result.output
    result = _run("run", tmp_path / "sealed", "-i", tmp_path / "x.npy", "--key-file", tmp_path / "k.key")
    assert result.exit_code == 0, result.output
    plain = load_package(tmp_path / "sealed")
    assert plain.pipeline == pipeline()
