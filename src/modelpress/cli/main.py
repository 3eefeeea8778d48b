"""``modelpress`` command line (typer + rich).

Only this module prints or exits. Library errors (``ModelpressError``) become a one-line red
message on stderr and the error class's exit code (2 usage, 3 unreadable model, 4/5 pass
failures, 6 numeric mismatch, 7 protection, 8 conversion, 9 calibration data, 10 package,
11 compressed container); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from modelpress.cli._output import console, emit, fail
from modelpress.errors import ModelpressError, UsageError

app = typer.Typer(
    name="modelpress",
    help="Take a trained model to deployment: convert, optimize, quantize, protect and run ONNX models, "
    "each step verified on onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown: a docstring's paragraphs are re-flowed to the terminal (the default keeps the
    # source's line breaks and then wraps again, leaving ragged half lines).
    rich_markup_mode="markdown",
)
# Each further verb lives in its own module under cli/ and adds itself with register(app),
# called below (explicitly: nothing registers on import).
_fail = fail


@app.command()
def info(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show a model's opset, inputs/outputs, op histogram, parameter count and size."""
    from modelpress.ir import io
    from modelpress.ir.stats import model_stats

    try:
        stats = model_stats(io.load(model))
        file_bytes = model.stat().st_size
    except ModelpressError as e:
        raise _fail(e) from e
    except OSError as e:  # the file vanished between loading and stat
        raise _fail(UsageError(f"{model}: cannot read the file: {e}")) from e
    if as_json:
        print(json.dumps({"file": str(model), "file_bytes": file_bytes, **stats.to_json()}, indent=2))
        return
    console.print(
        f"[bold]{escape(str(model))}[/]  IR v{stats.ir_version}  opsets {escape(str(stats.opsets))}  "
        f"producer '{escape(stats.producer)}'",
        highlight=False,
    )
    console.print(
        f"{stats.nodes} nodes, {stats.parameters:,} parameters, "
        f"{stats.weight_bytes / 2**20:.2f} MiB of weights "
        f"({stats.external_weight_bytes / 2**20:.2f} MiB external), "
        f"file {file_bytes / 2**20:.2f} MiB, {stats.functions} functions",
        highlight=False,
    )
    io_table = Table("", "name", "dtype", "shape", title="interface")
    for kind, values in (("input", stats.inputs), ("output", stats.outputs)):
        for value in values:
            shape = "?" if value.shape is None else escape(str(value.shape))
            io_table.add_row(kind, escape(value.name), escape(value.dtype), shape)
    console.print(io_table)
    ops = Table("op", "count", title="op histogram")
    for op, count in stats.ops.items():
        ops.add_row(escape(op), str(count))
    console.print(ops)


def _parse_dims(specs: list[str]) -> dict[str, int]:
    dims = {}
    for spec in specs:
        name, _, size = spec.partition("=")
        if not name or not size.isdigit():
            raise UsageError(f"--dim '{spec}' must look like NAME=SIZE, e.g. batch=8 (or *=8 for all)")
        dims[name] = int(size)
    return dims


_LEVEL_HELP = "basic: folding and cleanups; extended: + fusions; all: + reordering."
_PASSES_HELP = "Comma-separated pass names to run instead of a level (see `modelpress passes`)."
_DIM_HELP = "Size of a dynamic dim for the check, NAME=SIZE (repeatable; '*=N' for all)."


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="Input ONNX model (never modified).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the optimized model.")],
    level: Annotated[str, typer.Option(help=_LEVEL_HELP)] = "all",
    passes: Annotated[str | None, typer.Option(help=_PASSES_HELP)] = None,
    target: Annotated[
        str, typer.Option(help="onnx: portable output; onnxruntime: + onnxruntime contrib-op fusions.")
    ] = "onnx",
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check outputs against the input on onnxruntime.")
    ] = True,
    rtol: Annotated[
        float, typer.Option(min=0.0, help="Largest accepted relative error of the check.")
    ] = 1e-4,
    dim: Annotated[list[str] | None, typer.Option(help=_DIM_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Optimize a model: fold constants, remove no-ops, fuse, replace and reorder operators.

    The result is verified against the input on onnxruntime (optimizations off) and written
    only when its max relative error is within --rtol; otherwise the exit code is non-zero and
    nothing is written.
    """
    from modelpress.optimize import optimize_file
    from modelpress.passes.registry import passes_for

    try:
        names = [p.strip() for p in passes.split(",") if p.strip()] if passes is not None else None
        if passes is not None and not names:
            raise UsageError("--passes is empty; give comma-separated pass names (see `modelpress passes`)")
        passes_for(level, names, target=target)  # reject bad options before reading the model
        dim_values = _parse_dims(dim or [])
        status = console.status(f"optimizing {model.name} ...") if not as_json else contextlib.nullcontext()
        with status:
            report = optimize_file(
                model,
                output,
                level=level,
                passes=names,
                target=target,
                verify=verify,
                rtol=rtol,
                dim_values=dim_values,
            )
    except ModelpressError as e:
        raise _fail(e) from e
    emit(report, as_json, _print_optimize_report)


def _print_optimize_report(report: Any) -> None:
    table = Table(title=f"optimize --level {report.level}")
    table.add_column("pass", no_wrap=True)
    for column in ("changed", "runs", "nodes Δ", "op changes", "time (s)"):
        table.add_column(column)
    for record in report.records:
        changes = ", ".join(f"{op} {d:+d}" for op, d in record.op_delta.items())
        table.add_row(
            escape(record.name),
            "yes" if record.changed else "-",
            str(record.runs),
            f"{record.nodes_delta:+d}" if record.nodes_delta else "0",
            escape(changes),
            f"{record.seconds:.3f}",
        )
    console.print(table)
    console.print(f"nodes: {report.nodes_before} -> {report.nodes_after}   total {report.seconds:.2f} s")
    if report.comparison is not None:
        console.print(
            f"verified on onnxruntime (optimizations off): max rel error {report.comparison.max_rel:.2e} "
            f"<= {report.rtol:g}, max abs error {report.comparison.max_abs:.2e}  [green]OK[/]"
        )
    else:
        console.print("[yellow]not verified (--no-verify)[/]")
    console.print(f"written: {escape(str(report.output_path))}", highlight=False)


@app.command("passes")
def list_passes() -> None:
    """List the optimization passes in registry order, with their level and target."""
    from modelpress.passes import registry

    # The registry keeps its passes in groups named *_PASSES of (class, level); PASSES is the
    # name -> class map in registry order.
    levels = {
        cls: level
        for group_name, group in vars(registry).items()
        if group_name.endswith("_PASSES")
        for cls, level in group
    }
    ort_only = {cls for cls, _ in registry.ORT_PASSES}
    table = Table(
        Column("pass", no_wrap=True),
        Column("level", no_wrap=True),
        Column("target", no_wrap=True),
        "what it does",
    )
    for name, cls in registry.PASSES.items():
        target = "onnxruntime" if cls in ort_only else "any"
        table.add_row(name, levels.get(cls, "-"), target, getattr(cls, "summary", ""))
    console.print(table)


def _register_verbs() -> None:
    from modelpress.cli import (
        bench,
        compress,
        convert,
        deploy,
        distill,
        package,
        plan,
        protect,
        quantize,
        run,
        serve,
    )

    # one module per verb
    verbs = (convert, protect, run, quantize, compress, distill, package, bench, serve, deploy, plan)
    for verb in verbs:
        verb.register(app)


_register_verbs()


def main() -> None:
    """Entry point of the ``modelpress`` script."""
    # Libraries below us log warnings for conditions we handle; keep the terminal for results.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
