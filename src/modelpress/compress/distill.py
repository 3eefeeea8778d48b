"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a small torch student learns soft targets.

Why: a large model's logits carry more than its top-1 answer. Which wrong classes it finds
plausible ("this 7 looks a bit like a 1") is information a label does not hold, and a student
trained to match the whole softened distribution generalises better than one trained on labels
alone at the same size. The student is then exported like any torch model, so distillation is
a compression step that changes the architecture, not the weights' encoding.

The loss, per batch, with teacher logits ``t``, student logits ``s``, temperature ``T`` and
labels ``y``::

    alpha * T**2 * KL(softmax(t / T) || softmax(s / T))  +  (1 - alpha) * CE(s, y)

The KL term is averaged over the batch (``kl_div(..., reduction="batchmean")``). Its gradient
scales as ``1 / T**2``, and the ``T**2`` factor keeps the two terms' relative weight the same
whatever ``T`` is (the paper, §2). Without labels the hard term has nothing to fit, so ``alpha``
is 1 (the report's ``notes`` says so when another value was asked for).

The teacher is a ``torch.nn.Module`` or an ONNX model (a path or an ``onnx_ir.Model``), run on
onnxruntime (``runtime.session``), so a teacher converted from any framework works. Its logits
on the training inputs are computed once up front, in batches and without gradients: the
teacher never changes, and training-time augmentation (which would need it per step) is not
done here.

What differs from the paper: Adam instead of SGD; one temperature for the whole run; no
dropout or weight-decay schedule (whatever the student module holds is used as is); the
"matching logits" limit (``T`` large, zero-meaned logits) is not special-cased. Attention or
feature-map transfer (FitNets, attention transfer) is not done: only the output logits are
matched, so teacher and student may have any architecture with the same number of classes.

Limits: one float32 input tensor (``forward(x)``), logits ``[N, classes]`` out, the whole
transfer set held in memory.

torch is an optional dependency: it is imported inside the functions only.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import logging
import math
import os
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from modelpress.compress import _torch_io
from modelpress.convert import ConversionReport, InputSpec, convert_source, parse_input_spec
from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.ir.stats import model_stats
from modelpress.runtime.session import create_session, run_session

if typing.TYPE_CHECKING:
    import torch

__all__ = ["DistillEpoch", "DistillReport", "distill", "distill_to_onnx"]

logger = logging.getLogger(__name__)

# Teacher and evaluation forward passes run in batches of this many samples (memory only).
_INFERENCE_BATCH = 1024
Teacher = typing.Union["torch.nn.Module", ir.Model, str, os.PathLike[str]]


@dataclasses.dataclass(frozen=True)
class DistillEpoch:
    """One finished epoch (also what the ``progress`` callback receives).

    Attributes:
        epoch: 1-based epoch number.
        epochs: Epochs in the run.
        loss: Mean of the combined loss over the epoch's batches (per sample).
        agreement: Running top-1 agreement with the teacher over the epoch's training batches.
    """

    epoch: int
    epochs: int
    loss: float
    agreement: float


@dataclasses.dataclass
class DistillReport:
    """What ``distill`` did, and teacher vs student on the evaluation data.

    Attributes:
        teacher_kind: ``torch`` or ``onnx`` (run on onnxruntime).
        teacher_parameters: Teacher parameter count (ONNX: initializer values).
        student_parameters: Student parameter count.
        teacher_weight_bytes: Bytes of the teacher's parameters.
        student_weight_bytes: Bytes of the student's parameters.
        temperature: ``T`` of the soft targets.
        alpha: Weight of the soft (KL) term actually used (1 without labels).
        epochs: Training epochs.
        lr: Adam's learning rate.
        batch_size: Samples per optimizer step.
        seed: Seed of the batch order and of torch's global RNG.
        train_samples: Samples in the transfer set.
        eval_samples: Samples the figures below were measured on.
        eval_on_training: True when no evaluation data was given and the figures are on the
            training data (optimistic).
        teacher_accuracy: Teacher top-1 on the evaluation data (None without labels).
        student_accuracy: Student top-1 on the evaluation data (None without labels).
        agreement: Fraction of evaluation samples where student and teacher top-1 agree.
        history: One entry per epoch.
        notes: Things the caller should know (e.g. alpha forced to 1).
        teacher_seconds: Wall time of the teacher's forward passes.
        seconds: Wall time in all.
    """

    teacher_kind: str
    teacher_parameters: int
    student_parameters: int
    teacher_weight_bytes: int
    student_weight_bytes: int
    temperature: float
    alpha: float
    epochs: int
    lr: float
    batch_size: int
    seed: int
    train_samples: int = 0
    eval_samples: int = 0
    eval_on_training: bool = False
    teacher_accuracy: float | None = None
    student_accuracy: float | None = None
    agreement: float = 0.0
    history: list[DistillEpoch] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    teacher_seconds: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-serializable data."""
        return dataclasses.asdict(self)


class _Data(typing.NamedTuple):
    inputs: torch.Tensor
    labels: torch.Tensor | None
    soft_targets: torch.Tensor  # teacher logits
    generator: torch.Generator


def _check_options(temperature: float, alpha: float, epochs: int, lr: float, batch_size: int) -> None:
    """Raise ``UsageError`` unless T > 0, alpha in [0, 1], epochs >= 1, lr > 0, batch_size >= 1."""
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise UsageError(f"temperature {temperature!r} must be a positive number (the paper: 1-20, e.g. 4)")
    if not (isinstance(alpha, int | float) and 0.0 <= alpha <= 1.0):
        raise UsageError(
            f"alpha {alpha!r} must be in [0, 1]: the weight of the teacher's soft targets "
            "(1: teacher only, 0: labels only)"
        )
    if not (isinstance(epochs, int) and epochs >= 1):
        raise UsageError(f"epochs {epochs!r} must be an integer >= 1")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise UsageError(f"lr {lr!r} must be a positive number, e.g. 1e-3")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise UsageError(f"batch_size {batch_size!r} must be an integer >= 1")


def distill(
    teacher: Teacher,
    student: torch.nn.Module,
    inputs: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.7,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    eval_inputs: np.ndarray | None = None,
    eval_labels: np.ndarray | None = None,
    progress: collections.abc.Callable[[DistillEpoch], None] | None = None,
) -> DistillReport:
    """Train ``student`` in place on ``teacher``'s soft targets (and the labels, if given).

    Args:
        teacher: A ``torch.nn.Module``, or an ONNX model (path or ``onnx_ir.Model``) run on
            onnxruntime; one float32 input, logits ``[N, classes]`` out. Never changed.
        student: A float32 torch classifier with the same number of classes; trained in
            place, its train/eval mode restored afterwards.
        inputs: The transfer set, ``[N, ...]`` float32.
        labels: Integer class per input, ``[N]``; None trains on soft targets only (alpha 1).
        temperature: ``T`` softening both distributions, > 0 (the paper: 1-20).
        alpha: Weight of the soft term in [0, 1]; ``1 - alpha`` weighs the label term.
        epochs: Passes over the transfer set, >= 1.
        lr: Adam's learning rate.
        batch_size: Samples per optimizer step.
        seed: Seeds the batch order and torch's global RNG (dropout), restored afterwards: the
            same seed gives the same student with the same torch build and thread count.
        eval_inputs: Held-out inputs for the report's figures (default: the training inputs,
            flagged ``eval_on_training``).
        eval_labels: Their classes (accuracies are None without them).
        progress: Called after every epoch.

    Returns:
        The report: per-epoch loss, sizes, and teacher/student accuracy and agreement.

    Raises:
        UsageError: an option is out of range, the arrays do not match, or teacher and student
            disagree on the number of classes.
        ModelLoadError, InvalidModelError: the ONNX teacher cannot be loaded or run.
    """
    import torch

    start = time.perf_counter()
    _check_options(temperature, alpha, epochs, lr, batch_size)
    _check_arrays(inputs, labels, "inputs", "labels")
    if eval_inputs is None and eval_labels is not None:
        raise UsageError("eval_labels given without eval_inputs; pass the held-out inputs as well")
    if eval_inputs is not None:
        _check_arrays(eval_inputs, eval_labels, "eval_inputs", "eval_labels")
    run_teacher, report = _prepare(teacher, student, temperature, alpha, epochs, lr, batch_size, seed)
    if labels is None and alpha != 1.0:
        report.alpha = 1.0
        report.notes.append(
            f"no labels: alpha {alpha:g} -> 1 (the student learns the teacher's targets only)"
        )
    teacher_start = time.perf_counter()
    soft_targets = run_teacher(inputs)
    eval_x = inputs if eval_inputs is None else eval_inputs
    eval_y = labels if eval_inputs is None else eval_labels
    eval_teacher = soft_targets if eval_inputs is None else run_teacher(eval_x)
    report.teacher_seconds = time.perf_counter() - teacher_start
    was_training = student.training
    device = next(student.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        data = _Data(
            torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(device),
            None if labels is None else torch.from_numpy(labels.astype(np.int64)).to(device),
            torch.from_numpy(soft_targets).to(device),
            torch.Generator().manual_seed(seed),
        )
        _check_classes(student, data)
        _train(student, data, report, progress)
    student_eval = _predict_torch(student, eval_x)
    student.train(was_training)
    report.train_samples, report.eval_samples = len(inputs), len(eval_x)
    report.eval_on_training = eval_inputs is None
    report.agreement = float(np.mean(student_eval.argmax(1) == eval_teacher.argmax(1)))
    if eval_y is not None:
        report.teacher_accuracy = float(np.mean(eval_teacher.argmax(1) == eval_y))
        report.student_accuracy = float(np.mean(student_eval.argmax(1) == eval_y))
    report.seconds = time.perf_counter() - start
    logger.info("distilled for %d epochs in %.1f s: agreement %.3f", epochs, report.seconds, report.agreement)
    return report


def _check_arrays(inputs: np.ndarray, labels: np.ndarray | None, what: str, labels_what: str) -> None:
    if np.ndim(inputs) < 2 or len(inputs) == 0:
        raise UsageError(f"{what} must be a batch [N, ...] with N >= 1, got shape {list(np.shape(inputs))}")
    if labels is None:
        return
    if np.shape(labels) != (len(inputs),) or not np.issubdtype(np.asarray(labels).dtype, np.integer):
        raise UsageError(
            f"{labels_what} must be integer classes, one per input ([{len(inputs)}]); got "
            f"{np.asarray(labels).dtype} {list(np.shape(labels))}"
        )


def _prepare(
    teacher: Teacher,
    student: torch.nn.Module,
    temperature: float,
    alpha: float,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> tuple[collections.abc.Callable[[np.ndarray], np.ndarray], DistillReport]:
    """The teacher as a batched logits function, and the report with both models' sizes."""
    import torch

    if not isinstance(student, torch.nn.Module):
        raise UsageError(f"the student must be a torch.nn.Module, got {type(student).__name__}")
    student_params, student_bytes = _torch_size(student)
    if isinstance(teacher, torch.nn.Module):
        run: collections.abc.Callable[[np.ndarray], np.ndarray] = functools.partial(_predict_torch, teacher)
        kind, (params, weight_bytes) = "torch", _torch_size(teacher)
    else:
        model = teacher if isinstance(teacher, ir.Model) else io.load(teacher)
        stats = model_stats(model)
        run = _onnx_teacher(teacher if not isinstance(teacher, ir.Model) else model)
        kind, params, weight_bytes = "onnx", stats.parameters, stats.weight_bytes
    report = DistillReport(
        kind,
        params,
        student_params,
        weight_bytes,
        student_bytes,
        temperature,
        alpha,
        epochs,
        lr,
        batch_size,
        seed,
    )
    return run, report


def _torch_size(module: torch.nn.Module) -> tuple[int, int]:
    """(parameter count, parameter bytes); ``parameters()`` lists a tied weight once."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def _onnx_teacher(
    model: ir.Model | str | os.PathLike[str],
) -> collections.abc.Callable[[np.ndarray], np.ndarray]:
    """A batched logits function running ``model`` on onnxruntime (a path keeps external data)."""
    session = create_session(model)
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        found = ", ".join(f"{i.name} {i.type}" for i in inputs)
        raise UsageError(f"the ONNX teacher must take one float32 input (forward(x)); it takes {found}")
    name = inputs[0].name
    static = inputs[0].shape[0] if inputs[0].shape else None
    step = static if isinstance(static, int) and static > 0 else _INFERENCE_BATCH
    output = session.get_outputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        batches = []
        for begin in range(0, len(x), step):
            feeds = {name: np.ascontiguousarray(x[begin : begin + step], dtype=np.float32)}
            batches.append(np.asarray(run_session(session, feeds, [output])[output], dtype=np.float32))
        return _logits(np.concatenate(batches), "the ONNX teacher's first output")

    return run


def _predict_torch(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of ``module`` in eval mode, without gradients, in batches (its mode restored)."""
    import torch

    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    batches = []
    with torch.no_grad():
        for begin in range(0, len(x), _INFERENCE_BATCH):
            batch = torch.from_numpy(
                np.ascontiguousarray(x[begin : begin + _INFERENCE_BATCH], dtype=np.float32)
            )
            out = module(batch.to(device))
            if not isinstance(out, torch.Tensor):
                raise UsageError(
                    f"the module returned a {type(out).__name__}; distillation needs one logits tensor"
                )
            batches.append(out.float().cpu().numpy())
    module.train(was_training)
    return _logits(np.concatenate(batches), "the torch teacher's output")


def _logits(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim != 2 or array.shape[1] < 2:
        raise UsageError(f"{what} has shape {list(array.shape)}; distillation needs logits [N, classes >= 2]")
    return array


def _check_classes(student: torch.nn.Module, data: _Data) -> None:
    """Raise ``UsageError`` unless the student's logits have the teacher's width."""
    import torch

    with torch.no_grad():
        was_training = student.training
        out = student.eval()(data.inputs[:1])
        student.train(was_training)
    want = data.soft_targets.shape[1]
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, want):
        found = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(
            f"the student returns {found} for one sample; it must return logits [1, {want}] "
            f"(the teacher has {want} classes)"
        )
    if data.labels is not None and not 0 <= int(data.labels.min()) <= int(data.labels.max()) < want:
        raise UsageError(f"labels must be classes in [0, {want}) (the teacher's outputs)")


def _train(
    student: torch.nn.Module,
    data: _Data,
    report: DistillReport,
    progress: collections.abc.Callable[[DistillEpoch], None] | None,
) -> None:
    """Adam on the distillation loss (module docstring) for ``report.epochs`` epochs."""
    import torch
    from torch.nn import functional

    optimizer = torch.optim.Adam(student.parameters(), lr=report.lr)
    temperature, alpha = report.temperature, report.alpha
    teacher_log_probs = functional.log_softmax(data.soft_targets / temperature, dim=1)
    teacher_top1 = data.soft_targets.argmax(dim=1)
    count = len(data.inputs)
    student.train()
    for epoch in range(1, report.epochs + 1):
        order = torch.randperm(count, generator=data.generator).to(data.inputs.device)
        loss_sum, agree = 0.0, 0
        for begin in range(0, count, report.batch_size):
            batch = order[begin : begin + report.batch_size]
            optimizer.zero_grad(set_to_none=True)
            logits = student(data.inputs[batch])
            student_log_probs = functional.log_softmax(logits / temperature, dim=1)
            soft = functional.kl_div(
                student_log_probs, teacher_log_probs[batch], reduction="batchmean", log_target=True
            )
            loss = alpha * temperature**2 * soft
            if data.labels is not None and alpha < 1.0:
                loss = loss + (1.0 - alpha) * functional.cross_entropy(logits, data.labels[batch])
            torch.autograd.backward(loss)
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch)
            agree += int((logits.argmax(dim=1) == teacher_top1[batch]).sum())
        record = DistillEpoch(epoch, report.epochs, loss_sum / count, agree / count)
        report.history.append(record)
        logger.debug("distill epoch %d/%d: loss %.4f", epoch, report.epochs, record.loss)
        if progress is not None:
            progress(record)


def distill_to_onnx(
    teacher: str | os.PathLike[str],
    student: str,
    dst: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    eval_dir: str | os.PathLike[str] | None = None,
    example_inputs: collections.abc.Sequence[str | InputSpec] = (),
    temperature: float = 4.0,
    alpha: float = 0.7,
    epochs: int = 30,
    lr: float = 3e-3,
    trust_pickle: bool = False,
    progress: collections.abc.Callable[[DistillEpoch], None] | None = None,
) -> tuple[DistillReport, ConversionReport]:
    """``modelpress distill``: resolve teacher and student, read the data, distill, export verified.

    Args:
        teacher: An ``.onnx`` file (run on onnxruntime) or a torch source as ``convert`` takes
            it (``package.module:factory``, saved ``.pt``/``.pth``).
        student: A torch source (not ONNX: it is trained).
        dst: Destination ``.onnx``; written atomically, only after the export matched torch.
        data_dir: Transfer set: a folder of ``.npz`` files with the input array and, optionally,
            ``labels`` (read by ``quantize.data.EvalData``).
        eval_dir: Held-out folder of the same form for the report (default: the training data).
        example_inputs: One ``NAME=1x1x8x8`` spec (float32); default: the single non-label
            array of the first training ``.npz``, its first axis the batch.
        temperature: As ``distill``.
        alpha: As ``distill``.
        epochs: As ``distill``.
        lr: As ``distill``.
        trust_pickle: Allow unpickling saved ``.pt`` sources (they run code from the file).
        progress: Called after every epoch.

    Returns:
        The distillation report and the export's conversion report (its numeric checks).

    Raises:
        UsageError: bad options, an ONNX student, a source that is not a torch module.
        CalibrationError: a data folder is missing, empty or does not fit the input.
        ModelLoadError: the ONNX teacher cannot be read.
        ConversionError, NumericMismatchError: the student's export failed or differs from torch.
    """
    _check_options(temperature, alpha, epochs, lr, 64)
    _torch_io.refuse_onnx(student, "student")
    specs = [s if isinstance(s, InputSpec) else parse_input_spec(s) for s in example_inputs]
    spec = _torch_io.one_float_input(specs or _torch_io.specs_from_data(Path(data_dir)), "distillation")
    teacher_obj: Teacher = Path(teacher)
    if Path(teacher).suffix.lower() != ".onnx":
        teacher_obj = _torch_io.torch_source(teacher, "teacher", trust_pickle=trust_pickle).obj
    student_src = _torch_io.torch_source(student, "student", trust_pickle=trust_pickle)
    inputs, labels = _torch_io.read_npz_data(Path(data_dir), spec, labels=False)
    eval_inputs, eval_labels = (
        _torch_io.read_npz_data(Path(eval_dir), spec, labels=False) if eval_dir is not None else (None, None)
    )
    report = distill(
        teacher_obj,
        student_src.obj,
        inputs,
        labels,
        temperature=temperature,
        alpha=alpha,
        epochs=epochs,
        lr=lr,
        eval_inputs=eval_inputs,
        eval_labels=eval_labels,
        progress=progress,
    )
    conversion = convert_source(student_src, dst, example_inputs=[spec])
    return report, conversion
