"""``modelpress`` command line (typer + rich).

Only this module prints or exits. Library errors (``ModelpressError``) become a one-line red
message and the error class's exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modelpress.errors import ModelpressError, UsageError

app = typer.Typer(
    name="modelpress",
    help="Take a trained model to deployment: inspect, optimize and verify ONNX models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _fail(error: ModelpressError) -> typer.Exit:
    err_console.print(f"[bold red]error[/] ({type(error).__name__}): {error}", highlight=False)
    return typer.Exit(error.exit_code)


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
    except ModelpressError as e:
        raise _fail(e) from e
    if as_json:
        print(json.dumps({"file": str(model), "file_bytes": model.stat().st_size, **stats.to_json()}, indent=2))
        return
    console.print(f"[bold]{model}[/]  IR v{stats.ir_version}  opsets {stats.opsets}  producer '{stats.producer}'")
    console.print(
        f"{stats.nodes} nodes, {stats.parameters:,} parameters, {stats.weight_bytes / 2**20:.2f} MiB of weights, "
        f"file {model.stat().st_size / 2**20:.2f} MiB, {stats.functions} functions"
    )
    io_table = Table("", "name", "dtype", "shape", title="interface")
    for kind, values in (("input", stats.inputs), ("output", stats.outputs)):
        for name, dtype, dims in values:
            io_table.add_row(kind, name, dtype, str(dims))
    console.print(io_table)
    ops = Table("op", "count", title="op histogram")
    for op, count in stats.ops.items():
        ops.add_row(op, str(count))
    console.print(ops)


def _parse_dims(specs: list[str]) -> dict[str, int]:
    dims = {}
    for spec in specs:
        name, _, size = spec.partition("=")
        if not size.isdigit():
            raise UsageError(f"--dim '{spec}' must look like NAME=SIZE, e.g. batch=8")
        dims[name] = int(size)
    return dims


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="Input ONNX model (never modified).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the optimized model.")],
    level: Annotated[str, typer.Option(help="basic: folding and cleanups; extended: + fusions and BN->Scale; all: + reordering.")] = "all",
    passes: Annotated[str | None, typer.Option(help="Comma-separated pass names to run instead of a level (see `modelpress passes`).")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check outputs against the input model on onnxruntime.")] = True,
    rtol: Annotated[float, typer.Option(help="Largest accepted relative error of the check.")] = 1e-4,
    dim: Annotated[list[str] | None, typer.Option(help="Size of a dynamic dim for the check, NAME=SIZE (repeatable; '*=N' for all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Optimize a model: fold constants, remove no-ops, fuse, replace and reorder operators.

    The result is verified against the input on onnxruntime (optimizations off) and written
    only when its max relative error is within --rtol; otherwise the exit code is non-zero and
    nothing is written.
    """
    from modelpress.optimize import optimize_file

    try:
        names = [p.strip() for p in passes.split(",") if p.strip()] if passes else None
        with console.status(f"optimizing {model.name} ...", spinner="dots") if not as_json else _null():
            report = optimize_file(
                model, output, level=level, passes=names, verify=verify, rtol=rtol, dim_values=_parse_dims(dim or [])
            )
    except ModelpressError as e:
        raise _fail(e) from e
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    _print_optimize_report(report)


def _print_optimize_report(report) -> None:
    table = Table("pass", "changed", "runs", "nodes Δ", "op changes", "time (s)", title=f"optimize --level {report.level}")
    for record in report.records:
        changes = ", ".join(f"{op} {d:+d}" for op, d in record.op_delta.items())
        table.add_row(record.name, "yes" if record.changed else "-", str(record.runs),
                      f"{record.nodes_delta:+d}" if record.nodes_delta else "0", changes, f"{record.seconds:.3f}")
    console.print(table)
    console.print(f"nodes: {report.nodes_before} -> {report.nodes_after}   total {report.seconds:.2f} s")
    if report.comparison is not None:
        console.print(
            f"verified on onnxruntime (optimizations off): max rel error {report.comparison.max_rel:.2e} "
            f"<= {report.rtol:g}, max abs error {report.comparison.max_abs:.2e}  [green]OK[/]"
        )
    else:
        console.print("[yellow]not verified (--no-verify)[/]")
    console.print(f"written: {report.output_path}")


@app.command("passes")
def list_passes() -> None:
    """List the optimization passes in the order they run, with their level."""
    from modelpress.passes.registry import DEFAULT_PASSES

    table = Table("pass", "level", "what it does")
    for cls, level in DEFAULT_PASSES:
        table.add_row(cls.name, level, cls.summary)  # type: ignore[attr-defined]
    console.print(table)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the example model and its optimized copy.")] = Path("build/demo"),
) -> None:
    """Build the bundled example model, optimize it, and print the report (no network needed)."""
    from modelpress.examples import build_example_cnn
    from modelpress.ir import io
    from modelpress.optimize import optimize_file

    try:
        workdir.mkdir(parents=True, exist_ok=True)
        source = workdir / "example_cnn.onnx"
        console.print(f"[bold]1.[/] building the example CNN (Conv+BatchNorm blocks, a standalone BN, a crop) -> {source}")
        io.save(build_example_cnn(), source)
        console.print(f"[bold]2.[/] modelpress optimize {source} -o {workdir / 'example_cnn.opt.onnx'}")
        report = optimize_file(source, workdir / "example_cnn.opt.onnx")
    except ModelpressError as e:
        raise _fail(e) from e
    _print_optimize_report(report)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    """Entry point of the ``modelpress`` script."""
    # Libraries below us log warnings for conditions we handle; keep the terminal for results.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    sys.exit(main())
