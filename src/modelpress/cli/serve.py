"""``modelpress serve``: serve a model or package over HTTP with uvicorn.

The bearer token is read from ``--token-file`` (never from the command line, where ``ps``
would show it); surrounding whitespace is stripped. The server listens on 127.0.0.1 unless
``--host`` says otherwise: exposing it is a deliberate choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from modelpress.cli._output import err_console, fail
from modelpress.cli.protect import KEY_ENV_HELP, KEY_FILE_HELP, key_source
from modelpress.errors import ModelpressError, UsageError

__all__ = ["register"]

MAX_TOKEN_FILE_BYTES = 4096


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``modelpress`` command line."""
    app.command("serve")(serve)


def serve(
    model: Annotated[
        Path,
        typer.Argument(help="Package folder, or model file (plain ONNX, or encrypted .mpe with its key)."),
    ],
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 exposes the server).")] = "127.0.0.1",
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="File holding the bearer token clients must send.")
    ] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help=KEY_FILE_HELP)] = None,
    key_env: Annotated[str | None, typer.Option("--key-env", help=KEY_ENV_HELP)] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most rows per model run across requests.")] = 8,
    max_delay_ms: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="How long a request waits for others to batch with. 0 (default): no waiting; "
            "requests that queued while the model ran are batched together.",
        ),
    ] = 0.0,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime intra-op threads.")] = None,
) -> None:
    """Serve a model or package: POST /v1/predict, GET /healthz, GET /metrics, docs at /docs."""
    import uvicorn

    from modelpress.serve import create_app

    try:
        token = _read_token(token_file) if token_file is not None else None
        key = key_source(key_file, key_env, required=False)
        app = create_app(
            model, key=key, token=token, max_batch=max_batch, max_delay_ms=max_delay_ms, threads=threads
        )
    except ModelpressError as e:
        raise fail(e) from e
    if token is None:
        err_console.print(
            "[yellow]warning[/]: no --token-file: anyone who can reach the port can call the model"
        )
    err_console.print(
        f"serving {escape(str(model))} on http://{escape(host)}:{port} (docs at /docs)", highlight=False
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _read_token(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_TOKEN_FILE_BYTES:
            raise UsageError(f"{path}: over {MAX_TOKEN_FILE_BYTES} bytes; a token file holds one token")
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the token file: {e}") from e
    if not token:
        raise UsageError(f"{path}: the token file is empty; put the bearer token in it")
    return token
