"""``modelpress convert``: PyTorch / scikit-learn -> verified ONNX (registered by ``cli.main``)."""

from __future__ import annotations

import contextlib
import typing
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelpress.cli._output import console, emit, fail
from modelpress.errors import ModelpressError

if typing.TYPE_CHECKING:
    from modelpress.convert import ConversionReport

__all__ = ["register"]

_SOURCE_HELP = (
    "package.module:factory (a function returning an nn.Module or a fitted scikit-learn estimator; "
    "the current folder is importable), a saved PyTorch module (.pt/.pth, torch.save(module)), a "
    "joblib/pickle estimator (.joblib/.pkl), or an .onnx file."
)
_EXAMPLE_HELP = (
    "Example input NAME=1x3x224x224[:float32], once per forward() argument in order (repeatable). "
    "Required for PyTorch; optional for scikit-learn (default input=16xFEATURES)."
)
_TRUST_HELP = (
    "Load a saved .pt/.pth/.joblib/.pkl file. These are pickles: unpickling runs any code the "
    "file contains, so pass this only for files you trust."
)


def convert(
    source: Annotated[str, typer.Argument(help=_SOURCE_HELP, metavar="SRC")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the ONNX model.")],
    example_input: Annotated[
        list[str] | None, typer.Option("--example-input", "-i", help=_EXAMPLE_HELP)
    ] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=_TRUST_HELP)] = False,
    static_batch: Annotated[
        bool, typer.Option("--static-batch", help="Keep the example's batch size fixed (PyTorch).")
    ] = False,
    output_name: Annotated[
        list[str] | None, typer.Option("--output-name", help="Graph output name, in order (repeatable).")
    ] = None,
    rtol: Annotated[
        float, typer.Option(min=0.0, help="Largest accepted error relative to each output's scale.")
    ] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed of the random example inputs.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Convert a PyTorch or scikit-learn model to ONNX (opset 17, dynamic batch) and verify it.

    The ONNX model runs on onnxruntime against the source framework on seeded random example
    inputs (and on a second batch size, to check the dynamic batch). It is written only when
    every output matches: max relative error <= --rtol; scikit-learn classifiers: equal labels
    and probabilities within 1e-5. An operator the exporter cannot convert is named, exit code 8.
    """
    from modelpress.convert import convert_file

    try:
        status = console.status(f"converting {source} ...") if not as_json else contextlib.nullcontext()
        with status:
            report = convert_file(
                source,
                output,
                example_inputs=example_input or [],
                trust_pickle=trust_pickle,
                dynamic_batch=not static_batch,
                output_names=output_name or None,
                rtol=rtol,
                seed=seed,
            )
    except ModelpressError as e:
        raise fail(e) from e
    emit(report, as_json, _print_report)


def _print_report(report: ConversionReport) -> None:
    console.print(
        f"[bold]{escape(report.source)}[/] ({escape(report.framework)}) -> ONNX: {report.nodes} nodes, "
        f"{report.file_bytes / 2**20:.2f} MiB, {report.seconds:.2f} s",
        highlight=False,
    )
    interface = Table("", "name", "dtype", "shape", title="interface")
    for kind, values in (("input", report.inputs), ("output", report.outputs)):
        for value in values:
            shape = "?" if value.shape is None else escape(str(value.shape))
            interface.add_row(kind, escape(value.name), escape(value.dtype), shape)
    console.print(interface)
    if not report.checks:
        console.print("[yellow]not verified: the source is already ONNX (validated and re-saved)[/]")
    else:
        checks = Table(
            "output", "inputs", "max abs", "max rel", "allowed", "", title="verified on onnxruntime"
        )
        for check in report.checks:
            checks.add_row(
                escape(check.output),
                escape(check.feed),
                f"{check.max_abs:.2e}",
                f"{check.max_rel:.2e}",
                escape(check.tolerance),
                "[green]OK[/]" + (f" ({escape(check.note)})" if check.note else ""),
            )
        console.print(checks)
    console.print(f"written: {escape(report.output_path)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``convert`` command to ``app``."""
    app.command()(convert)
