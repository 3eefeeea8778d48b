"""``modelpress keygen`` and ``modelpress protect``: key files and encrypted models (``.mpe``).

Keys are never printed: commands show the key *id* (16 hex digits derived from the key), which
is enough to tell keys apart. ``--obfuscate`` applies the library-free, zero-cost transforms
(channel permutation, positive rescaling, name anonymization); ``--obfuscate --opaque`` also
compresses key subgraphs into opaque operators with scrambled weights, decoys and anonymous
op types, whose implementations go to an operator library ``OUT.mplib`` beside ``OUT``
(encrypted when a key is given; ``modelpress run --mode runtime|transport`` merges it back).
Obfuscation seeds are secret like keys (they invert the permutation) and are never printed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from modelpress.cli._output import console, err_console, fail
from modelpress.errors import ModelpressError, UsageError

if TYPE_CHECKING:  # importing modelpress.protect loads onnx_ir (0.3 s): only when a key is used
    from modelpress.protect.keys import KeySource

__all__ = ["KEY_ENV_HELP", "KEY_FILE_HELP", "key_source", "register"]

KEY_FILE_HELP = "Key file (from `modelpress keygen`: 64 hex digits; also raw 32 bytes or base64)."
KEY_ENV_HELP = "Environment variable holding the key as hex or base64 text."


def register(app: typer.Typer) -> None:
    """Add ``keygen`` and ``protect`` to the ``modelpress`` command line."""
    app.command()(keygen)
    app.command()(protect)


def key_source(key_file: Path | None, key_env: str | None, *, required: bool) -> KeySource | None:
    """The key source named by ``--key-file`` / ``--key-env`` (at most one of them).

    Warns on stderr (never showing the key) when the key file is readable by group or others.

    Raises:
        UsageError: both options were given, or neither while ``required``.
    """
    from modelpress.protect.keys import KeySource, key_file_warning

    if key_file is not None and key_env is not None:
        raise UsageError("give the key once: either --key-file or --key-env, not both")
    if key_file is not None:
        warning = key_file_warning(key_file)
        if warning is not None:
            err_console.print(f"[yellow]warning[/]: {escape(warning)}", highlight=False, soft_wrap=True)
        return KeySource.from_file(key_file)
    if key_env is not None:
        return KeySource.from_env(key_env)
    if required:
        raise UsageError(
            "a key is needed: --key-file FILE (create one with `modelpress keygen`) or --key-env VAR"
        )
    return None


def keygen(
    output: Annotated[Path, typer.Option("-o", "--output", help="Key file to create (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file at --output.")] = False,
) -> None:
    """Create a new random 256-bit key file; the key itself is never printed."""
    from modelpress.protect.keys import generate_key, key_id, write_key_file

    try:
        key = generate_key()
        path = write_key_file(output, key, overwrite=force)
        identity = key_id(key)
    except ModelpressError as e:
        raise fail(e) from e
    del key
    console.print(
        f"wrote a new 256-bit key to {escape(str(path))} (mode 0600), key id {identity}; "
        "keep it secret and backed up: without it, files encrypted with it cannot be read",
        highlight=False,
    )


def protect(
    model: Annotated[Path, typer.Argument(help="ONNX model to protect (never modified).")],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Protected file to write: .mpe with --encrypt, else .onnx (--opaque adds OUT.mplib).",
        ),
    ],
    encrypt: Annotated[
        bool, typer.Option("--encrypt", help="Encrypt with AES-256-GCM into an .mpe file.")
    ] = False,
    obfuscate: Annotated[
        bool,
        typer.Option(
            "--obfuscate",
            help="Permute and rescale hidden channels and anonymize names: same outputs, same speed, "
            "runs on stock onnxruntime (add --opaque for opaque operators).",
        ),
    ] = False,
    opaque: Annotated[
        bool,
        typer.Option(
            "--opaque",
            help="With --obfuscate: also compress key subgraphs (Conv+BN+Relu, MatMul+Add+GELU, attention, "
            "LayerNorm) into opaque operators, scramble their weights, add decoys and anonymize op types. "
            "The operators go to an operator library OUT.mplib beside OUT (encrypted when a key is given); "
            "`modelpress run/serve/bench` find it there. Run with `modelpress run OUT --mode runtime` "
            "(opaque graph) or `--mode transport` (original graph restored in memory).",
        ),
    ] = False,
    strength: Annotated[
        str, typer.Option(help="Obfuscation: low (names), medium (+ permutation), high (+ rescaling).")
    ] = "high",
    seed: Annotated[
        int | None, typer.Option(help="Obfuscation seed for reproducible output (secret; default: random).")
    ] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help=KEY_FILE_HELP)] = None,
    key_env: Annotated[str | None, typer.Option("--key-env", help=KEY_ENV_HELP)] = None,
    chunk_bytes: Annotated[
        int, typer.Option("--chunk-bytes", help="Plaintext bytes per encrypted chunk (256 B to 64 MiB).")
    ] = 4 * 2**20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Protect a model: obfuscate it, encrypt it into an .mpe file, or both.

    --obfuscate writes an .onnx (or, with --encrypt, an .mpe) whose hidden channels are
    permuted and rescaled and whose names are meaningless; it is checked on onnxruntime to
    give the same outputs (rtol 1e-5) before anything is written. --obfuscate --opaque also
    writes OUT.mplib, the operator library the model needs (with --key-file it is encrypted;
    with --encrypt the model is too); both run modes are checked before writing.
    --encrypt writes an .mpe
    holding the whole model (external-data weights included) in authenticated chunks; an .mpz
    (`modelpress compress`) is encrypted as it is, its weights still coded;
    `modelpress run OUT.mpe --key-file K` runs it. Wrong keys and damaged or tampered files are
    refused with exit code 7.
    """
    from modelpress.protect.encrypt import encrypt_model

    try:
        if opaque and not obfuscate:
            raise UsageError("--opaque is a kind of obfuscation: add --obfuscate")
        if not (encrypt or obfuscate):
            raise UsageError("choose a protection: --encrypt, --obfuscate, or both")
        if obfuscate and _is_compressed(model):
            raise UsageError(
                f"{model} is a Deep Compression .mpz: obfuscate the .onnx first, then compress it "
                "(an .mpz can be encrypted: --encrypt alone)"
            )
        source = key_source(key_file, key_env, required=encrypt)
        started = time.perf_counter()
        protected: object = model
        obfuscation = None
        if obfuscate:
            protected, obfuscation = _obfuscate(model, strength, seed, opaque)
            if opaque:
                from modelpress.protect.obfuscate import write_obfuscated

                files = write_obfuscated(
                    protected,  # type: ignore[arg-type]
                    output,
                    source,
                    encrypt=encrypt,
                    chunk_bytes=chunk_bytes,
                )
                _print_obfuscation(model, output, obfuscation, time.perf_counter() - started, as_json, files)
                return
            if not encrypt:
                from modelpress.ir import io

                io.save(protected, output)  # type: ignore[arg-type]
                _print_obfuscation(model, output, obfuscation, time.perf_counter() - started, as_json)
                return
        header = encrypt_model(protected, output, source, chunk_bytes=chunk_bytes)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
    except ModelpressError as e:
        raise fail(e) from e
    if obfuscation is not None and not as_json:
        _print_obfuscation(model, output, obfuscation, seconds, as_json=False)
    report = {
        "input": str(model),
        "output": str(output),
        "format_version": header.version,
        "key_id": header.key_id.hex(),
        "plaintext_bytes": header.plaintext_bytes,
        "file_bytes": header.file_bytes,
        "chunk_bytes": header.chunk_bytes,
        "chunks": header.chunk_count,
        "seconds": round(seconds, 3),
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console.print(
        f"encrypted {escape(str(model))} -> {escape(str(output))}: {header.plaintext_bytes / 2**20:.2f} MiB "
        f"of model in {header.chunk_count} chunks, file {header.file_bytes / 2**20:.2f} MiB "
        f"(+{header.file_bytes - header.plaintext_bytes} bytes), key id {header.key_id.hex()}, "
        f"{seconds:.2f} s",
        highlight=False,
    )


def _is_compressed(model: Path) -> bool:
    from modelpress.compress.mpz import is_compressed

    return is_compressed(model)


def _obfuscate(model: Path, strength: str, seed: int | None, opaque: bool = False) -> tuple[object, object]:
    """Load, obfuscate a copy, check it against the original (both run modes); return (model, report)."""
    import secrets

    from modelpress.ir import io
    from modelpress.protect.obfuscate import obfuscate_model, restore_original, verify_obfuscation

    original = io.load(model)
    chosen = secrets.randbits(63) if seed is None else seed
    obfuscated, report = obfuscate_model(original.clone(), seed=chosen, strength=strength, opaque=opaque)
    verify_obfuscation(original, obfuscated)  # runtime mode: the functions are still inside
    if opaque:
        verify_obfuscation(original, restore_original(obfuscated.clone()))  # transport mode
    return obfuscated, report


def _print_obfuscation(
    model: Path, output: Path, report: object, seconds: float, as_json: bool, files: object = None
) -> None:
    data = report.to_json()  # type: ignore[attr-defined]
    data.pop("seed", None)  # secret: it inverts the permutation
    summary = {"input": str(model), "output": str(output), "seconds": round(seconds, 3), **data}
    if files is not None:
        summary["library"] = str(files.library)  # type: ignore[attr-defined]
        summary["model_bytes"] = files.model_bytes  # type: ignore[attr-defined]
        summary["library_bytes"] = files.library_bytes  # type: ignore[attr-defined]
        summary["library_encrypted"] = files.library_encrypted  # type: ignore[attr-defined]
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    console.print(
        f"obfuscated {escape(str(model))} (strength {data['strength']}): {data['groups']} channel groups, "
        f"{data['permuted']} permuted, {data['rescaled']} rescaled, names anonymized; outputs checked "
        f"equal on onnxruntime (rtol 1e-5); {seconds:.2f} s",
        highlight=False,
    )
    if files is not None:
        console.print(
            f"  {len(data['regions'])} subgraphs compressed into opaque operators, weights scrambled, decoys "
            f"added, op types anonymized (runtime and transport modes checked); wrote {escape(str(output))} "
            f"({summary['model_bytes'] / 2**20:.2f} MiB) and its operator library "
            f"{escape(str(summary['library']))} ({summary['library_bytes'] / 2**20:.2f} MiB, "
            f"{'encrypted' if summary['library_encrypted'] else 'NOT encrypted: add --key-file to encrypt'})",
            highlight=False,
        )
    for reason in data["left_alone"][:10]:
        console.print(f"  left alone: {escape(reason)}", highlight=False)
