"""What every CLI module shares: the consoles and the error-to-exit-code mapping."""

from __future__ import annotations

import collections.abc
import json
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from modelpress.errors import ModelpressError

__all__ = ["console", "emit", "err_console", "fail"]

console = Console()
err_console = Console(stderr=True)


def fail(error: ModelpressError) -> typer.Exit:
    """Print ``error`` as one red line on stderr and return the Exit carrying its exit code."""
    err_console.print(
        f"[bold red]error[/] ({type(error).__name__}): {escape(str(error))}", highlight=False, soft_wrap=True
    )
    return typer.Exit(error.exit_code)


def emit(report: Any, as_json: bool, printer: collections.abc.Callable[[Any], None]) -> None:
    """Print ``report.to_json()`` as JSON on stdout, or hand the report to ``printer``."""
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    printer(report)
