"""Write a deployment package: model file, ``pipeline.yaml`` and ``manifest.json`` in one folder.

The package is built in a hidden temporary folder next to its destination and renamed into
place, so a reader sees either no package or a complete one. An existing destination is
replaced only when asked (``overwrite=True``, ``--force``), and only when it is a package or an
empty folder: a typo in ``-o`` never deletes a folder of other files.

The model is validated before it is copied (a plain model is read with ``ir.io.load``, an
encrypted one must have a sound ``.mpe`` header, a Deep Compression ``.mpz`` must decode) and
renamed ``model.onnx``, ``model.mpe`` or ``model.mpz``;
the operator library of a model obfuscated into opaque operators (``MODEL.mplib`` beside it)
goes in as ``model.mplib``, listed and hashed like every file.
Models with external data files are refused: a package holds one model file.
"""

from __future__ import annotations

import collections.abc
import json
import os
import shutil
import tempfile
import typing
import uuid
from pathlib import Path

import numpy as np

from modelpress.compress.mpz import MAGIC as MPZ_MAGIC
from modelpress.compress.mpz import load_compressed
from modelpress.errors import ModelLoadError, ModelSaveError, PackageError, UsageError
from modelpress.ir import io
from modelpress.package.manifest import LIBRARY_NAME, MANIFEST_NAME, PIPELINE_NAME, FileEntry, Manifest
from modelpress.pipeline import Pipeline
from modelpress.protect.encrypt import MAGIC, read_header

__all__ = ["build_package"]


def build_package(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    pipeline: Pipeline | str | os.PathLike[str] | None = None,
    steps: collections.abc.Iterable[collections.abc.Mapping[str, typing.Any]] = (),
    metrics: collections.abc.Mapping[str, typing.Any] | None = None,
    key_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a package folder at ``out_dir`` from a model file and an optional pipeline.

    Args:
        model_path: A plain ONNX file or an encrypted ``.mpe`` file (recognized by signature).
        out_dir: The package folder to create.
        pipeline: A ``Pipeline`` (written as YAML) or the path of a ``pipeline.yaml`` (validated,
            then copied byte for byte so comments survive).
        steps: The steps applied to the model, each ``{"step": name, **parameters}``.
        metrics: Measured metrics, name -> JSON value (numpy scalars are accepted).
        key_id: Id of the key of an encrypted model; read from its header when omitted, and
            checked against it when given.
        overwrite: Replace an existing package (or empty folder) at ``out_dir``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        UsageError: ``out_dir`` exists (without ``overwrite``) or is not a package, a step has
            no name, a step or metric is not JSON, or ``key_id`` does not match the model.
        ModelLoadError: the model cannot be read. ProtectionError: its ``.mpe`` header is bad.
        PackageError: the model uses external data files.
        ModelSaveError: the package cannot be written (nothing is left at ``out_dir``).
    """
    dest = Path(out_dir)
    _check_destination(dest, overwrite)
    model_bytes, model_name, key_id = _read_model(Path(model_path), key_id)
    files = {model_name: model_bytes}
    library = _read_library(Path(model_path), model_bytes)
    if library is not None:
        files[LIBRARY_NAME] = library
    if pipeline is not None:
        files[PIPELINE_NAME] = _pipeline_bytes(pipeline)
    manifest = Manifest(
        model=model_name,
        files={name: FileEntry.of_bytes(data) for name, data in files.items()},
        pipeline=PIPELINE_NAME if pipeline is not None else None,
        steps=tuple(_json_value(dict(step), f"steps[{i}]") for i, step in enumerate(steps)),
        metrics=_json_value(dict(metrics or {}), "metrics"),
        key_id=key_id,
    )
    for i, step in enumerate(manifest.steps):
        if not isinstance(step.get("step"), str) or not step["step"]:
            raise UsageError(
                f"steps[{i}]: each step needs a name, e.g. {{'step': 'optimize', ...}}, got {step}"
            )
    files[MANIFEST_NAME] = manifest.to_json().encode("utf-8")
    _write_atomically(dest, files, overwrite)
    return dest


def _check_destination(dest: Path, overwrite: bool) -> None:
    if not (dest.exists() or dest.is_symlink()):
        return
    if not overwrite:
        raise UsageError(f"{dest} already exists; use --force (overwrite=True) to replace it")
    if dest.is_symlink() or not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a package folder; remove it or choose another -o")
    if any(dest.iterdir()) and not (dest / MANIFEST_NAME).is_file():
        raise UsageError(
            f"{dest} holds files but no {MANIFEST_NAME}: it is not a package, so --force will not delete "
            "it; choose another -o"
        )


def _read_model(path: Path, key_id: str | None) -> tuple[bytes, str, str | None]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the model: {e}") from e
    if data.startswith(MAGIC):
        found = read_header(data).key_id.hex()
        if key_id is not None and key_id != found:
            raise UsageError(f"{path}: encrypted with key {found}, not key_id {key_id}")
        return data, "model.mpe", found
    if key_id is not None:
        raise UsageError(f"{path}: key_id given, but the model is not encrypted (.mpe)")
    if data.startswith(MPZ_MAGIC):
        load_compressed(data)  # every check of the container, and a decodable graph
        return data, "model.mpz", None
    io.load(path)  # untrusted input: a clear error naming the file when it is not a sound model
    try:
        io.load(data)
    except ModelLoadError as e:  # loads from its folder but not alone: it needs external data files
        raise PackageError(
            f"{path}: the model keeps weights in external data files; a package holds one model file: "
            "save it with its weights inline (under 2 GiB) or encrypt it to .mpe"
        ) from e
    return data, "model.onnx", None


def _read_library(path: Path, model_bytes: bytes) -> bytes | None:
    """The operator library beside an obfuscated model (``MODEL.mplib``), or None.

    Raises:
        PackageError: a plain model that needs a library has none beside it.
    """
    from modelpress.protect.obfuscate.library import has_library, library_path

    beside = library_path(path)
    if beside.is_file():
        try:
            return beside.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"{beside}: cannot read the operator library: {e}") from e
    # Encrypted models are checked when run; .mpz files do not carry opaque operators (not supported).
    plain = not model_bytes.startswith((MAGIC, MPZ_MAGIC))
    if plain and has_library(io.load(model_bytes)):
        raise PackageError(
            f"{path}: the model is obfuscated into opaque operators, but its library {beside.name} is not "
            "beside it; keep the two files together"
        )
    return None


def _pipeline_bytes(pipeline: Pipeline | str | os.PathLike[str]) -> bytes:
    if isinstance(pipeline, Pipeline):
        return pipeline.to_yaml().encode("utf-8")
    Pipeline.from_yaml(pipeline)  # validate every step before it goes into a package
    try:
        return Path(pipeline).read_bytes()
    except OSError as e:
        raise UsageError(f"{pipeline}: cannot read the pipeline: {e}") from e


def _json_value(value: dict[str, typing.Any], where: str) -> dict[str, typing.Any]:
    """``value`` as plain JSON types (numpy scalars and arrays converted), or UsageError."""

    def convert(item: object) -> object:
        if isinstance(item, np.generic | np.ndarray):
            return item.tolist()
        raise TypeError(f"{type(item).__name__} is not JSON")

    try:
        result: dict[str, typing.Any] = json.loads(json.dumps(value, default=convert, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise UsageError(
            f"{where}: must hold JSON values (finite numbers, strings, lists, dicts): {e}"
        ) from e
    return result


def _write_atomically(dest: Path, files: dict[str, bytes], overwrite: bool) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    except OSError as e:
        raise ModelSaveError(f"{dest}: cannot create the package folder: {e}") from e
    try:
        for name, data in files.items():
            with (staged / name).open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        staged.chmod(0o755)  # mkdtemp makes 0700; a package is meant to be read by a server
        _swap(staged, dest, overwrite)
    except OSError as e:
        raise ModelSaveError(f"{dest}: cannot write the package: {e}") from e
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _swap(staged: Path, dest: Path, overwrite: bool) -> None:
    """Rename ``staged`` to ``dest``; an old ``dest`` is moved aside first and restored on failure."""
    if not (overwrite and dest.exists()):
        os.rename(staged, dest)  # fails on a non-empty folder that appeared meanwhile
        return
    old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.old")
    os.rename(dest, old)
    try:
        os.rename(staged, dest)
    except OSError:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
