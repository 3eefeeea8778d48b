"""``modelpress plan``: roofline estimates of a model on datasheet GPUs.

Prints the model's cost by op type at the bound dims, then one row per GPU x precision:
estimated latency, what bounds it, whether it fits, the largest batch that fits and the
throughput there. A precision a GPU lacks (fp8 on the A100) shows '-' with a note. The last
line says what these numbers are: roofline estimates, not measurements. Exit codes as
everywhere (2 usage: unknown GPU or precision, bad --dim; 3 unreadable model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelpress.cli._output import console, emit, fail
from modelpress.errors import ModelpressError, UsageError

__all__ = ["plan", "register"]

_GPUS_HELP = "Comma-separated GPUs: L40S, A100 (80GB SXM), H100 (SXM), H200 (SXM)."
_PRECISION_HELP = "Comma-separated precisions: fp32 (TF32 tensor cores), fp16, bf16, fp8, int8."
_BATCH_HELP = "Size of the dynamic leading (batch) dim of the inputs."
_DIM_HELP = "Size of another dynamic dim, NAME=SIZE (repeatable; '*=N' for all others; default 2)."


def register(app: typer.Typer) -> None:
    """Add ``plan`` to the ``modelpress`` command line."""
    app.command()(plan)


def _parse_dims(specs: list[str]) -> dict[str, int]:
    dims = {}
    for spec in specs:
        name, _, size = spec.partition("=")
        if not name or not size.isdigit() or int(size) < 1:
            raise UsageError(f"--dim '{spec}' must look like NAME=SIZE with SIZE >= 1, e.g. sequence=128")
        dims[name] = int(size)
    return dims


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def plan(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    gpus: Annotated[str, typer.Option("--gpus", help=_GPUS_HELP)] = "L40S,A100,H100,H200",
    precision: Annotated[str, typer.Option("--precision", help=_PRECISION_HELP)] = "fp16,fp8,int8",
    batch: Annotated[int, typer.Option("--batch", help=_BATCH_HELP)] = 1,
    dim: Annotated[list[str] | None, typer.Option("--dim", help=_DIM_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Estimate latency, memory fit and throughput per GPU and precision (roofline, not measured)."""
    from modelpress.ir import io
    from modelpress.plan.roofline import plan_model

    try:
        if batch < 1:
            raise UsageError(f"--batch {batch} must be >= 1")
        dims = _parse_dims(dim or [])
        report = plan_model(io.load(model), _split(gpus), _split(precision), dims, batch=batch)
    except ModelpressError as e:
        raise fail(e) from e
    emit(report, as_json, _print_report)


def _print_report(report: object) -> None:
    from modelpress.plan.roofline import PlanReport

    assert isinstance(report, PlanReport)
    first = next(iter(report.costs.values()))
    console.print(
        f"batch {report.batch}, dims {escape(str(report.dims))}: {_si(first.total_flops, 'FLOP')} "
        f"(multiply-add = 2 FLOPs), {first.weight_bytes / 1e6:.2f} MB weights and "
        f"{first.peak_activation_bytes / 1e6:.2f} MB peak activations at {first.element_bytes} B/element, "
        f"{len(first.nodes)} nodes costed, {first.static_nodes} static (shape arithmetic, folded)",
        highlight=False,
    )
    ops = Table("op", "count", "FLOPs", "share", "bytes moved", title="cost by op type")
    for op, totals in first.by_op.items():
        share = totals.flops / first.total_flops if first.total_flops else 0.0
        ops.add_row(
            escape(op), str(totals.count), _si(totals.flops, ""), f"{share:.1%}", _si(totals.bytes_moved, "B")
        )
    console.print(ops)
    if first.unknown:
        console.print(f"[yellow]{len(first.unknown)} node(s) not costed:[/]", highlight=False)
        for node in first.unknown[:10]:
            console.print(
                f"  {escape(node.name)} ({escape(node.op_type)}): {escape(node.reason)}", highlight=False
            )
    # A note every supported row shares (e.g. uncosted nodes) is printed once, below the table.
    notes = {row.note for row in report.plans if row.supported}
    shared = notes.pop() if len(notes) == 1 else ""
    columns = ["GPU", "precision", "latency ms", "bound", "memory GB", "fits", "max batch", "throughput /s"]
    rows = Table(*columns, "note", title=f"roofline estimates at batch {report.batch}")
    for row in report.plans:
        if not row.supported:
            rows.add_row(row.gpu, row.precision, "-", "-", "-", "-", "-", "-", "not supported")
            continue
        rows.add_row(
            row.gpu,
            row.precision,
            _ms(row.latency_s),
            (row.bound or "-").replace("launch overhead", "launch"),
            f"{row.memory_needed_gb:.2f}" if row.memory_needed_gb is not None else "-",
            "yes" if row.fits else "no",
            "-" if row.max_batch is None else str(row.max_batch),
            "-" if row.throughput_per_s is None else f"{row.throughput_per_s:,.0f}",
            "" if row.note == shared else escape(row.note),
        )
    console.print(rows)
    for row in report.plans:
        if not row.supported:
            console.print(f"{row.gpu} {row.precision}: {escape(row.note)}", highlight=False, soft_wrap=True)
    if shared:
        console.print(f"every row: {escape(shared)}", highlight=False, soft_wrap=True)
    params = report.params
    console.print(
        f"assumptions: compute efficiency {params.compute_efficiency:g}, memory efficiency "
        f"{params.memory_efficiency:g}, {params.launch_overhead_s * 1e6:g} µs per kernel, no fusion, "
        f"{params.memory_headroom:.0%} memory headroom, max batch capped at {params.max_batch_cap}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"[bold]{escape(report.note)}[/]", highlight=False, soft_wrap=True)
