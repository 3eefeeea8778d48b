"""Glue shared by ``compress --retrain`` (``retrain``) and ``modelpress distill`` (``distill``).

Both train a torch module on a folder of ``.npz`` files and export it verified: they resolve a
torch source as ``modelpress convert`` does, accept one float32 batched input, take that input
from the first data file when none is given, and read the data with the accuracy-aware mode's
reader (``quantize.data.EvalData``). The error messages are each caller's own, word for word.
"""

from __future__ import annotations

import os
import typing
import zipfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

from modelpress.convert import InputSpec, Source, load_source
from modelpress.errors import CalibrationError, UsageError
from modelpress.quantize.data import LABELS_KEY, EvalData

Role = typing.Literal["retraining", "student", "teacher"]
Training = typing.Literal["retraining", "distillation"]

# Per role: how its "not a torch module" message starts, and its refusal of an ONNX source
# (None: ONNX is accepted for that role, the caller runs it on onnxruntime instead).
_ROLES: dict[Role, tuple[str, str | None]] = {
    "retraining": (
        "retraining needs",
        "retraining needs the torch model, not ONNX; give the module as package.module:factory or a "
        "saved .pt (or drop --retrain to compress the ONNX post-training)",
    ),
    "student": (
        "the student must be",
        "the student is trained, so it must be a torch module: give package.module:factory or a saved "
        ".pt (the teacher may be ONNX)",
    ),
    "teacher": ("the teacher must be", None),
}

# Per kind of training: the messages of ``one_float_input`` for (not one spec, not float32 [N, ...]).
_ONE_INPUT: dict[Training, tuple[str, str]] = {
    "retraining": (
        "retraining feeds one input tensor (forward(x)); {count} example inputs were given",
        "example input {spec}: retraining feeds float32 batches [N, ...]; give NAME=1x...:float32",
    ),
    "distillation": (
        "distillation feeds one float32 batch [N, ...]; give one NAME=1x...:float32 (got {given})",
        "distillation feeds one float32 batch [N, ...]; give one NAME=1x...:float32 (got {given})",
    ),
}


def refuse_onnx(source: str | os.PathLike[str], role: Role) -> None:
    """Raise ``UsageError`` if ``source`` is an ``.onnx`` file and ``role`` needs a torch module.

    Cheap (the name only), so callers run it before reading data; ``torch_source`` runs it too.
    """
    refusal = _ROLES[role][1]
    if refusal is not None and Path(os.fspath(source)).suffix.lower() == ".onnx":
        raise UsageError(f"{os.fspath(source)}: {refusal}")


def torch_source(source: str | os.PathLike[str], role: Role, *, trust_pickle: bool) -> Source:
    """Resolve ``source`` as ``modelpress convert`` does and require a ``torch.nn.Module``.

    Args:
        source: ``package.module:factory`` or a saved ``.pt``/``.pth`` module.
        role: What the module is for (``retraining``, the distillation ``student`` or
            ``teacher``); the messages name it.
        trust_pickle: Allow unpickling a saved ``.pt`` (it runs code from the file).

    Raises:
        UsageError: ``source`` is an ``.onnx`` (for a role that trains it), or not a torch module.
    """
    refuse_onnx(source, role)
    src = load_source(source, trust_pickle=trust_pickle)
    if src.kind != "torch":
        raise UsageError(f"{src.description}: {_ROLES[role][0]} a torch.nn.Module, got a {src.kind} model")
    return src


def one_float_input(specs: list[InputSpec], what: Training) -> InputSpec:
    """The single float32, batched input that the ``what`` training loop feeds.

    Raises:
        UsageError: not exactly one spec, or it is not float32 with a batch axis.
    """
    wrong_count, wrong_type = _ONE_INPUT[what]
    given = ", ".join(str(s) for s in specs) or "none"
    if len(specs) != 1:
        raise UsageError(wrong_count.format(count=len(specs), given=given))
    spec = specs[0]
    if spec.dtype != "float32" or not spec.shape:
        raise UsageError(wrong_type.format(spec=spec, given=given))
    return spec


def specs_from_data(folder: Path) -> list[InputSpec]:
    """The example input read off the first ``.npz``: its one non-label array, axis 0 the batch."""
    first = min(folder.glob("*.npz"), default=None) if folder.is_dir() else None
    if first is None:
        what = "does not exist" if not folder.exists() else "holds no .npz file"
        raise CalibrationError(
            f"training data folder '{folder}' {what}; save the inputs and their labels per file with "
            f"numpy.savez(f, x=inputs, {LABELS_KEY}=classes)"
        )
    try:
        with zipfile.ZipFile(first) as archive:
            names = [m[: -len(".npy")] for m in archive.namelist() if m.endswith(".npy")]
        keys = [name for name in names if name != LABELS_KEY]
        if len(keys) != 1:
            raise UsageError(
                f"{first}: holds {len(keys)} input arrays ({', '.join(keys) or 'none'}); give "
                "--example-input NAME=1x... for the one forward() takes"
            )
        with np.load(first, allow_pickle=False) as arrays:
            shape = arrays[keys[0]].shape
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CalibrationError(f"{first}: cannot read the file: {e}; re-save it with numpy.savez") from e
    if len(shape) < 2:
        raise UsageError(
            f"{first}: '{keys[0]}' has shape {list(shape)}; give --example-input NAME=1x... (a batch of one)"
        )
    return [InputSpec(keys[0], (1, *shape[1:]))]


@typing.overload
def read_npz_data(
    folder: Path, spec: InputSpec, *, labels: typing.Literal[True]
) -> tuple[np.ndarray, np.ndarray]: ...


@typing.overload
def read_npz_data(folder: Path, spec: InputSpec, *, labels: bool) -> tuple[np.ndarray, np.ndarray | None]: ...


def read_npz_data(folder: Path, spec: InputSpec, *, labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Every input of ``folder`` and its labels (None if the files have none), checked by ``EvalData``.

    Args:
        folder: ``.npz`` files, each with the input array and optionally ``labels``.
        spec: The input: its name, and its shape after the batch axis.
        labels: Require labels (retraining needs the class of every sample).

    Raises:
        CalibrationError: as ``EvalData``, or ``labels`` is True and the files have none.
    """
    value = ir.Value(
        name=spec.name,
        shape=ir.Shape([ir.SymbolicDim("batch"), *spec.shape[1:]]),
        type=ir.TensorType(ir.DataType.FLOAT),
    )
    # EvalData reads against a model's graph inputs: this one has just the input to train on.
    data = EvalData(folder, ir.Model(ir.Graph([value], [], nodes=[], opset_imports={"": 17}), ir_version=10))
    if labels and not data.has_labels:
        raise CalibrationError(
            f"training data folder '{folder}' has no '{LABELS_KEY}' array: retraining needs the class of "
            f"every sample; save each file as numpy.savez(f, {spec.name}=inputs, {LABELS_KEY}=classes)"
        )
    batches = list(data)
    inputs = np.concatenate([feeds[spec.name] for feeds, _ in batches])
    if not data.has_labels:
        return inputs, None
    return inputs, np.concatenate([y for _, y in batches if y is not None])
