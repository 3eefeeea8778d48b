"""The obfuscated operator library: a file beside the model that holds the opaque operators.

``protect --obfuscate --opaque`` writes two files (issue 4, step 6)::

    OUT.onnx  (or OUT.mpe)   the model: opaque nodes, scrambled weights, no function bodies
    OUT.mplib                the library: the functions (bodies and decoding constants)

The library is an ONNX model with an empty graph whose ``functions`` are the opaque
operators. With a key it is an ``.mpe`` container (AES-256-GCM, ``modelpress.protect.encrypt``);
without one it is plain ONNX. Both files are written atomically, the library first.

The model is bound to its library: its metadata entry ``LIBRARY_METADATA`` holds the
library's SHA-256 (of the file as written) and whether it is encrypted. Loading checks, in
this order, and raises ``ProtectionError`` naming the file: the library exists; its digest
matches (else it was altered or belongs to another model); a key was given for an encrypted
one; the key is right and the container intact (``encrypt``'s checks); every opaque node of
the model has its function in the library.

Run modes (``attach_library``): ``runtime`` merges the functions into the model in memory and
onnxruntime inlines them; ``transport`` also restores the original graph in memory
(``restore.restore_original``) and runs it as plain ONNX.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import onnx_ir as ir

from modelpress.errors import ModelLoadError, ProtectionError, UsageError
from modelpress.ir import io
from modelpress.protect.encrypt import decrypt_model_bytes, encrypt_model
from modelpress.protect.keys import Key
from modelpress.protect.obfuscate.restore import restore_original

__all__ = [
    "LIBRARY_METADATA",
    "LIBRARY_SUFFIX",
    "MODES",
    "RunMode",
    "WrittenFiles",
    "attach_library",
    "has_library",
    "library_path",
    "split_library",
    "write_obfuscated",
]

LIBRARY_SUFFIX = ".mplib"
LIBRARY_METADATA = "modelpress.operator_library"
RunMode = Literal["runtime", "transport"]
MODES: tuple[str, ...] = ("runtime", "transport")
_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class WrittenFiles:
    """What ``write_obfuscated`` wrote.

    Attributes:
        model: The model file (``.onnx``, or ``.mpe`` when encrypted).
        library: The operator library file.
        model_bytes: Size of the model file.
        library_bytes: Size of the library file.
        library_encrypted: Whether the library is an ``.mpe`` container.
    """

    model: Path
    library: Path
    model_bytes: int
    library_bytes: int
    library_encrypted: bool


def library_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the library of ``model_path`` lives: the same folder and stem, suffix ``.mplib``."""
    return Path(model_path).with_suffix(LIBRARY_SUFFIX)


def has_library(model: ir.Model) -> bool:
    """Whether ``model`` was written with an operator library it needs to run."""
    return LIBRARY_METADATA in model.metadata_props


def split_library(model: ir.Model) -> ir.Model:
    """Move the functions of ``model`` (in place) into a new library model, which is returned."""
    graph = ir.Graph([], [], nodes=[], opset_imports=dict(model.opset_imports), name="library")
    library = ir.Model(graph, ir_version=model.ir_version, functions=list(model.functions.values()))
    model.functions.clear()
    return library


def write_obfuscated(
    model: ir.Model,
    path: str | os.PathLike[str],
    key: Key | None = None,
    *,
    encrypt: bool = False,
    chunk_bytes: int | None = None,
) -> WrittenFiles:
    """Write an obfuscated model (functions inside) as model file + library file.

    Args:
        model: The obfuscated model with its opaque operators as model-local functions; it is
            not modified (a clone is split).
        path: The model file; the library goes to ``library_path(path)``.
        key: Encrypts the library (and, with ``encrypt``, the model) when given.
        encrypt: Also encrypt the model into an ``.mpe`` container (needs ``key``).
        chunk_bytes: Chunk size of the ``.mpe`` containers (default of ``encrypt_model``).

    Raises:
        UsageError: ``encrypt`` without a key, or a model path that is its own library path.
        ProtectionError: the key is unusable.
        ModelSaveError: a file could not be written (each file is replaced atomically).
    """
    dest, lib = Path(path), library_path(path)
    if dest == lib:
        raise UsageError(f"{dest}: the model cannot be named *{LIBRARY_SUFFIX}: that is its library's name")
    if encrypt and key is None:
        raise UsageError("encrypting the obfuscated model needs a key (--key-file or --key-env)")
    work = model.clone()
    library = split_library(work)
    options = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    if key is not None:
        encrypt_model(library, lib, key, **options)
    else:
        io.save(library, lib, external_data=False)
    digest = hashlib.sha256(lib.read_bytes()).hexdigest()
    work.metadata_props[LIBRARY_METADATA] = json.dumps(
        {"format": _FORMAT, "sha256": digest, "encrypted": key is not None}, sort_keys=True
    )
    if encrypt:
        encrypt_model(work, dest, key, **options)  # type: ignore[arg-type]
    else:
        io.save(work, dest, external_data=False)
    return WrittenFiles(dest, lib, dest.stat().st_size, lib.stat().st_size, key is not None)


def attach_library(
    model: ir.Model,
    *,
    model_path: str | os.PathLike[str] | None,
    key: Key | None = None,
    library: str | os.PathLike[str] | bytes | None = None,
    mode: str = "runtime",
) -> ir.Model:
    """Give an obfuscated ``model`` (in place) what it needs to run in ``mode``.

    Args:
        model: A model written by ``write_obfuscated`` (``has_library`` is true).
        model_path: Its file, to find the library beside it (None when it came as bytes).
        key: The library's key, if it is encrypted.
        library: The library's path or bytes, instead of the one beside ``model_path``.
        mode: ``runtime`` (functions merged, onnxruntime inlines them) or ``transport``
            (the original graph restored: functions inlined, weights decoded, decoys removed).

    Raises:
        UsageError: an unknown mode.
        ProtectionError: missing, altered or foreign library, missing or wrong key, or a
            library that lacks an operator the model calls.
    """
    if mode not in MODES:
        raise UsageError(f"unknown run mode '{mode}'; choose one of: {', '.join(MODES)}")
    binding = _binding(model)
    data, where = _read_library(model_path, library)
    if hashlib.sha256(data).hexdigest() != binding["sha256"]:
        raise ProtectionError(
            f"{where}: this operator library does not match the model (SHA-256 differs): it was altered, "
            "or it belongs to another model; use the .mplib file protect wrote with this model"
        )
    functions = _library_functions(data, where, key, encrypted=bool(binding.get("encrypted")))
    missing = sorted(
        {f"{n.domain}::{n.op_type}" for n in model.graph if n.domain and n.op_identifier() not in functions}
    )
    if missing:
        raise ProtectionError(
            f"{where}: the operator library lacks {len(missing)} operator(s) the model calls"
        )
    model.functions.update(functions)
    for function in functions.values():
        model.opset_imports.setdefault(function.domain, 1)
    model.metadata_props.pop(LIBRARY_METADATA, None)
    return restore_original(model) if mode == "transport" else model


def _binding(model: ir.Model) -> dict[str, Any]:
    try:
        binding: dict[str, Any] = json.loads(model.metadata_props[LIBRARY_METADATA])
        if binding.get("format") != _FORMAT or not isinstance(binding.get("sha256"), str):
            raise ValueError(binding.get("format"))
    except (KeyError, ValueError, AttributeError) as e:
        raise ProtectionError(
            f"the model's operator-library entry is missing or of an unknown format ({e}); "
            "re-create the model with this version of modelpress"
        ) from None
    return binding


def _read_library(
    model_path: str | os.PathLike[str] | None, library: str | os.PathLike[str] | bytes | None
) -> tuple[bytes, str]:
    if isinstance(library, bytes | bytearray | memoryview):
        return bytes(library), "<library bytes>"
    if library is None and model_path is None:
        raise ProtectionError(
            "the model is obfuscated with an operator library, and it came as bytes: give the library "
            "(library=PATH) since it cannot be looked up beside the model"
        )
    path = Path(library) if library is not None else library_path(model_path)  # type: ignore[arg-type]
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise ProtectionError(
            f"{path}: operator library not found; an obfuscated model runs only with the {LIBRARY_SUFFIX} "
            "file protect wrote beside it: copy it next to the model"
        ) from None
    except OSError as e:
        raise ProtectionError(f"{path}: cannot read the operator library ({e.strerror or e})") from None


def _library_functions(
    data: bytes, where: str, key: Key | None, *, encrypted: bool
) -> dict[ir.OperatorIdentifier, ir.Function]:
    if encrypted:
        if key is None:
            raise ProtectionError(
                f"{where}: the operator library is encrypted; give its key with --key-file or --key-env"
            )
        data = decrypt_model_bytes(data, key)
    try:
        return dict(io.load(data).functions)
    except ModelLoadError as e:
        raise ProtectionError(
            f"{where}: the operator library is not a valid ONNX function library: {e}"
        ) from e
