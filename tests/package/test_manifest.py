"""package.manifest: JSON round trip, digest, and refusal of malformed manifests."""

from __future__ import annotations

import json

import pytest

from modelpress.errors import PackageError
from modelpress.package.manifest import FileEntry, Manifest, sha256_file

MODEL = FileEntry("a" * 64, 10)
PIPE = FileEntry("b" * 64, 5)


def _manifest() -> Manifest:
    return Manifest(
        model="model.onnx",
        files={"model.onnx": MODEL, "pipeline.yaml": PIPE},
        pipeline="pipeline.yaml",
        steps=({"step": "optimize", "level": "all", "passes": ["fold-constants"]},),
        metrics={"latency_ms_p50": 0.25, "accuracy": 0.97},
    )


def test_round_trip_keeps_every_field():
    manifest = _manifest()
    assert Manifest.from_json(manifest.to_json()) == manifest
    data = json.loads(manifest.to_json())
    assert data["version"] == 1 and data["format"] == "modelpress-package"
    assert data["files"]["model.onnx"] == {"sha256": "a" * 64, "size": 10}
    assert data["steps"][0] == {"step": "optimize", "level": "all", "passes": ["fold-constants"]}


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    entry = sha256_file(path)
    assert entry == FileEntry.of_bytes(b"abc")
    assert entry.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _edited(**changes: object) -> str:
    data = json.loads(_manifest().to_json())
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a modelpress package manifest"),
        (_edited(version=2), "manifest version 2 is not supported"),
        (_edited(metrics={"accuracy": 0.99}), "digest does not match"),
        (_edited(digest="0" * 64), "digest does not match"),
        (_edited(extra=1), "unknown field 'extra'"),
        ('{"format": "modelpress-package", "version": 1, "version": 1}', "appears twice"),
        ('{"format": "modelpress-package", "version": NaN}', "not valid JSON"),
    ],
)
def test_malformed_manifests_are_refused(text, message):
    with pytest.raises(PackageError, match=message):
        Manifest.from_json(text)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (Manifest("model.onnx", {"model.onnx": MODEL, "../x": PIPE}), "holds exactly"),
        (Manifest("../model.onnx", {"../model.onnx": MODEL}), "must be model.onnx, model.mpe or model.mpz"),
        (Manifest("model.onnx", {"model.onnx": MODEL}, pipeline="p.yaml"), "'pipeline' must be"),
        (Manifest("model.onnx", {"model.onnx": MODEL}, steps=({"level": 1},)), "'steps' must be"),
        (Manifest("model.onnx", {"model.onnx": FileEntry("xyz", 1)}), "64 hex digits"),
        (Manifest("model.onnx", {"model.onnx": FileEntry("a" * 64, -1)}), "byte count"),
        (Manifest("model.mpe", {"model.mpe": MODEL}, key_id="k"), "'key_id' must be 16 hex"),
    ],
)
def test_invalid_fields_are_refused_even_with_a_matching_digest(manifest, message):
    with pytest.raises(PackageError, match=message):
        Manifest.from_json(manifest.to_json())
