"""``modelpress prune``, ``compress`` and ``decompress``: Deep Compression and the ``.mpz`` file.

``prune`` writes a standard ``.onnx`` whose smallest weights are zero; ``compress`` prunes,
shares weights (k-means codebooks) and Huffman-codes them into an ``.mpz`` that
``modelpress run`` decodes in memory; ``decompress`` turns an ``.mpz`` back into ``.onnx``.
Post-training, each prints the output error it measured against the input model on random
inputs. ``compress --retrain`` instead takes the torch model and labelled data and retrains
after pruning and after sharing (``compress.retrain``), with a progress bar per epoch. Exit
codes as everywhere (2 usage, 3 unreadable model, 9 bad data, 11 damaged ``.mpz``); nothing
is written on failure.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelpress.cli._output import console, emit, err_console, fail
from modelpress.errors import ModelpressError, UsageError

if TYPE_CHECKING:
    from modelpress.compress.finetune import EpochProgress, FinetuneReport

__all__ = ["compress", "decompress", "prune", "register"]

_SPARSITY_HELP = (
    "Fraction of each Conv/Gemm/MatMul weight to zero, smallest |w| first, in [0, 1). Han et al. pruned "
    "50-90 % but retrained afterwards; without retraining (as here) check the reported error."
)
_COMPRESS_SPARSITY_HELP = (
    _SPARSITY_HELP + " 0 (default) only shares weights. With --retrain the network is retrained after "
    "pruning (the paper: 0.8-0.9 for fully-connected layers)."
)
_STRUCTURED_HELP = (
    "'channels': remove whole hidden channels (the --sparsity fraction of each channel group with the "
    "smallest producer-filter L1 norm): a smaller, faster model, with more accuracy loss."
)
_MIN_CHANNELS_HELP = "--structured: channel groups with fewer channels are left alone (stems, heads)."
_MULTIPLE_OF_HELP = (
    "--structured: keep a multiple of this many channels per group (rounding down). onnxruntime's CPU "
    "kernels work in blocks of 8: at --sparsity 0.25, kept counts like 12 or 24 made small CNNs up to 15 % "
    "slower, multiples of 8 9-16 % faster. 1 keeps the exact fraction."
)
_MIN_ELEMENTS_HELP = "Weights with fewer values are left alone (small first convs and heads are sensitive)."
_CONV_BITS_HELP = "Codebook bits of Conv/ConvTranspose weights, 1-8 (2**bits shared values; the paper: 8)."
_FC_BITS_HELP = "Codebook bits of Gemm/MatMul weights, 1-8 (the paper: 5 for fully-connected layers)."
_EMBEDDING_BITS_HELP = (
    "Codebook bits of Gather tables (embeddings), 1-8; shared, never pruned (not in the paper)."
)
_DIM_HELP = "Size of a dynamic dim for the error check, NAME=SIZE (repeatable; '*=N' for all; default 2)."
_SOURCE_HELP = (
    "ONNX model (never modified). With --retrain: the torch model as `modelpress convert` takes it, "
    "package.module:factory or a saved .pt/.pth module."
)
_RETRAIN_HELP = (
    "Retrain as Han et al. did: prune + retrain, share + fine-tune the centroids (torch, needs --data), "
    "then export (verified against torch) and store the retrained weights exactly."
)
_DATA_HELP = "--retrain: folder of .npz files, each with the input array and 'labels' (integer classes)."
_EXAMPLE_HELP = "--retrain: the input NAME=1x3x224x224 (default: the input array of the first --data file)."
_TRUST_HELP = (
    "--retrain: load a saved .pt/.pth module (a pickle: it runs code from the file; trusted files only)."
)
_RETRAIN_DEFAULTS = {"--prune-epochs": 8, "--share-epochs": 4, "--lr": 1e-3}


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
    structured: Annotated[str | None, typer.Option("--structured", help=_STRUCTURED_HELP)] = None,
    min_channels: Annotated[int, typer.Option("--min-channels", help=_MIN_CHANNELS_HELP)] = 8,
    multiple_of: Annotated[int, typer.Option("--multiple-of", min=1, help=_MULTIPLE_OF_HELP)] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Magnitude-prune Conv/Gemm/MatMul weights per layer (unstructured, no fine-tuning).

    The output is a standard ONNX model of the same size (zeros are stored densely; `modelpress
    compress --sparsity` stores only the kept values). With `--structured channels` whole
    hidden channels are removed instead (the lowest-L1 filters of each channel group), so the
    model really shrinks. Its output error against the input on random inputs is reported, not
    checked.
    """
    from modelpress.compress import prune_channels_file, prune_file

    try:
        _check_options(sparsity, min_elements)
        if structured is None:
            report: Any = prune_file(
                model, output, sparsity, min_elements=min_elements, dim_values=_dims(dim)
            )
        elif structured == "channels":
            report = prune_channels_file(
                model,
                output,
                sparsity,
                min_channels=min_channels,
                multiple_of=multiple_of,
                dim_values=_dims(dim),
            )
        else:
            raise UsageError(f"--structured '{structured}' is not supported; the only choice is 'channels'")
    except ModelpressError as e:
        raise fail(e) from e
    emit(report, as_json, _print_prune if structured is None else _print_prune_channels)


def compress(
    model: Annotated[str, typer.Argument(help=_SOURCE_HELP, metavar="SRC")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .mpz file.")],
    sparsity: Annotated[float, typer.Option(help=_COMPRESS_SPARSITY_HELP)] = 0.0,
    conv_bits: Annotated[int, typer.Option("--conv-bits", help=_CONV_BITS_HELP)] = 8,
    fc_bits: Annotated[int, typer.Option("--fc-bits", help=_FC_BITS_HELP)] = 5,
    embedding_bits: Annotated[int, typer.Option("--embedding-bits", help=_EMBEDDING_BITS_HELP)] = 8,
    min_elements: Annotated[int, typer.Option("--min-elements", help=_MIN_ELEMENTS_HELP)] = 1024,
    dim: Annotated[list[str] | None, typer.Option(help=_DIM_HELP)] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help=_RETRAIN_HELP)] = False,
    data: Annotated[Path | None, typer.Option("--data", help=_DATA_HELP)] = None,
    example_input: Annotated[
        list[str] | None, typer.Option("--example-input", "-i", help=_EXAMPLE_HELP)
    ] = None,
    prune_epochs: Annotated[
        int | None, typer.Option("--prune-epochs", help="--retrain: epochs after pruning.", show_default="8")
    ] = None,
    share_epochs: Annotated[
        int | None, typer.Option("--share-epochs", help="--retrain: centroid epochs.", show_default="4")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="--retrain: Adam learning rate.", show_default="1e-3")
    ] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=_TRUST_HELP)] = False,
    threads: Annotated[int | None, typer.Option(min=1, help=THREADS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Deep Compression into an .mpz: prune, share weights (k-means), Huffman-code.

    Han et al. 2016's three stages, post-training by default. The .mpz is decoded again and run
    against the input on random inputs (onnxruntime, optimizations off); the error is reported.
    With --retrain (a torch SRC and labelled --data) it retrains after pruning and after sharing
    first, and reports training accuracy around each phase.
    `modelpress run/bench/serve` load .mpz files in memory; `modelpress decompress` gives ONNX.
    """
    from modelpress.compress import compress_file

    retrain_options = {"--prune-epochs": prune_epochs, "--share-epochs": share_epochs, "--lr": lr}
    try:
        _check_options(
            sparsity,
            min_elements,
            (conv_bits, "--conv-bits"),
            (fc_bits, "--fc-bits"),
            (embedding_bits, "--embedding-bits"),
        )
        if retrain:
            options: dict[str, Any] = {"sparsity": sparsity, "conv_bits": conv_bits, "fc_bits": fc_bits}
            options |= {"embedding_bits": embedding_bits, "min_elements": min_elements}
            options |= {"example_inputs": example_input or [], "trust_pickle": trust_pickle}
            with torch_threads(threads):
                result = _retrain(model, output, data, dim, retrain_options, as_json, **options)
            emit(result, as_json, _print_retrained)
            return
        retrain_only = {"--data": data, "--example-input": example_input, **retrain_options}
        stray = [name for name, value in retrain_only.items() if value is not None]
        stray += ["--trust-pickle"] if trust_pickle else []
        stray += ["--threads"] if threads is not None else []
        if stray:
            raise UsageError(f"{', '.join(stray)} only apply with --retrain; add --retrain or drop them")
        report = compress_file(
            Path(model),
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


THREADS_HELP = (
    "torch threads for training (default: torch's own choice, all cores). Small models train "
    "faster on 1, especially on a busy machine."
)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> collections.abc.Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (None: unchanged), then restore."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _retrain(
    model: str,
    output: Path,
    data: Path | None,
    dim: list[str] | None,
    training: dict[str, Any],
    as_json: bool,
    **options: Any,
) -> _Retrained:
    """``compress --retrain``: check what only the CLI can, then retrain with a progress bar."""
    from modelpress.compress.retrain import retrain_and_compress

    if dim:
        raise UsageError("--dim does not apply with --retrain (the export's batch dim is checked at 2)")
    if data is None:
        raise UsageError(
            "--retrain needs labelled training data: pass --data DIR (.npz files with the input array "
            "and 'labels')"
        )
    given = {k: _RETRAIN_DEFAULTS[k] if v is None else v for k, v in training.items()}
    with _epoch_progress(enabled=not as_json) as progress:
        report, finetune = retrain_and_compress(
            model,
            output,
            data,
            prune_epochs=int(given["--prune-epochs"]),
            share_epochs=int(given["--share-epochs"]),
            lr=float(given["--lr"]),
            progress=progress,
            **options,
        )
    return _Retrained(report, finetune)


@dataclasses.dataclass(frozen=True)
class _Retrained:
    """What ``compress --retrain`` did: the usual compress report plus the retraining phases."""

    compress: Any  # CompressReport
    retrain: FinetuneReport

    def to_json(self) -> dict[str, Any]:
        return {**self.compress.to_json(), "retrain": self.retrain.to_json()}


@contextlib.contextmanager
def _epoch_progress(
    *, enabled: bool
) -> collections.abc.Iterator[collections.abc.Callable[[EpochProgress], None] | None]:
    """A callback for ``retrain_and_compress`` drawing one bar of epochs per phase on stderr."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    labels = {"prune": "retraining the pruned network", "share": "fine-tuning the centroids"}
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def advance(epoch: EpochProgress) -> None:
            if epoch.phase not in tasks:
                tasks[epoch.phase] = bar.add_task(labels.get(epoch.phase, epoch.phase), total=epoch.epochs)
            description = (
                f"{labels.get(epoch.phase, epoch.phase)} (epochs; loss {epoch.loss:.3f}, "
                f"train acc {epoch.accuracy:.1%})"
            )
            bar.update(tasks[epoch.phase], completed=epoch.epoch, description=description)

        yield advance


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


def _print_prune_channels(report: Any) -> None:
    table = Table("group", "channels", "kept", "producers", "consumers", "note", title="prune channels")
    for group in report.groups:
        table.add_row(
            escape(group.label),
            str(group.channels_before),
            str(group.channels_after),
            str(len(group.producers)),
            str(len(group.consumers)),
            escape(group.skipped),
        )
    console.print(table)
    before, after = report.parameters_before, report.parameters_after
    console.print(
        f"removed {report.removed_channels:,} channels (sparsity {report.sparsity:g} per group); "
        f"parameters {before:,} -> {after:,} ({after / max(before, 1):.1%}); "
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


def _print_retrained(result: _Retrained) -> None:
    finetune = result.retrain
    title = f"retrain: sparsity {finetune.sparsity:g}, bits {finetune.conv_bits} conv / {finetune.fc_bits} fc"
    table = Table(
        "phase",
        "epochs",
        "train acc before",
        "after pruning / sharing",
        "after retraining",
        "seconds",
        title=title,
    )
    names = {"prune": "prune + retrain", "share": "share + fine-tune centroids"}
    for phase in finetune.phases:
        table.add_row(
            names.get(phase.name, phase.name),
            str(phase.epochs),
            f"{phase.accuracy_start:.2%}",
            f"{phase.accuracy_compressed:.2%}",
            f"{phase.accuracy_end:.2%}",
            f"{phase.seconds:.2f}",
        )
    console.print(table)
    retrained = sum(1 for layer in finetune.layers if not layer.skipped)
    console.print(
        f"retrained {retrained} of {len(finetune.layers)} Conv/Linear weights in {finetune.seconds:.2f} s "
        "(smaller ones left alone); export verified against torch",
        highlight=False,
    )
    _print_compress(result.compress)
