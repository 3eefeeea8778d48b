"""``modelpress package``: bundle a model and its pipeline into a verified package folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelpress.cli._output import console, fail
from modelpress.errors import ModelpressError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``package`` to the ``modelpress`` command line."""
    app.command("package")(package)


def package(
    model: Annotated[Path, typer.Argument(help="Model file: plain ONNX, or encrypted .mpe.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Package folder to create.")],
    pipeline: Annotated[
        Path | None, typer.Option("--pipeline", help="pipeline.yaml with pre/post-processing steps.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing package folder at --output.")
    ] = False,
) -> None:
    """Write MODEL, its pipeline and a manifest.json (sha256 of every file) to a package folder."""
    from modelpress.package import build_package, load_package

    try:
        written = load_package(build_package(model, output, pipeline=pipeline, overwrite=force))
    except ModelpressError as e:
        raise fail(e) from e
    table = Table("file", "bytes", "sha256", title=f"package {escape(str(written.root))}")
    for name, entry in sorted(written.manifest.files.items()):
        table.add_row(escape(name), f"{entry.size:,}", entry.sha256[:16] + "...")
    console.print(table)
    if written.manifest.key_id is not None:
        console.print(
            f"encrypted model: `modelpress run` needs key id {written.manifest.key_id} "
            "(--key-file or --key-env)",
            highlight=False,
        )
