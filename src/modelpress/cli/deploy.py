"""``modelpress deploy RECIPE.yaml``: the whole chain from one recipe, one table, one report.

Steps print as they start; the benchmark draws a progress bar on stderr; the end is a table of
every stage side by side (size, nodes, accuracy, latency, speed-up) and the paths of the
deliverable package and of ``report.html`` / ``report.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from modelpress.cli._output import console, err_console, fail
from modelpress.errors import ModelpressError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``deploy`` to the ``modelpress`` command line."""
    app.command("deploy")(deploy)


def deploy(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see examples/digits/recipe.yaml).")],
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for everything deploy writes [default: build/deploy/NAME, NAME from the recipe]."
        ),
    ] = None,
    runs: Annotated[
        int | None, typer.Option(min=1, help="Timed runs per stage and configuration (overrides bench.runs).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of tables.")
    ] = False,
) -> None:
    """Run a recipe end to end: source -> optimize -> quantize -> protect -> package -> bench -> report.

    Every stage checks its own output (numeric equivalence, quantization error, obfuscation
    within 1e-5, the encrypted package loads and runs); the benchmark then runs each stage's
    package, pre/post-processing included, on the recipe's eval data, interleaved, and reports
    accuracy, size and latency side by side. Writes WORKDIR/package (the deliverable, its
    manifest carrying the measured metrics), WORKDIR/report.html and WORKDIR/report.json.
    """
    import dataclasses

    from modelpress.deploy import deploy as run_deploy
    from modelpress.deploy import load_recipe

    try:
        parsed = load_recipe(recipe)
        if runs is not None:
            parsed = dataclasses.replace(parsed, bench=dataclasses.replace(parsed.bench, runs=runs))
        steps = iter(range(1, 100))

        def say(line: str) -> None:
            if not as_json:
                console.print(f"[bold]{next(steps)}.[/] {escape(line)}", highlight=False, soft_wrap=True)

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task("bench", total=None, visible=False)

            def progress(description: str, done: int, total: int) -> None:
                bar.update(task, description=escape(description), completed=done, total=total, visible=True)

            report = run_deploy(
                parsed, workdir or Path("build/deploy") / parsed.name, say=say, bench_progress=progress
            )
    except ModelpressError as e:
        raise fail(e) from e
    if as_json:
        print(json.dumps(report.to_json(), indent=2, default=str))
        return
    _print_summary(report)


def _print_summary(report: Any) -> None:
    batches = report.bench.settings["batches"]
    threads = report.bench.settings["threads"][0]
    table = Table(
        title=f"{escape(report.name)}: each stage's package end to end (pre + model + post), p50 in ms, "
        f"× = speed-up vs original; {threads} threads, {report.bench.settings['runs']} interleaved runs",
        caption="top-1: accuracy on the labelled eval data; agree: same top-1 as the original",
    )
    for column in ("stage", "KiB", "nodes", "top-1", "agree"):
        table.add_column(column, no_wrap=True)
    for batch in batches:
        table.add_column(f"p50 b{batch}", no_wrap=True)
        table.add_column("×", no_wrap=True)
    for row in report.summary():
        cells = [
            row["stage"],
            f"{row['size_bytes'] / 1024:.1f}",
            _fmt(row["nodes"], "d"),
            _fmt(row["accuracy"], ".2%"),
            _fmt(row["agreement_vs_original"], ".1%"),
        ]
        for batch in batches:
            cells += [_fmt(row[f"p50_ms_b{batch}"], ".3f"), _fmt(row[f"speedup_b{batch}"], ".2f")]
        table.add_row(*cells)
    console.print(table)
    for stage in report.stages:
        console.print(f"{stage.stage}: {escape(str(stage.model_path))}", highlight=False, soft_wrap=True)
    console.print(f"package: {escape(str(report.package))}", highlight=False, soft_wrap=True)
    if report.key_file is not None:
        console.print(
            f"key: {escape(str(report.key_file))} (keep it secret; the package is encrypted with it)",
            highlight=False,
            soft_wrap=True,
        )
        key = f" --key-file {escape(str(report.key_file))}"
    else:
        key = ""
    for path in report.report_files:
        console.print(f"report: {escape(str(path))}", highlight=False, soft_wrap=True)
    console.print(
        f"try it: modelpress run {escape(str(report.package))}{key} --input "
        f"{escape(str(report.sample_input or 'INPUT.npy'))}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"serve it: modelpress serve {escape(str(report.package))}{key}", highlight=False, soft_wrap=True
    )
    console.print(f"done in {report.seconds:.1f} s", highlight=False)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
