"""Run a model file, plain (``.onnx``), encrypted (``.mpe``) or compressed (``.mpz``), on given inputs.

This is the library side of ``modelpress run``. An encrypted file is recognized by its
signature (not its extension) and decrypted in memory with ``modelpress.protect``: onnxruntime
gets the graph as bytes and the weights as views of the decrypted buffer (no copy), and the
plaintext never touches the disk. A Deep Compression file (``.mpz``, ``modelpress.compress``)
is recognized by its signature too and decoded in memory the same way: the graph as bytes, the
weights as views of one decoded buffer. A plain file is validated with
``modelpress.ir.io.load`` (it is untrusted input) and opened by path, so external data works.
Arrays are read from ``.npy`` files without ever unpickling, and outputs are written
atomically as ``.npy`` (one output) or ``.npz`` (any number).

A model obfuscated into opaque operators (``protect --obfuscate --opaque``) needs the operator
library written beside it (``MODEL.mplib``, see ``modelpress.protect.obfuscate.library``): it is
found there, checked against the model, decrypted with the same key when encrypted, and
merged in memory. ``mode="runtime"`` runs the opaque graph (onnxruntime inlines the
operators), ``mode="transport"`` restores the original graph in memory first.
"""

from __future__ import annotations

import collections.abc
import os
import tempfile
import typing
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from modelpress.compress.mpz import MAGIC as MPZ_MAGIC
from modelpress.compress.mpz import is_compressed, load_compressed
from modelpress.errors import ProtectionError, UsageError
from modelpress.ir import io
from modelpress.protect.encrypt import MAGIC, decrypt_model, is_encrypted
from modelpress.protect.keys import Key
from modelpress.protect.obfuscate.library import LIBRARY_METADATA, MODES, attach_library, has_library
from modelpress.runtime.session import OptLevel, choose_providers, create_session, run_session

__all__ = ["bind_inputs", "load_array", "open_model_session", "run_model_file", "save_outputs"]

Arrays = collections.abc.Mapping[str, np.ndarray]


def open_model_session(
    path: str | os.PathLike[str] | bytes,
    key: Key | None = None,
    *,
    level: OptLevel = "all",
    threads: int | None = None,
    where: str | None = None,
    mode: str = "runtime",
    library: str | os.PathLike[str] | bytes | None = None,
    inter_op_threads: int = 1,
    providers: str | list[str] = "cpu",
) -> ort.InferenceSession:
    """An onnxruntime session for a model file; ``.mpe`` / ``.mpz`` files are decoded in memory.

    Args:
        path: A plain ONNX file, an encrypted ``.mpe`` or a compressed ``.mpz`` file, or the
            bytes of any of them (a
            package passes the bytes it has just verified, so that what runs is what was hashed).
        key: The key of an encrypted file or operator library (bytes or a ``KeySource``);
            ignored for plain files.
        level: onnxruntime graph optimization level (``all`` for deployment).
        threads: intra-op threads (None lets onnxruntime choose).
        where: The name used in messages (defaults to the path, or ``<bytes>``).
        mode: For a model with an operator library: ``runtime`` (the opaque graph, library
            merged in memory) or ``transport`` (the original graph restored in memory).
            Ignored for other models.
        library: The operator library (path or bytes) when it is not beside ``path``.
        inter_op_threads: Threads for independent graph branches (1: sequential).
        providers: ``auto`` (accelerators this onnxruntime build has, then the CPU), a
            provider name or a list (see ``runtime.session.choose_providers``); ``cpu`` default.

    Raises:
        UsageError: an unknown ``mode``.
        ProtectionError: the file is encrypted and no key, a wrong key or a damaged file was
            given; or its operator library is missing, altered, from another model, or
            encrypted and the key is missing or wrong.
        ModelLoadError: the (decrypted) model cannot be read or loaded by onnxruntime.
        CompressionError: an ``.mpz`` file is damaged, truncated or not a valid container.
    """
    if mode not in MODES:
        raise UsageError(f"unknown run mode '{mode}'; choose one of: {', '.join(MODES)}")
    chosen = choose_providers(providers)

    def session(
        model: ir.Model | bytes | str | os.PathLike[str],
        external: collections.abc.Mapping[str, np.ndarray] | None = None,
    ) -> ort.InferenceSession:
        return create_session(
            model,
            level=level,
            threads=threads,
            inter_op_threads=inter_op_threads,
            providers=chosen,
            external_initializers=external,
        )

    if isinstance(path, bytes):
        where, encrypted, compressed = where or "<bytes>", path.startswith(MAGIC), path.startswith(MPZ_MAGIC)
    else:
        where, encrypted, compressed = where or str(path), is_encrypted(path), is_compressed(path)
    if compressed:
        graph, weights = load_compressed(path)
        return session(graph, weights)
    model_path = None if isinstance(path, bytes) else path
    if encrypted:
        if key is None:
            raise ProtectionError(
                f"{where}: the model is encrypted (.mpe); give its key with --key-file or --key-env"
            )
        decrypted = decrypt_model(path, key)  # the only decryption, library or not
        if LIBRARY_METADATA.encode() not in decrypted.model_bytes:
            return session(decrypted.model_bytes, decrypted.external_initializers)
        model = decrypted.to_model()
        del decrypted  # the weights are inline in ``model`` now: free the decrypted buffer
    else:
        model = io.load(path)
        if not has_library(model):
            return session(path)
    attach_library(model, model_path=model_path, key=key, library=library, mode=mode)
    return session(model)


def run_model_file(
    path: str | os.PathLike[str],
    inputs: collections.abc.Sequence[np.ndarray] | Arrays = (),
    key: Key | None = None,
    *,
    named: Arrays | None = None,
    level: OptLevel = "all",
    threads: int | None = None,
    mode: str = "runtime",
) -> dict[str, np.ndarray]:
    """Run a model file once and return every output by name.

    Args:
        path: A plain ONNX file or an encrypted ``.mpe`` file.
        inputs: Arrays for the model's inputs in order (a sequence), or by name (a mapping).
        key: The key of an encrypted file.
        named: Arrays by input name; positional ``inputs`` then fill the remaining inputs in
            the model's order (like ``f(*inputs, **named)``).
        level: onnxruntime graph optimization level.
        threads: intra-op threads (None lets onnxruntime choose).
        mode: ``runtime`` or ``transport`` for a model with an operator library (see
            ``open_model_session``).

    Raises:
        UsageError: an input name is unknown, too many or too few arrays were given.
        ProtectionError: see ``open_model_session``.
        ModelLoadError: the model cannot be loaded.
        InvalidModelError: onnxruntime failed while running (wrong dtype or shape of a feed).
    """
    session = open_model_session(path, key, level=level, threads=threads, mode=mode)
    names = [value.name for value in session.get_inputs()]
    if isinstance(inputs, collections.abc.Mapping):
        named, inputs = {**inputs, **(named or {})}, ()
    feeds = bind_inputs(names, list(inputs), dict(named or {}))
    return {name: np.asarray(value) for name, value in run_session(session, feeds).items()}


def load_array(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one array from a ``.npy`` file; pickled (object) arrays are refused, never loaded.

    Raises:
        UsageError: the file is missing, not a ``.npy`` array, or holds Python objects.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such input file") from None
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(
            f"{path}: not a readable .npy array ({e}); save inputs with numpy.save (no Python objects)"
        ) from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise UsageError(f"{path}: holds several arrays (.npz); give one .npy file per input")
    return array


def save_outputs(outputs: Arrays, path: str | os.PathLike[str]) -> Path:
    """Write outputs atomically: ``.npy`` for exactly one output, ``.npz`` for any number.

    Raises:
        UsageError: the suffix is neither ``.npy`` nor ``.npz``, ``.npy`` was asked for several
            outputs, or the file cannot be written.
    """
    dest = Path(path)
    if dest.suffix not in (".npy", ".npz"):
        raise UsageError(f"{dest}: outputs are written as .npy (one output) or .npz; use one of those")
    if dest.suffix == ".npy" and len(outputs) != 1:
        raise UsageError(
            f"{dest}: the model has {len(outputs)} outputs ({', '.join(outputs)}); a .npy holds one, use .npz"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp") as tmp:
            staged = Path(tmp) / dest.name
            with staged.open("wb") as file:
                if dest.suffix == ".npy":
                    np.save(file, next(iter(outputs.values())), allow_pickle=False)
                else:
                    np.savez(file, **dict(outputs))  # type: ignore[arg-type]  # numpy stubs: names typed as bool
            os.replace(staged, dest)
    except (OSError, ValueError) as e:
        raise UsageError(f"{dest}: cannot write the outputs: {e}") from e
    return dest


def bind_inputs(
    names: list[str], positional: list[typing.Any], named: dict[str, typing.Any]
) -> dict[str, typing.Any]:
    """Bind inputs to the model's input ``names``, like ``f(*positional, **named)``.

    Raises:
        UsageError: a name is not one of ``names``, or more positional inputs than free names.
    """
    unknown = [name for name in named if name not in names]
    if unknown:
        raise UsageError(
            f"the model has no input named {', '.join(unknown)}; its inputs are {', '.join(names) or 'none'}"
        )
    free = [name for name in names if name not in named]
    if len(positional) > len(free):
        raise UsageError(
            f"{len(positional)} unnamed inputs given, but only {len(free)} model inputs are left to fill "
            f"({', '.join(free) or 'none'}); name them as NAME=FILE"
        )
    return {**named, **dict(zip(free[: len(positional)], positional, strict=True))}
