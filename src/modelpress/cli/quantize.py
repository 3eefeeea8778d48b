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
    "static: int8 weights + calibrated uint8/int8 activations (fast CNNs); weight-only: int8 (or "
    "--bits 4) weights only (small); dynamic: int8 MatMul/Gemm weights, activations quantized at run "
    "time (transformers, no data; Conv stays float); fp16: float16 weights/activations, inputs/outputs "
    "float32, --calib adds a range check; bf16: weights stored bfloat16 (half size, float32 range), "
    "cast to float32 at load (onnxruntime CPU has no bfloat16 kernels)."
)
_FP16_TARGET_HELP = (
    "fp16 mode: cpu converts only ops onnxruntime's CPU provider runs in float16 (on x86: none of "
    "MatMul/Conv, so only weights shrink); any converts every op not on the block list (CUDA, ARM64)."
)
_BITS_HELP = "Weight bits: 8, or 4 with --mode weight-only (block-wise MatMul/Gemm weights and embeddings)."
_FORMAT_HELP = (
    "4-bit format: ort (onnxruntime's MatMulNBits/GatherBlockQuantized kernels) or qdq (standard "
    "blocked DequantizeLinear, opset 21; portable, slower)."
)
_ALGORITHM_HELP = (
    "4-bit levels: rtn (round to nearest, no data, same weights as onnxruntime's quantizer) or gptq "
    "(minimizes each layer's output error on --calib data; more accurate)."
)
_CALIB_HELP = "Folder of .npy/.npz calibration files (one sample or a batch each; .npz keys = input names)."
_CALIBRATOR_HELP = "How activation ranges are chosen: minmax, percentile, entropy (KL) or mse."
_ACT_HELP = "Activation dtype; default uint8 on x86 (U8S8 kernels), int8 elsewhere."
_PIPELINE_HELP = (
    "pipeline.yaml whose input steps (decode_image, resize, center_crop, to_tensor, normalize) turn the "
    "images of --calib DIR (and --eval DIR) into model inputs."
)
_BIAS_HELP = "Static: subtract from each Conv/Gemm bias the mean shift its weight rounding causes."
_VARIANCE_HELP = "With --bias-correction: also match each output channel's variance (per-channel weights)."
_MAX_DROP_HELP = (
    "Accuracy-aware static mode: allowed metric drop (0.01 = 1 point of top-1); the fewest nodes are kept "
    "float to meet it. The best model found is always written; exit code 6 when the budget is not met."
)
_EVAL_HELP = (
    "Eval folder for --max-drop: .npz files with the input arrays and an optional integer 'labels' array "
    "(without labels the float model's outputs are the reference), or images with --calib-pipeline."
)
_METRIC_HELP = "auto (accuracy with labels, else cosine), accuracy, agreement (top-1 vs float) or cosine."
# Exit code when the accuracy budget is not met (the best model is written all the same):
# NumericMismatchError's code, the model is outside its numeric contract.
_BUDGET_NOT_MET_EXIT = 6


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
        typer.Option(
            "--upgrade-opset",
            help="Convert a model below the opset the mode needs (13; 21 for --format qdq) first.",
        ),
    ] = False,
    fp16_target: Annotated[str, typer.Option("--fp16-target", help=_FP16_TARGET_HELP)] = "cpu",
    float_stem: Annotated[
        bool,
        typer.Option(
            "--float-stem",
            help="Static: keep the first conv on the image input (<= 4 channels) and its activation "
            "float; faster int8 CNNs on x86 (mobilenetv2_like b8 1.37x -> 1.53x).",
        ),
    ] = False,
    bits: Annotated[int, typer.Option("--bits", help=_BITS_HELP)] = 8,
    block_size: Annotated[
        int, typer.Option("--block-size", help="4-bit: weights per block (a power of 2, >= 16).")
    ] = 32,
    symmetric: Annotated[
        bool,
        typer.Option(
            "--symmetric/--asymmetric", help="4-bit: zero-point-free blocks, or a zero point per block."
        ),
    ] = True,
    weight_format: Annotated[str, typer.Option("--format", help=_FORMAT_HELP)] = "ort",
    weight_algorithm: Annotated[str, typer.Option("--algorithm", help=_ALGORITHM_HELP)] = "rtn",
    accuracy_level: Annotated[
        int,
        typer.Option(
            "--accuracy-level",
            help="4-bit ort format: MatMulNBits accuracy_level (0 float activations; 4 int8, faster).",
        ),
    ] = 0,
    calib_pipeline: Annotated[Path | None, typer.Option("--calib-pipeline", help=_PIPELINE_HELP)] = None,
    bias_correction: Annotated[bool, typer.Option("--bias-correction", help=_BIAS_HELP)] = False,
    variance_correction: Annotated[bool, typer.Option("--variance-correction", help=_VARIANCE_HELP)] = False,
    max_drop: Annotated[float | None, typer.Option("--max-drop", help=_MAX_DROP_HELP)] = None,
    eval_dir: Annotated[Path | None, typer.Option("--eval", help=_EVAL_HELP)] = None,
    eval_metric: Annotated[str, typer.Option("--eval-metric", help=_METRIC_HELP)] = "auto",
    eval_output: Annotated[
        str | None, typer.Option("--eval-output", help="Output the --max-drop metric reads (default: first).")
    ] = None,
    float_embeddings: Annotated[
        bool,
        typer.Option(
            "--float-embeddings",
            help="dynamic: keep Gather (embedding) tables float32 (default: int8, one scale per row).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Quantize a float32 model (int8, int4, float16, bfloat16) and report size, kernels and error.

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
            float_stem=float_stem,
            bits=bits,
            block_size=block_size,
            symmetric_weights=symmetric,
            weight_format=weight_format,
            weight_algorithm=weight_algorithm,
            accuracy_level=accuracy_level,
            bias_correction=bias_correction,
            variance_correction=variance_correction,
            quantize_embeddings=not float_embeddings,
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
                calib_pipeline=calib_pipeline,
                eval_dir=eval_dir,
                max_drop=max_drop,
                eval_metric=eval_metric,
                eval_output=eval_output,
            )
    except ModelpressError as e:
        raise fail(e) from e
    emit(report, as_json, _print_report)
    accuracy = report.accuracy
    if accuracy is not None and not accuracy.met:
        err_console.print(
            f"[bold red]accuracy budget not met[/]: {accuracy.metric} drop {accuracy.drop:.3g} > "
            f"--max-drop {accuracy.max_drop:g} even with {len(accuracy.kept_float)} node(s) in float; the "
            f"best model found was written to {escape(str(output))}",
            highlight=False,
        )
        raise typer.Exit(_BUDGET_NOT_MET_EXIT)


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
                label = phase if phase.endswith(")") else f"{phase} (samples)"
                tasks[phase] = bar.add_task(label, total=total)
            bar.advance(tasks[phase], samples)

        yield advance


def _print_report(report: Any) -> None:
    spec = report.spec
    header = f"[bold]quantize --mode {report.mode}[/]"
    if report.mode == "static":
        header += f" --calibrator {spec['calibrator']}: {report.calibration_samples} calibration samples"
        header += f" in {report.calibration_seconds:.2f} s"
    console.print(header, highlight=False)
    converted = {"fp16": "float16", "bf16": "bfloat16 weights"}.get(report.mode, "quantized")
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
    elif report.mode == "bf16":
        console.print(
            f"bfloat16 weights: {inserted['bfloat16_weights']}, Casts: {inserted['casts']}", highlight=False
        )
    elif "int4_matmul_weights" in inserted:
        console.print(
            f"weights int4: MatMul/Gemm {inserted['int4_matmul_weights']}, Gather "
            f"{inserted['int4_gather_tables']} (blocks of {spec['block_size']}, "
            f"{'symmetric' if spec['symmetric_weights'] else 'asymmetric'}, {spec['weight_format']}, "
            f"{spec['weight_algorithm']})",
            highlight=False,
        )
    elif report.mode == "dynamic":
        console.print(
            f"weights int8: {inserted['int8_weights']} "
            f"({'per channel' if spec['per_channel'] else 'per tensor'}), "
            f"DynamicQuantizeLinear: {inserted['dynamic_quantize_inputs']}, MatMul groups packed: "
            f"{inserted['packed_matmul_groups']}, int8 Gather tables: {inserted['int8_gather_tables']}",
            highlight=False,
        )
    else:
        _print_int8(inserted, spec)
    _print_bias_correction(report.bias_correction)
    _print_accuracy(report.accuracy)
    _print_tail(report)


def _print_bias_correction(result: Any) -> None:
    if result is None:
        return
    console.print(
        f"bias correction: {len(result.corrected)} node(s) corrected"
        + (f", variance corrected: {len(result.variance_corrected)}" if result.variance_corrected else ""),
        highlight=False,
    )
    table = Table("output", "mean error before", "mean error after", title="output mean error vs float")
    for name, before in result.mean_error_before.items():
        table.add_row(escape(name), f"{before:.3g}", f"{result.mean_error_after[name]:.3g}")
    console.print(table)
    for node, reason in result.skipped.items():
        console.print(f"[yellow]bias not corrected[/]: {escape(node)}: {escape(reason)}", highlight=False)


def _print_accuracy(result: Any) -> None:
    if result is None:
        return
    table = Table(
        "node",
        "op",
        "output error",
        "gain if float",
        "loss if alone",
        "precision",
        "why",
        title=f"accuracy-aware: {result.metric} of '{escape(result.output)}', {result.eval_samples} samples",
    )

    def number(x: float | None) -> str:
        return "-" if x is None else f"{x + 0.0:.3g}"  # + 0.0: no "-0"

    for layer in result.layers:
        precision = "[yellow]float32[/]" if layer.kept_float else "int8"
        table.add_row(
            escape(layer.node),
            layer.op_type,
            number(layer.output_error),
            number(layer.gain_if_float),
            number(layer.loss_if_alone),
            precision,
            escape(layer.reason),
        )
    console.print(table)
    verdict = "[green]met[/]" if result.met else "[bold red]NOT met[/]"
    console.print(
        f"{result.metric}: float {result.float_metric:.4f}, all int8 {result.int8_metric:.4f}, "
        f"final {result.final_metric:.4f} (drop {result.drop:.3g}, budget {result.max_drop:g}: {verdict}); "
        f"{len(result.kept_float)} node(s) kept float, {result.candidates} candidate models in "
        f"{result.seconds:.2f} s",
        highlight=False,
    )


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
