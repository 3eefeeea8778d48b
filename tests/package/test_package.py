"""build_package / load_package: contents, atomic writes, tamper detection, and running a package."""

from __future__ import annotations

import io as stdio
import json

import numpy as np
import onnx_ir as ir
import pytest
from PIL import Image

from modelpress.errors import PackageError, ProtectionError, UsageError
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.package import build_package, load_package
from modelpress.pipeline import Pipeline
from modelpress.protect import encrypt_model, generate_key, key_id
from modelpress.runtime.run import run_model_file
from tests.package._builders import LABELS, MEAN, PIPELINE_YAML, STD, W, classifier, pipeline

X = np.array([[1, 2, 3, 4], [0, 0, 9, -4], [2, 2, 2, 2]], dtype=np.float32)
STEPS = ({"step": "optimize", "level": "all"}, {"step": "quantize", "scheme": "int8", "per_channel": True})


@pytest.fixture
def model(tmp_path):
    return io.save(classifier(), tmp_path / "src.onnx")


@pytest.fixture
def built(tmp_path, model):
    yaml_file = tmp_path / "pipeline.yaml"
    yaml_file.write_text(PIPELINE_YAML)
    metrics = {"latency_ms": np.float32(0.5), "accuracy": 0.9}
    return build_package(model, tmp_path / "pkg", pipeline=yaml_file, steps=STEPS, metrics=metrics)


def test_package_holds_model_pipeline_and_manifest(built, model):
    assert sorted(p.name for p in built.iterdir()) == ["manifest.json", "model.onnx", "pipeline.yaml"]
    assert (built / "model.onnx").read_bytes() == model.read_bytes()
    assert (built / "pipeline.yaml").read_text() == PIPELINE_YAML  # copied verbatim, comments kept
    package = load_package(built)
    assert package.manifest.steps == STEPS
    assert package.manifest.metrics == {"latency_ms": 0.5, "accuracy": 0.9}
    assert package.pipeline == pipeline()
    assert not package.is_encrypted and package.manifest.key_id is None
    assert [p.name for p in built.parent.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_package_without_pipeline(tmp_path, model):
    package = load_package(build_package(model, tmp_path / "bare"))
    assert package.pipeline is None and set(package.manifest.files) == {"model.onnx"}
    np.testing.assert_allclose(package.run([X])["logits"], X @ W, rtol=1e-6)


def test_refuses_to_overwrite_unless_asked(tmp_path, built, model):
    with pytest.raises(UsageError, match="already exists; use --force"):
        build_package(model, built)
    build_package(model, built, overwrite=True)
    assert set(load_package(built).manifest.files) == {"model.onnx"}
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a package, so --force will not delete it"):
        build_package(model, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def test_bad_arguments_leave_nothing_behind(tmp_path, model):
    with pytest.raises(UsageError, match="steps\\[0\\]: each step needs a name"):
        build_package(model, tmp_path / "p", steps=[{"level": "all"}])
    with pytest.raises(UsageError, match="metrics: must hold JSON values"):
        build_package(model, tmp_path / "p", metrics={"x": float("nan")})
    with pytest.raises(UsageError, match="not encrypted"):
        build_package(model, tmp_path / "p", key_id="0" * 16)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("outputs:\n  logits: [softmaxx]\n")
    with pytest.raises(UsageError, match="did you mean 'softmax'"):
        build_package(model, tmp_path / "p", pipeline=bad_yaml)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "src.onnx"]


def _flip(path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def _flip_metric(pkg) -> None:
    text = (pkg / "manifest.json").read_text()
    (pkg / "manifest.json").write_text(text.replace('"accuracy": 0.9', '"accuracy": 0.8'))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda pkg: _flip(pkg / "model.onnx", -3), "model.onnx: sha256 .* altered or corrupted"),
        (lambda pkg: _flip(pkg / "pipeline.yaml", 30), "pipeline.yaml: sha256 .* altered or corrupted"),
        (lambda pkg: (pkg / "model.onnx").write_bytes(b"x"), "model.onnx: 1 bytes, the manifest says"),
        (_flip_metric, "digest does not match its content"),
        (lambda pkg: _flip(pkg / "manifest.json", 0), "not valid JSON"),
        (
            lambda pkg: (pkg / "pipeline.yaml").unlink(),
            "'pipeline.yaml' is listed in the manifest but missing",
        ),
        (lambda pkg: (pkg / "manifest.json").unlink(), "no manifest.json; not a package"),
        (lambda pkg: (pkg / "other.onnx").write_bytes(b"onnx"), "unexpected file\\(s\\) other.onnx"),
        (lambda pkg: (pkg / "model.mpe").write_bytes(b"x"), "unexpected file\\(s\\) model.mpe"),
    ],
    ids=[
        "model-byte",
        "pipeline-byte",
        "model-truncated",
        "manifest-metric",
        "manifest-byte",
        "pipeline-deleted",
        "manifest-deleted",
        "extra-model",
        "extra-mpe",
    ],
)
def test_tampered_packages_are_refused(built, tamper, message):
    tamper(built)
    with pytest.raises(PackageError, match=message):
        load_package(built)


def test_symlinked_model_is_refused(tmp_path, built):
    (tmp_path / "copy.onnx").write_bytes((built / "model.onnx").read_bytes())
    (built / "model.onnx").unlink()
    (built / "model.onnx").symlink_to(tmp_path / "copy.onnx")
    with pytest.raises(PackageError, match="must be a regular file"):
        load_package(built)


def test_model_swapped_after_loading_is_not_run(built):
    package = load_package(built)
    _flip(built / "model.onnx", -3)
    with pytest.raises(PackageError, match="changed since the package was loaded"):
        package.run([X])


def test_not_a_folder(tmp_path):
    with pytest.raises(PackageError, match="not a package folder"):
        load_package(tmp_path / "missing")


def test_run_matches_model_and_pipeline_by_hand(built, model):
    results = load_package(built).run({"x": X})
    logits = run_model_file(model, [((X - np.array(MEAN)) / np.array(STD)).astype(np.float32)])["logits"]
    scores = np.exp(logits - logits.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    top = np.argsort(-scores, axis=-1, kind="stable")[:, :2]
    assert sorted(results) == ["logits.indices", "logits.labels", "logits.scores"]
    np.testing.assert_array_equal(results["logits.indices"], top)
    np.testing.assert_allclose(results["logits.scores"], np.take_along_axis(scores, top, -1), rtol=1e-6)
    np.testing.assert_array_equal(results["logits.labels"], np.array(LABELS)[top])
    by_hand = pipeline().postprocess(run_model_file(model, pipeline().preprocess({"x": X})))
    for name, array in by_hand.items():
        np.testing.assert_array_equal(results[name], array)


def test_encrypted_package_records_key_id_and_needs_the_key(tmp_path, model):
    key = generate_key()
    sealed = tmp_path / "m.mpe"
    encrypt_model(model, sealed, key)
    built = build_package(sealed, tmp_path / "sealed", pipeline=pipeline())
    package = load_package(built)
    assert package.is_encrypted and package.manifest.key_id == key_id(key)
    assert sorted(p.name for p in built.iterdir()) == ["manifest.json", "model.mpe", "pipeline.yaml"]
    with pytest.raises(ProtectionError, match="give its key"):
        package.run([X])
    plain = load_package(build_package(model, tmp_path / "plain", pipeline=pipeline())).run([X])
    for name, array in package.run([X], key).items():
        np.testing.assert_array_equal(array, plain[name])
    with pytest.raises(UsageError, match="encrypted with key"):
        build_package(sealed, tmp_path / "other", key_id="0" * 16)


def test_image_package(tmp_path):
    b = GraphBuilder()
    image = b.input("image", ir.DataType.FLOAT, ["N", 1, 2, 2])
    b_out = b.op("ReduceMean", image, axes=[1, 2, 3], keepdims=0)
    b_out.name = "brightness"
    model = io.save(b.build([b_out]), tmp_path / "mean.onnx")
    steps = Pipeline.from_text(
        "inputs:\n  image: [{decode_image: {mode: L}}, {resize: {size: [2, 2]}}, to_tensor]\n"
    )
    built = build_package(model, tmp_path / "img", pipeline=steps)
    pngs = []
    for level in (0, 255):
        buffer = stdio.BytesIO()
        Image.new("L", (4, 4), color=level).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    results = load_package(built).run({"image": pngs})
    np.testing.assert_allclose(results["brightness"], [0.0, 1.0])
    assert json.loads((built / "manifest.json").read_text())["pipeline"] == "pipeline.yaml"
