"""``modelpress run``: run a plain or encrypted model on ``.npy`` inputs.

Inputs are ``--input FILE.npy`` (bound to the model's inputs in order) or ``--input
NAME=FILE.npy``; unnamed ones fill the inputs not named, in order. Without ``-o`` the outputs
are printed as JSON on stdout (and nothing else is); ``-o OUT.npy`` writes the single output,
``-o OUT.npz`` all of them.

Given a package folder (``modelpress package``), every file is checked against its manifest
first (exit code 10 when one differs); raw inputs then go through the package's
pre-processing, the model and its post-processing. An input whose pipeline starts with
``decode_image`` takes encoded image files (``--input image=cat.jpg``, repeat the name for a
batch); every other input takes ``.npy`` files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.markup import escape

from modelpress.cli._output import console, fail
from modelpress.cli.protect import KEY_ENV_HELP, KEY_FILE_HELP, key_source
from modelpress.errors import ModelpressError, UsageError

if TYPE_CHECKING:
    from modelpress.pipeline import Pipeline

__all__ = ["register"]

_INPUT_HELP = (
    "Input: FILE.npy (model inputs in order) or NAME=FILE.npy; for a package, NAME=IMAGE for inputs "
    "whose pipeline decodes images (repeat for a batch). Repeatable."
)


def register(app: typer.Typer) -> None:
    """Add ``run`` to the ``modelpress`` command line."""
    app.command("run")(run)


def run(
    model: Annotated[
        Path,
        typer.Argument(
            help="Model file (plain ONNX, or encrypted .mpe: needs its key), or a package folder."
        ),
    ],
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", help=_INPUT_HELP)] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help=KEY_FILE_HELP)] = None,
    key_env: Annotated[str | None, typer.Option("--key-env", help=KEY_ENV_HELP)] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write outputs to .npy (one output) or .npz.")
    ] = None,
    level: Annotated[
        str, typer.Option(help="onnxruntime optimization level: disable|basic|extended|all.")
    ] = "all",
    input_dir: Annotated[
        Path | None,
        typer.Option(
            help="Run every file in this folder (.npy rows, .npz per sample, or images for a package "
            "that decodes them), in name order, in batches; outputs joined row for row."
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Rows per batch with --input-dir.")] = 32,
    prefetch: Annotated[
        int,
        typer.Option(min=0, help="Batches read and pre-processed ahead in a background thread (0: none)."),
    ] = 2,
    threads: Annotated[
        int | None, typer.Option(min=1, help="onnxruntime intra-op threads [default: onnxruntime's choice].")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="For a model obfuscated with --opaque: runtime (opaque graph, operator library merged in "
            "memory) or transport (original graph restored in memory, no overhead)."
        ),
    ] = "runtime",
    inter_op_threads: Annotated[
        int,
        typer.Option(min=1, help="Threads running independent graph branches in parallel (1: sequential)."),
    ] = 1,
    providers: Annotated[
        str,
        typer.Option(
            help="Execution providers: auto (TensorRT/CUDA/... when this onnxruntime build has them, then "
            "CPU), or a comma-separated list such as cuda,cpu."
        ),
    ] = "auto",
) -> None:
    """Run a model or a package; an encrypted .mpe model is decrypted in memory, never on disk.

    Once on --input files, or over a whole folder with --input-dir: batches of --batch rows,
    the next batches read and pre-processed while the current one runs.
    """
    from modelpress.package import load_package
    from modelpress.runtime.run import bind_inputs, load_array, open_model_session, save_outputs
    from modelpress.runtime.session import run_session

    try:
        key = key_source(key_file, key_env, required=False)
        options = {
            "level": level,
            "threads": threads,
            "inter_op_threads": inter_op_threads,
            "providers": "auto"
            if providers == "auto"
            else [p.strip() for p in providers.split(",") if p.strip()],
            "mode": mode,
        }
        package = load_package(model) if model.is_dir() else None
        if input_dir is not None:
            if inputs:
                raise UsageError("give inputs either with --input or with --input-dir, not both")
            outputs = _run_folder(
                model, package, input_dir, key, batch=batch, prefetch=prefetch, options=options
            )
        elif package is not None:
            positional, named = _package_inputs(inputs or [], package.pipeline)
            session = package.open_session(key, **options)  # type: ignore[arg-type]
            outputs = package.run(positional, named=named, session=session)
        else:
            positional, named = [], {}
            for spec in inputs or []:
                name, file = _split_input(spec)
                if name is None:
                    positional.append(load_array(file))
                else:
                    named[name] = load_array(file)
            session = open_model_session(model, key, **options)  # type: ignore[arg-type]
            feeds = bind_inputs([value.name for value in session.get_inputs()], positional, named)
            outputs = {name: np.asarray(value) for name, value in run_session(session, feeds).items()}
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


def _run_folder(
    model: Path,
    package: Any,
    folder: Path,
    key: object,
    *,
    batch: int,
    prefetch: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Every sample of ``folder`` through the model (or package) in batches, with a progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from modelpress.cli._output import err_console
    from modelpress.pipeline.preprocess import DecodeImageStep
    from modelpress.runtime.run import open_model_session
    from modelpress.runtime.session import run_session
    from modelpress.runtime.stream import concatenate_outputs, read_samples, run_stream

    if package is not None:
        session = package.open_session(key, **options)
    else:
        session = open_model_session(model, key, **options)  # type: ignore[arg-type]
    pipeline = package.pipeline if package is not None else None
    names = [value.name for value in session.get_inputs()]
    ranks = {
        value.name: len(value.shape) if isinstance(value.shape, list) else None
        for value in session.get_inputs()
    }
    images = [
        name
        for name, steps in (pipeline.inputs.items() if pipeline is not None else ())
        if steps and isinstance(steps[0], DecodeImageStep)
    ]
    samples = read_samples(folder, names, ranks=ranks, image_inputs=images)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} rows"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(f"run {escape(folder.name)}", total=None)
        return concatenate_outputs(
            run_stream(
                samples,
                lambda feeds: run_session(session, feeds),
                batch=batch,
                prefetch_batches=prefetch,
                preprocess=pipeline.preprocess if pipeline is not None else None,
                postprocess=pipeline.postprocess if pipeline is not None else None,
                on_batch=lambda rows: bar.advance(task, rows),
            )
        )


def _split_input(spec: str) -> tuple[str | None, str]:
    """``NAME=FILE`` -> (NAME, FILE); a spec whose part before '=' looks like a path is a file."""
    name, sep, file = spec.partition("=")
    if sep and name and "/" not in name and "\\" not in name and file:
        return name, file
    return None, spec


def _package_inputs(specs: list[str], pipeline: Pipeline | None) -> tuple[list[object], dict[str, object]]:
    """Read ``--input`` specs for a package: ``.npy`` arrays, or encoded images for image inputs.

    Raises:
        UsageError: an image file for an input that does not decode images, or an array input
            given twice.
    """
    from modelpress.pipeline.preprocess import DecodeImageStep
    from modelpress.runtime.run import load_array

    positional: list[object] = []
    named: dict[str, object] = {}
    for spec in specs:
        name, file = _split_input(spec)
        steps = pipeline.inputs.get(name, []) if pipeline is not None and name is not None else []
        if steps and isinstance(steps[0], DecodeImageStep):
            assert name is not None  # steps are only looked up by input name
            images = named.setdefault(name, [])
            assert isinstance(images, list)  # the same name as an array would have failed earlier
            images.append(_read_bytes(file))
        elif Path(file).suffix != ".npy":
            raise UsageError(
                f"--input {spec}: give a .npy array; encoded images are taken as NAME=FILE by inputs "
                "whose pipeline starts with decode_image"
            )
        elif name is None:
            positional.append(load_array(file))
        elif name in named:
            raise UsageError(f"--input {spec}: input '{name}' is given twice")
        else:
            named[name] = load_array(file)
    return positional, named


def _read_bytes(file: str) -> bytes:
    try:
        return Path(file).read_bytes()
    except OSError as e:
        raise UsageError(f"{file}: cannot read the input file: {e}") from e
