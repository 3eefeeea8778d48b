"""``modelpress distill``: train a small torch student on a teacher's soft targets, export it to ONNX.

The teacher is an ``.onnx`` file (run on onnxruntime, so it may come from any framework) or a
torch source; the student is a torch source (``package.module:factory`` or a saved ``.pt``),
trained in place by ``compress.distill`` on a folder of ``.npz`` files (the input array and,
optionally, ``labels``), then exported through ``convert``'s code path: verified against torch
on onnxruntime and written atomically. A progress bar shows each epoch; the result is a table
of teacher vs student (parameters, weight size, accuracy, agreement) or ``--json``. Exit codes
as everywhere (2 usage, 3 unreadable model, 6 export mismatch, 8 export failed, 9 bad data);
nothing is written on failure.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelpress.cli._output import console, emit, err_console, fail
from modelpress.cli.compress import THREADS_HELP, torch_threads
from modelpress.errors import ModelpressError

if TYPE_CHECKING:
    from modelpress.compress.distill import DistillEpoch, DistillReport
    from modelpress.convert import ConversionReport

__all__ = ["distill", "register"]

_TEACHER_HELP = (
    "The trained teacher: an .onnx file (run on onnxruntime) or a torch source as `modelpress convert` "
    "takes it (package.module:factory, saved .pt/.pth)."
)
_STUDENT_HELP = "The (smaller) torch student to train: package.module:factory or a saved .pt/.pth module."
_DATA_HELP = "Transfer set: folder of .npz files, each with the input array and optionally 'labels'."
_EVAL_HELP = "Held-out folder of the same form for the report (default: the training data, flagged)."
_EXAMPLE_HELP = "The input NAME=1x1x8x8 (default: the input array of the first --data file)."
_TEMPERATURE_HELP = "Softmax temperature T of the soft targets, > 0 (Hinton et al.: 1-20)."
_ALPHA_HELP = "Weight of the soft-target term in [0, 1]; 1 - alpha weighs the labels (1 without labels)."
_TRUST_HELP = "Load saved .pt/.pth modules (a pickle: it runs code from the file; trusted files only)."


def register(app: typer.Typer) -> None:
    """Add ``distill`` to the ``modelpress`` command line."""
    app.command()(distill)


def distill(
    teacher: Annotated[str, typer.Option("--teacher", help=_TEACHER_HELP, metavar="T")],
    student: Annotated[str, typer.Option("--student", help=_STUDENT_HELP, metavar="S")],
    data: Annotated[Path, typer.Option("--data", help=_DATA_HELP)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the student's .onnx.")],
    eval_dir: Annotated[Path | None, typer.Option("--eval", help=_EVAL_HELP)] = None,
    example_input: Annotated[
        list[str] | None, typer.Option("--example-input", "-i", help=_EXAMPLE_HELP)
    ] = None,
    temperature: Annotated[float, typer.Option(help=_TEMPERATURE_HELP)] = 4.0,
    alpha: Annotated[float, typer.Option(help=_ALPHA_HELP)] = 0.7,
    epochs: Annotated[int, typer.Option(help="Passes over the transfer set.")] = 30,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 3e-3,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=_TRUST_HELP)] = False,
    threads: Annotated[int | None, typer.Option(min=1, help=THREADS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Knowledge distillation: train a small torch student on a teacher's soft targets.

    Hinton et al. 2015: the loss is alpha * T^2 * KL(teacher || student), both softened by
    temperature T, plus (1 - alpha) * cross-entropy on the labels. The teacher's logits are
    computed once. The trained student is exported to ONNX, verified against torch on
    onnxruntime, and written to -o; teacher and student are compared on --eval.
    """
    from modelpress.compress.distill import distill_to_onnx

    try:
        with torch_threads(threads), _epoch_progress(enabled=not as_json) as progress:
            report, conversion = distill_to_onnx(
                teacher,
                student,
                output,
                data,
                eval_dir=eval_dir,
                example_inputs=example_input or [],
                temperature=temperature,
                alpha=alpha,
                epochs=epochs,
                lr=lr,
                trust_pickle=trust_pickle,
                progress=progress,
            )
    except ModelpressError as e:
        raise fail(e) from e
    emit(_Distilled(report, conversion), as_json, _print_distilled)


@dataclasses.dataclass(frozen=True)
class _Distilled:
    """What ``distill`` did: the distillation report and the student's export."""

    report: DistillReport
    export: ConversionReport

    def to_json(self) -> dict[str, Any]:
        return {**self.report.to_json(), "export": self.export.to_json()}


@contextlib.contextmanager
def _epoch_progress(
    *, enabled: bool
) -> collections.abc.Iterator[collections.abc.Callable[[DistillEpoch], None] | None]:
    """A callback for ``distill_to_onnx`` drawing one bar of epochs on stderr."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task: list[Any] = []

        def advance(epoch: DistillEpoch) -> None:
            if not task:
                task.append(bar.add_task("distilling", total=epoch.epochs))
            description = f"distilling (epochs; loss {epoch.loss:.3f}, agreement {epoch.agreement:.1%})"
            bar.update(task[0], completed=epoch.epoch, description=description)

        yield advance


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _print_distilled(result: _Distilled) -> None:
    report, export = result.report, result.export
    where = "training data (no --eval)" if report.eval_on_training else "--eval data"
    title = f"distill: T {report.temperature:g}, alpha {report.alpha:g}, {report.epochs} epochs"
    table = Table("", "parameters", "weights", "accuracy", "agreement", title=title)
    table.add_row(
        f"teacher ({report.teacher_kind})",
        f"{report.teacher_parameters:,}",
        f"{report.teacher_weight_bytes / 2**10:.1f} KiB",
        _percent(report.teacher_accuracy),
        "",
    )
    table.add_row(
        "student",
        f"{report.student_parameters:,}",
        f"{report.student_weight_bytes / 2**10:.1f} KiB",
        _percent(report.student_accuracy),
        f"{report.agreement:.2%}",
    )
    console.print(table)
    ratio = report.teacher_parameters / max(report.student_parameters, 1)
    console.print(
        f"measured on {report.eval_samples} samples of the {where}; student {ratio:.1f}x fewer parameters; "
        f"final loss {report.history[-1].loss:.4f}; {report.seconds:.2f} s "
        f"(teacher logits {report.teacher_seconds:.2f} s)",
        highlight=False,
    )
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    worst = max((check.max_abs for check in export.checks), default=0.0)
    console.print(
        f"export verified against torch ({len(export.checks)} checks, max abs error {worst:.2e}); "
        f"written: {escape(export.output_path)}  ({export.file_bytes / 2**10:.1f} KiB)",
        highlight=False,
    )
