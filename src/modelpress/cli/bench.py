"""``modelpress bench``: latency, throughput, load time, size and peak RSS of models side by side.

Models (``.onnx``, encrypted ``.mpe`` with ``--key-file``) and package folders are measured at
every ``--batch`` size and ``--threads`` count, their timed runs interleaved round-robin; the
first one is the baseline of the ratios. Tables go to stdout, the progress bar to stderr,
``--json FILE`` writes the report's JSON and ``--report FILE.html`` a self-contained HTML page
with plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from modelpress.cli._output import console, err_console, fail
from modelpress.cli.protect import KEY_FILE_HELP, key_source
from modelpress.errors import ModelpressError, UsageError

if TYPE_CHECKING:
    from modelpress.benchmark import BenchReport

__all__ = ["parse_sizes", "register"]


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the ``modelpress`` command line."""
    app.command("bench")(bench)


def parse_sizes(text: str, option: str) -> list[int]:
    """``"1,8"`` -> ``[1, 8]``: comma-separated integers >= 1, duplicates dropped in order.

    Raises:
        UsageError: an empty list or an item that is not an integer >= 1.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items or any(not item.isdigit() or int(item) < 1 for item in items):
        raise UsageError(f"{option} '{text}' must be comma-separated integers >= 1, e.g. {option} 1,8")
    return list(dict.fromkeys(int(item) for item in items))


def bench(
    models: Annotated[
        list[Path],
        typer.Argument(help="Model files (.onnx, .mpe) or package folders; the first is the baseline."),
    ],
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated (e.g. 1,8).")] = "1",
    threads: Annotated[
        str, typer.Option("--threads", help="onnxruntime intra-op thread counts, comma-separated.")
    ] = "1",
    runs: Annotated[int, typer.Option(help="Timed runs per model, batch size and thread count.")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed runs before the timed ones.")] = 5,
    data: Annotated[
        Path | None, typer.Option(help="Folder of NAME.npy / .npz inputs (or one .npz); random if absent.")
    ] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help=KEY_FILE_HELP)] = None,
    level: Annotated[
        str, typer.Option(help="onnxruntime optimization level: disable|basic|extended|all.")
    ] = "all",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON to this file.")
    ] = None,
    report_path: Annotated[
        Path | None, typer.Option("--report", help="Write a self-contained HTML report with plots.")
    ] = None,
) -> None:
    """Benchmark models side by side: latency p50/p90/p99, throughput, load time, size, peak RSS."""
    from modelpress.benchmark import benchmark_models, write_html

    try:
        batches, thread_counts = parse_sizes(batch, "--batch"), parse_sizes(threads, "--threads")
        key = key_source(key_file, None, required=False)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task("loading", total=None)

            def progress(description: str, done: int, total: int) -> None:
                bar.update(task, description=escape(description), completed=done, total=total)

            report = benchmark_models(
                models,
                batches=batches,
                threads=thread_counts,
                runs=runs,
                warmup=warmup,
                data=data,
                key=key,
                level=level,  # type: ignore[arg-type]
                progress=progress,
            )
        if json_path is not None:
            _write_json(report, json_path)
        if report_path is not None:
            write_html(report, report_path)
    except ModelpressError as e:
        raise fail(e) from e
    _print_report(report)
    for label, path in (("JSON", json_path), ("HTML report", report_path)):
        if path is not None:
            console.print(f"{label}: {escape(str(path))}", highlight=False)


def _write_json(report: BenchReport, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot write the JSON report: {e}") from e


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _print_quality(report: BenchReport) -> None:
    rated = [m for m in report.models if m.quality is not None]
    if not rated:
        return
    first = escape(report.models[0].name)
    table = Table(
        "model",
        "rows",
        "top-1 accuracy",
        f"top-1 agreement vs {first}",
        "cosine",
        "max |Δ|",
        title="output quality on --data (accuracy needs a 'labels' array)",
    )
    for m in rated:
        q = m.quality
        assert q is not None
        table.add_row(
            escape(m.name),
            str(q.samples),
            _fmt(q.accuracy, ".2%"),
            _fmt(q.agreement_vs_first, ".2%"),
            _fmt(q.cosine_vs_first, ".6f"),
            _fmt(q.max_abs_diff_vs_first),
        )
    console.print(table)


def _print_report(report: BenchReport) -> None:
    models = Table("model", "kind", "size (KiB)", "load (ms)", "peak RSS rise (MiB)", title="models")
    for m in report.models:
        models.add_row(
            escape(m.name), m.kind, f"{m.model_bytes / 1024:.1f}", f"{m.load_ms:.2f}", _fmt(m.peak_rss_mb)
        )
    console.print(models)
    _print_quality(report)
    ratios = {(r["model"], r["batch"], r["threads"]): r for r in report.ratios()}
    split = any(m.pipeline for m in report.models)
    title = f"latency (ms), samples/s, and ratios to {escape(report.models[0].name)}"
    timings = Table(
        Column("model", no_wrap=True), "batch", "thr", "p50", "p90", "p99", "samples/s", title=title
    )
    if split:
        timings.add_column("pre / inf / post")
    timings.add_column("p50 ×")
    timings.add_column("samples/s ×")
    for timing in report.measurements:
        ratio = ratios[timing.model, timing.batch, timing.threads]
        row = [escape(timing.model), str(timing.batch), str(timing.threads)]
        row += [f"{v:.3g}" for v in (timing.latency.p50_ms, timing.latency.p90_ms, timing.latency.p99_ms)]
        row.append(f"{timing.latency.throughput:.4g}")
        if split:
            row.append(
                " / ".join(f"{timing.stages_ms[s]:.3g}" for s in ("preprocess", "inference", "postprocess"))
            )
        timings.add_row(*row, _fmt(ratio["p50"], ".2f"), _fmt(ratio["throughput"], ".2f"))
    console.print(timings)
