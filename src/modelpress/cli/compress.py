"""``modelpress prune``, ``compress`` and ``decompress``: Deep Compression and the ``.mpz`` file.

``prune`` writes a standard ``.onnx`` whose smallest weights are zero; ``compress`` prunes,
shares weights (k-means codebooks) and Huffman-codes them into an ``.mpz`` that
``modelpress run`` decodes in memory; ``decompress`` turns an ``.mpz`` back into ``.onnx``.
None of them fine-tunes (post-training): each prints the output error it measured against
the input model on random inputs. Exit codes as everywhere (2 usage, 3 unreadable model,
11 damaged ``.mpz``); nothing is written on failure.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelpress.cli._output import console, emit, fail
from modelpress.errors import ModelpressError, UsageError

__all__ = ["compress", "decompress", "prune", "register"]

_SPARSITY_HELP = (
    "Fraction of each Conv/Gemm/MatMul weight to zero, smallest |w| first, in [0, 1). Han et al. pruned "
    "50-90 % but retrained afterwards; without retraining (as here) check the reported error."
)
_COMPRESS_SPARSITY_HELP = _SPARSITY_HELP + " 0 (default) only shares weights."
_MIN_ELEMENTS_HELP = "Weights with fewer values are left alone (small first convs and heads are sensitive)."
_CONV_BITS_HELP = "Codebook bits of Conv/ConvTranspose weights, 1-8 (2**bits shared values; the paper: 8)."
_FC_BITS_HELP = "Codebook bits of Gemm/MatMul weights, 1-8 (the paper: 5 for fully-connected layers)."
_EMBEDDING_BITS_HELP = (
    "Codebook bits of Gather tables (embeddings), 1-8; shared, never pruned (not in the paper)."
)
_DIM_HELP = "Size of a dynamic dim for the error check, NAME=SIZE (repeatable; '*=N' for all; default 2)."


def register(app: typer.Typer) -> None:
    """Add ``prune``, ``compress`` and ``decompress`` to the ``modelpress`` command line."""
    app.command()(prune)
    app.command()(compress)
    app.command()(decompress)


def _check_options(sparsity: float, min_elements: int, *bits: tuple[int, str]) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise UsageError(f"--sparsity {sparsity:g} is out of range; give a fraction in [0, 1), e.g. 0.5")
    if min_elements < 1:
        raise UsageError(f"--min-elements {min_elements} must be >= 1")
    for value, option in bits:
        if not 1 <= value <= 8:
            raise UsageError(
                f"{option} {value} is out of range; give 1 to 8 (the paper: 8 for Conv, 5 for FC)"
            )


def _dims(specs: list[str] | None) -> dict[str, int]:
    dims = {}
    for spec in specs or []:
        name, _, size = spec.partition("=")
        if not name or not size.isdigit():
            raise UsageError(f"--dim '{spec}' must look like NAME=SIZE, e.g. batch=1 (or *=1 for all)")
        dims[name] = int(size)
    return dims


def prune(
    model: Annotated[Path, typer.Argument(help="ONNX model (never modified).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the pruned .onnx model.")],
    sparsity: Annotated[float, typer.Option(help=_SPARSITY_HELP)] = 0.5,
    min_elements: Annotated[int, typer.Option("--min-elements", help=_MIN_ELEMENTS_HELP)] = 1024,
    dim: Annotated[list[str] | None, typer.Option(help=_DIM_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Magnitude-prune Conv/Gemm/MatMul weights per layer (unstructured, no fine-tuning).

    The output is a standard ONNX model of the same size (zeros are stored densely; `modelpress
    compress --sparsity` stores only the kept values). Its output error against the input on
    random inputs is reported, not checked.
    """
    from modelpress.compress import prune_file

    try:
        _check_options(sparsity, min_elements)
        report = prune_file(model, output, sparsity, min_elements=min_elements, dim_values=_dims(dim))
    except ModelpressError as e:
        raise fail(e) from e
    emit(report, as_json, _print_prune)


def compress(
    model: Annotated[Path, typer.Argument(help="ONNX model (never modified).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .mpz file.")],
    sparsity: Annotated[float, typer.Option(help=_COMPRESS_SPARSITY_HELP)] = 0.0,
    conv_bits: Annotated[int, typer.Option("--conv-bits", help=_CONV_BITS_HELP)] = 8,
    fc_bits: Annotated[int, typer.Option("--fc-bits", help=_FC_BITS_HELP)] = 5,
    embedding_bits: Annotated[int, typer.Option("--embedding-bits", help=_EMBEDDING_BITS_HELP)] = 8,
    min_elements: Annotated[int, typer.Option("--min-elements", help=_MIN_ELEMENTS_HELP)] = 1024,
    dim: Annotated[list[str] | None, typer.Option(help=_DIM_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Deep Compression into an .mpz: prune, share weights (k-means), Huffman-code (no fine-tuning).

    Han et al. 2016's three stages, post-training. The .mpz is decoded again and run against
    the input on random inputs (onnxruntime, optimizations off); the error is reported.
    `modelpress run/bench/serve` load .mpz files in memory; `modelpress decompress` gives ONNX.
    """
    from modelpress.compress import compress_file

    try:
        _check_options(
            sparsity,
            min_elements,
            (conv_bits, "--conv-bits"),
            (fc_bits, "--fc-bits"),
            (embedding_bits, "--embedding-bits"),
        )
        report = compress_file(
            model,
            output,
            sparsity=sparsity,
            conv_bits=conv_bits,
            fc_bits=fc_bits,
            embedding_bits=embedding_bits,
            min_elements=min_elements,
            dim_values=_dims(dim),
        )
    except ModelpressError as e:
        raise fail(e) from e
    emit(report, as_json, _print_compress)


def decompress(
    model: Annotated[Path, typer.Argument(help=".mpz file written by `modelpress compress`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .onnx model.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Decode an .mpz file into a standard ONNX model (the shared weights, exactly)."""
    from modelpress.compress import decompress_file

    start = time.perf_counter()
    try:
        path = decompress_file(model, output)
        sizes = (model.stat().st_size, path.stat().st_size)
    except ModelpressError as e:
        raise fail(e) from e
    except OSError as e:
        raise fail(UsageError(f"{output}: cannot read the written file: {e}")) from e
    emit(_Decompressed(str(path), *sizes, time.perf_counter() - start), as_json, _print_decompressed)


@dataclasses.dataclass(frozen=True)
class _Decompressed:
    """What ``decompress`` wrote (the report ``emit`` prints or dumps)."""

    output_path: str
    mpz_bytes: int
    onnx_bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _print_decompressed(result: _Decompressed) -> None:
    console.print(
        f"written: {escape(result.output_path)}  {result.mpz_bytes / 2**10:.1f} KiB .mpz -> "
        f"{result.onnx_bytes / 2**10:.1f} KiB .onnx ({result.seconds:.2f} s)",
        highlight=False,
    )


def _error_line(comparison: Any) -> str:
    return (
        f"output error vs input (random inputs, onnxruntime): max rel {comparison.max_rel:.3g}, "
        f"max abs {comparison.max_abs:.3g}"
    )


def _print_prune(report: Any) -> None:
    table = Table("node", "op", "tensor", "elements", "sparsity before", "after", "note", title="prune")
    for layer in report.layers:
        table.add_row(
            escape(layer.node),
            layer.op_type,
            escape(layer.tensor),
            f"{layer.elements:,}",
            f"{layer.sparsity_before:.1%}",
            f"{layer.sparsity_after:.1%}",
            escape(layer.skipped),
        )
    console.print(table)
    console.print(
        f"pruned {report.pruned_elements:,} values (sparsity {report.sparsity:g} per layer); "
        + _error_line(report.comparison),
        highlight=False,
    )
    console.print(f"written: {escape(str(report.output_path))}  ({report.seconds:.2f} s)", highlight=False)


def _print_compress(report: Any) -> None:
    table = Table(
        "tensor", "op", "elements", "sparsity", "bits", "encoding", "bytes", "bits/weight", title="compress"
    )
    for tensor in report.tensors:
        table.add_row(
            escape(tensor.name),
            tensor.op_type or "-",
            f"{tensor.elements:,}",
            f"{tensor.sparsity:.1%}",
            "-" if tensor.bits is None else str(tensor.bits),
            f"{tensor.encoding} ({', '.join(sorted(set(tensor.methods.values())))})",
            f"{tensor.encoded_bytes:,}",
            f"{tensor.bits_per_weight:.2f}",
        )
    console.print(table)
    console.print(
        f"size: {report.original_bytes / 2**10:.1f} KiB -> {report.compressed_bytes / 2**10:.1f} KiB "
        f"({report.ratio:.2f}x smaller); {_error_line(report.comparison)}",
        highlight=False,
    )
    console.print(
        f"written: {escape(str(report.output_path))}  (encode {report.encode_seconds:.2f} s, "
        f"decode {report.decode_seconds:.3f} s)",
        highlight=False,
    )
