"""``modelpress run``: run a plain or encrypted model on ``.npy`` inputs.

Inputs are ``--input FILE.npy`` (bound to the model's inputs in order) or ``--input
NAME=FILE.npy``; unnamed ones fill the inputs not named, in order. Without ``-o`` the outputs
are printed as JSON on stdout (and nothing else is); ``-o OUT.npy`` writes the single output,
``-o OUT.npz`` all of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from modelpress.cli._output import console, fail
from modelpress.cli.protect import KEY_ENV_HELP, KEY_FILE_HELP, key_source
from modelpress.errors import ModelpressError

__all__ = ["register"]

_INPUT_HELP = "Input array: FILE.npy (model inputs in order) or NAME=FILE.npy. Repeatable."


def register(app: typer.Typer) -> None:
    """Add ``run`` to the ``modelpress`` command line."""
    app.command("run")(run)


def run(
    model: Annotated[Path, typer.Argument(help="Model file: plain ONNX, or encrypted .mpe (needs its key).")],
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", help=_INPUT_HELP)] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help=KEY_FILE_HELP)] = None,
    key_env: Annotated[str | None, typer.Option("--key-env", help=KEY_ENV_HELP)] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write outputs to .npy (one output) or .npz.")
    ] = None,
    level: Annotated[
        str, typer.Option(help="onnxruntime optimization level: disable|basic|extended|all.")
    ] = "all",
) -> None:
    """Run a model once; an encrypted .mpe model is decrypted in memory, never on disk."""
    from modelpress.runtime.run import load_array, run_model_file, save_outputs

    try:
        positional, named = [], {}
        for spec in inputs or []:
            name, file = _split_input(spec)
            if name is None:
                positional.append(load_array(file))
            else:
                named[name] = load_array(file)
        key = key_source(key_file, key_env, required=False)
        outputs = run_model_file(model, positional, key, named=named, level=level)  # type: ignore[arg-type]
        if output is not None:
            written = save_outputs(outputs, output)
    except ModelpressError as e:
        raise fail(e) from e
    if output is None:
        payload = {
            name: {"dtype": str(array.dtype), "shape": list(array.shape), "data": array.tolist()}
            for name, array in outputs.items()
        }
        print(json.dumps({"outputs": payload}, default=float))
        return
    console.print(
        f"wrote {len(outputs)} output(s) ({', '.join(outputs)}) to {escape(str(written))}", highlight=False
    )


def _split_input(spec: str) -> tuple[str | None, str]:
    """``NAME=FILE`` -> (NAME, FILE); a spec whose part before '=' looks like a path is a file."""
    name, sep, file = spec.partition("=")
    if sep and name and "/" not in name and "\\" not in name and file:
        return name, file
    return None, spec
