"""``manifest.json``: what a deployment package holds, and how it was made.

```json
{
  "format": "modelpress-package",
  "version": 1,
  "model": "model.onnx",
  "pipeline": "pipeline.yaml",
  "files": {"model.onnx": {"sha256": "9f2c...", "size": 1234}, "pipeline.yaml": {...}},
  "steps": [{"step": "optimize", "level": "all"}, {"step": "protect", "encrypt": true}],
  "metrics": {"latency_ms_p50": 0.41, "accuracy": 0.97},
  "key_id": null,
  "created_by": "modelpress",
  "digest": "sha256 of the canonical JSON of every other field"
}
```

``files`` lists every file of the package except the manifest itself, and nothing else: the
model (``model.onnx``, the encrypted ``model.mpe`` or the compressed ``model.mpz``) and, when
there is one, ``pipeline.yaml``.
``digest`` covers the manifest's own fields (steps, metrics, ...), so that an edited or corrupted
manifest is refused like an edited model.

These hashes detect corruption and edits made without modelpress; they do not prove who built
the package (anyone can recompute them). An encrypted model is authenticated by its key
(AES-GCM). TODO(package): sign the manifest with the package key #5
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import hashlib
import json
import os
import re
import typing

from modelpress.errors import PackageError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LIBRARY_NAME",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "MODEL_SUFFIXES",
    "PIPELINE_NAME",
    "FileEntry",
    "Manifest",
    "check_layout",
    "sha256_file",
]

FORMAT = "modelpress-package"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PIPELINE_NAME = "pipeline.yaml"
# The operator library of a model obfuscated into opaque operators, when it has one.
LIBRARY_NAME = "model.mplib"
MODEL_SUFFIXES = (".onnx", ".mpe", ".mpz")
# A manifest holds names, hashes, step parameters and metrics: anything larger is not one.
MAX_MANIFEST_BYTES = 2**20
_KEYS = {
    "format",
    "version",
    "model",
    "pipeline",
    "files",
    "steps",
    "metrics",
    "key_id",
    "created_by",
    "digest",
}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_CHUNK_BYTES = 2**20


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """The recorded size and sha256 (lowercase hex) of one file of a package."""

    sha256: str
    size: int

    @classmethod
    def of_bytes(cls, data: bytes) -> FileEntry:
        """The entry of a file holding exactly ``data``."""
        return cls(hashlib.sha256(data).hexdigest(), len(data))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a package.

    Attributes:
        model: File name of the model (``model.onnx``, ``model.mpe`` or ``model.mpz``).
        files: Every file of the package but the manifest, by name.
        pipeline: File name of the pipeline (``pipeline.yaml``), or None.
        steps: The steps applied to the model, each ``{"step": name, **parameters}``.
        metrics: Measured metrics (name -> JSON value).
        key_id: Id of the key an encrypted model needs (16 hex digits), or None.
        created_by: The tool that wrote the package.
        version: Manifest format version.
    """

    model: str
    files: dict[str, FileEntry]
    pipeline: str | None = None
    steps: tuple[dict[str, typing.Any], ...] = ()
    metrics: dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    key_id: str | None = None
    created_by: str = "modelpress"
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, typing.Any]:
        """The JSON form, ``digest`` included."""
        body = self._body()
        return {**body, "digest": _digest(body)}

    def to_json(self) -> str:
        """The manifest as indented JSON text (what ``manifest.json`` holds)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, where: str = MANIFEST_NAME) -> Manifest:
        """Parse and validate manifest text; the inverse of ``to_json``.

        Raises:
            PackageError: not JSON, an unknown format or version, a digest that does not match
                the content (edited or corrupted), or a missing or malformed field.
        """
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise PackageError(f"{where}: not valid JSON ({e}); the manifest is corrupted") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PackageError(f'{where}: not a modelpress package manifest (no "format": "{FORMAT}")')
        if data.get("version") != FORMAT_VERSION:
            raise PackageError(
                f"{where}: manifest version {data.get('version')!r} is not supported; this modelpress "
                f"reads version {FORMAT_VERSION} (upgrade modelpress or rebuild the package)"
            )
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise PackageError(f"{where}: unknown field '{unknown[0]}' in a version 1 manifest")
        digest = data.pop("digest", None)
        if digest != _digest(data):
            raise PackageError(
                f"{where}: the manifest's digest does not match its content; it was edited or corrupted "
                "(rebuild the package with `modelpress package`)"
            )
        return cls._from_body(data, where)

    def _body(self) -> dict[str, typing.Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "model": self.model,
            "pipeline": self.pipeline,
            "files": {name: {"sha256": e.sha256, "size": e.size} for name, e in sorted(self.files.items())},
            "steps": [dict(step) for step in self.steps],
            "metrics": dict(self.metrics),
            "key_id": self.key_id,
            "created_by": self.created_by,
        }

    @classmethod
    def _from_body(cls, data: dict[str, typing.Any], where: str) -> Manifest:
        files = data.get("files")
        if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
            raise PackageError(f"{where}: 'files' must map file names to {{sha256, size}}")
        entries = {}
        for name, entry in files.items():
            sha, size = entry.get("sha256"), entry.get("size")
            if set(entry) != {"sha256", "size"} or not isinstance(sha, str) or not _HEX64.fullmatch(sha):
                raise PackageError(f"{where}: files.{name} must be {{sha256: 64 hex digits, size}}")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise PackageError(f"{where}: files.{name}.size must be a byte count, got {size!r}")
            entries[name] = FileEntry(sha, size)
        pipeline = data.get("pipeline")
        model = check_layout(data.get("model"), pipeline, entries, where)
        steps, metrics = data.get("steps", []), data.get("metrics", {})
        if not isinstance(steps, list) or not all(_is_step(step) for step in steps):
            raise PackageError(f"{where}: 'steps' must be a list of {{\"step\": name, ...parameters}}")
        if not isinstance(metrics, dict):
            raise PackageError(f"{where}: 'metrics' must map names to values")
        key_id, created_by = data.get("key_id"), data.get("created_by", "")
        if key_id is not None and not (isinstance(key_id, str) and _KEY_ID.fullmatch(key_id)):
            raise PackageError(f"{where}: 'key_id' must be 16 hex digits or null, got {key_id!r}")
        if not isinstance(created_by, str):
            raise PackageError(f"{where}: 'created_by' must be a string")
        return cls(model, entries, pipeline, tuple(steps), metrics, key_id, created_by, FORMAT_VERSION)


def check_layout(
    model: object, pipeline: object, files: collections.abc.Mapping[str, object], where: str
) -> str:
    """A package holds its model, its pipeline and operator library when it has them, no more.

    The operator library (``model.mplib``) belongs to a model obfuscated into opaque operators.

    Returns:
        ``model``, checked to be a model file name.

    Raises:
        PackageError: a bad model or pipeline name, or ``files`` not exactly those.
    """
    if not isinstance(model, str) or not model.startswith("model.") or not model.endswith(MODEL_SUFFIXES):
        raise PackageError(f"{where}: 'model' must be model.onnx, model.mpe or model.mpz, got {model!r}")
    if pipeline not in (None, PIPELINE_NAME):
        raise PackageError(f"{where}: 'pipeline' must be {PIPELINE_NAME!r} or null, got {pipeline!r}")
    expected = {model} | ({pipeline} if pipeline else set())
    if not expected <= set(files) or set(files) - expected - {LIBRARY_NAME}:
        raise PackageError(
            f"{where}: 'files' lists {sorted(files)}, but a package with this model and pipeline holds "
            f"exactly {sorted(expected)} (and {LIBRARY_NAME} for an obfuscated model)"
        )
    return model


def sha256_file(path: str | os.PathLike[str]) -> FileEntry:
    """Hash a file in 1 MiB chunks (never the whole file in memory)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(digest.hexdigest(), size)


def _digest(body: dict[str, typing.Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _is_step(step: object) -> bool:
    return isinstance(step, dict) and isinstance(step.get("step"), str) and bool(step["step"])


def _no_duplicates(pairs: list[tuple[str, typing.Any]]) -> dict[str, typing.Any]:
    # A repeated key would let two readers see two different manifests under one digest.
    counts = collections.Counter(key for key, _ in pairs)
    repeated = sorted(key for key, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"key '{repeated[0]}' appears twice")
    return dict(pairs)


def _no_constant(name: str) -> typing.NoReturn:
    raise ValueError(f"{name} is not JSON")
