"""``modelpress quantize``: static int8 QDQ (calibrated), weight-only int8, dynamic int8 or fp16.

Parses options into a ``QuantSpec``, runs ``quantize_file`` with a progress bar on stderr
during calibration and the error measurement, and prints the report (or ``--json``).
Library errors map to exit codes as everywhere (2 usage, 3 unreadable model, 4 unsupported
model, 9 bad calibration data); nothing is written on failure.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelpress.cli._output import console, emit, err_console, fail
from modelpress.errors import ModelpressError

__all__ = ["quantize", "register"]

_MODE_HELP = (
    "static: int8 weights + calibrated uint8/int8 activations (fast CNNs); weight-only: int8 weights only "
    "(small); dynamic: int8 MatMul/Gemm weights, activations quantized at run time (transformers, no "
    "data; Conv stays float); fp16: float16 weights/activations, inputs/outputs float32, --calib adds a "
    "range check; bf16: refused (onnxruntime CPU has no bfloat16 kernels)."
)
_FP16_TARGET_HELP = (
    "fp16 mode: cpu converts only ops onnxruntime's CPU provider runs in float16 (on x86: none of "
    "MatMul/Conv, so only weights shrink); any converts every op not on the block list (CUDA, ARM64)."
)
_CALIB_HELP = "Folder of .npy/.npz calibration files (one sample or a batch each; .npz keys = input names)."
_CALIBRATOR_HELP = "How activation ranges are chosen: minmax, percentile, entropy (KL) or mse."
_ACT_HELP = "Activation dtype; default uint8 on x86 (U8S8 kernels), int8 elsewhere."


def register(app: typer.Typer) -> None:
    """Add ``quantize`` to the ``modelpress`` command line."""
    app.command()(quantize)


def quantize(
    model: Annotated[Path, typer.Argument(help="Float32 ONNX model (never modified).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the quantized model.")],
    mode: Annotated[str, typer.Option(help=_MODE_HELP)] = "static",
    calib: Annotated[Path | None, typer.Option("--calib", help=_CALIB_HELP)] = None,
    num_samples: Annotated[
        int | None, typer.Option("--num-samples", help="Use at most this many calibration samples.")
    ] = None,
    calibrator: Annotated[str, typer.Option(help=_CALIBRATOR_HELP)] = "minmax",
    percentile: Annotated[float, typer.Option(help="Percentile of --calibrator percentile.")] = 99.999,
    per_channel: Annotated[
        bool, typer.Option("--per-channel/--per-tensor", help="One weight scale per output channel.")
    ] = True,
    activation_type: Annotated[str | None, typer.Option("--activation-type", help=_ACT_HELP)] = None,
    reduce_range: Annotated[
        bool,
        typer.Option("--reduce-range", help="7-bit weights (AVX2 CPUs without VNNI saturate otherwise)."),
    ] = False,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Node name to keep in float (repeatable).")
    ] = None,
    upgrade_opset: Annotated[
        bool,
        typer.Option("--upgrade-opset", help="Convert a model below opset 13 first instead of refusing it."),
    ] = False,
    fp16_target: Annotated[str, typer.Option("--fp16-target", help=_FP16_TARGET_HELP)] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Quantize a float32 model (int8 or float16) and report size, kernels and output error.

    The output is checked before it is written: it must load in onnxruntime, and its error
    against the float model is measured on the calibration data (without data: on random
    inputs). Nothing is written when anything fails.
    """
    from modelpress.quantize import QuantSpec, quantize_file
    from modelpress.quantize.spec import default_activation_dtype

    try:
        spec = QuantSpec(
            mode=mode,  # type: ignore[arg-type]
            activation_dtype=activation_type or default_activation_dtype(),
            per_channel=per_channel,
            reduce_range=reduce_range,
            calibrator=calibrator,
            percentile=percentile,
            exclude_nodes=frozenset(exclude or ()),
            fp16_target=fp16_target,
        )
        with _progress(enabled=not as_json) as progress:
            report = quantize_file(
                model,
                output,
                spec,
                calib_dir=calib,
                num_samples=num_samples,
                upgrade_opset=upgrade_opset,
                progress=progress,
            )
    except ModelpressError as e:
        raise fail(e) from e
    emit(report, as_json, _print_report)


@contextlib.contextmanager
def _progress(*, enabled: bool) -> Any:
    """A callback for ``quantize_file`` drawing one bar per phase on stderr (None when off)."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def advance(phase: str, samples: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(f"{phase} (samples)", total=total)
            bar.advance(tasks[phase], samples)

        yield advance


def _print_report(report: Any) -> None:
    spec = report.spec
    header = f"[bold]quantize --mode {report.mode}[/]"
    if report.mode == "static":
        header += f" --calibrator {spec['calibrator']}: {report.calibration_samples} calibration samples"
        header += f" in {report.calibration_seconds:.2f} s"
    console.print(header, highlight=False)
    converted = "float16" if report.mode == "fp16" else "quantized"
    table = Table("op", converted, "float32", title="nodes by op type")
    for op, counts in report.op_counts.items():
        table.add_row(escape(op), str(counts["quantized"]), str(counts["float"]))
    console.print(table)
    inserted = report.inserted
    if report.mode == "fp16":
        console.print(
            f"float16 nodes: {inserted['float16_nodes']}, float16 weights: {inserted['float16_weights']} "
            f"({inserted['float16_stored_weights']} stored float16 for float32 ops), "
            f"Casts: {inserted['casts']}",
            highlight=False,
        )
    elif report.mode == "dynamic":
        console.print(
            f"weights int8: {inserted['int8_weights']} "
            f"({'per channel' if spec['per_channel'] else 'per tensor'}), "
            f"DynamicQuantizeLinear: {inserted['dynamic_quantize_inputs']}",
            highlight=False,
        )
    else:
        _print_int8(inserted, spec)
    _print_tail(report)


def _print_int8(inserted: Any, spec: Any) -> None:
    console.print(
        f"weights int8: {inserted['int8_weights']} "
        f"({'per channel' if spec['per_channel'] else 'per tensor'}), "
        f"biases int32: {inserted['int32_biases']}, "
        f"activation Q/DQ pairs: {inserted['activation_qdq_pairs']} "
        f"({spec['activation_dtype']})",
        highlight=False,
    )


def _print_tail(report: Any) -> None:
    kernels = ", ".join(f"{op.split('::')[-1]} {n}" for op, n in report.integer_kernels.items()) or "none"
    console.print(f"onnxruntime integer kernels (ENABLE_ALL): {escape(kernels)}", highlight=False)
    before, after = report.file_bytes_before, report.file_bytes_after
    console.print(
        f"size: {before / 2**20:.2f} MiB -> {after / 2**20:.2f} MiB ({after / before:.2f}x)", highlight=False
    )
    errors = Table(
        "output",
        "max abs error",
        "max rel error",
        "top-1 agreement",
        title=f"error vs float: {report.eval_data}, {report.eval_samples} samples",
    )
    for error in report.errors:
        agreement = "-" if error.top1_agreement is None else f"{error.top1_agreement:.2%}"
        errors.add_row(escape(error.name), f"{error.max_abs:.3g}", f"{error.max_rel:.3g}", agreement)
    console.print(errors)
    for note in report.notes:
        console.print(f"[yellow]note[/]: {escape(note)}", highlight=False)
    for node, reason in list(report.skipped.items())[:10]:
        console.print(f"[yellow]kept in float[/]: {escape(node)}: {escape(reason)}", highlight=False)
    if len(report.skipped) > 10:
        console.print(f"[yellow]... and {len(report.skipped) - 10} more nodes kept in float (see --json)[/]")
    console.print(f"written: {escape(str(report.output_path))}  ({report.seconds:.2f} s)", highlight=False)
