"""Output quality of each benchmarked model on the whole ``--data`` set: accuracy and agreement.

When the data holds a ``labels`` array (one integer class per row), every model is run once on
all rows and its top-1 accuracy is the share of rows whose first output's arg-max (over the
last axis) equals the label. Whether or not labels are given, each model is also compared with
the first model on the same rows: top-1 agreement (same arg-max), the mean cosine similarity of
the first output's rows, and the max absolute difference over every output. A package runs its
pre-processing (the data are then raw inputs) and the quality is read from the model's raw
outputs, before post-processing.

The rows are fed ``chunk`` at a time; a last, shorter chunk is padded by repeating rows (a model
with a fixed batch dim still takes it) and the padding's outputs are dropped.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import typing

import numpy as np

from modelpress.errors import UsageError

__all__ = ["LABELS_KEY", "Quality", "agreement", "collect_outputs", "compare_quality"]

LABELS_KEY = "labels"
Arrays = dict[str, np.ndarray]
# runs one batch of inputs and returns the model's raw outputs by name
RunFn = collections.abc.Callable[[Arrays], collections.abc.Mapping[str, typing.Any]]


@dataclasses.dataclass(frozen=True)
class Quality:
    """Quality of one model's outputs on the ``--data`` rows.

    Attributes:
        samples: Rows evaluated.
        accuracy: Top-1 accuracy against ``labels``; None without labels.
        agreement_vs_first: Share of rows whose top-1 class equals the first model's (None for
            the first model itself, or when the first output is not a class score vector).
        cosine_vs_first: Mean cosine similarity of the first output's rows with the first
            model's (None for the first model).
        max_abs_diff_vs_first: Largest absolute difference over every output and row.
    """

    samples: int
    accuracy: float | None
    agreement_vs_first: float | None = None
    cosine_vs_first: float | None = None
    max_abs_diff_vs_first: float | None = None

    def to_json(self) -> dict[str, typing.Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


def collect_outputs(
    run: RunFn, data: collections.abc.Mapping[str, np.ndarray], names: list[str], chunk: int
) -> Arrays:
    """Every output of ``run`` over all rows of ``data[names]``, concatenated along rows.

    Raises:
        UsageError: the inputs do not have the same number of rows, or a model returns an
            output whose rows do not match its inputs'.
    """
    rows = {name: int(np.asarray(data[name]).shape[0]) if np.ndim(data[name]) else 0 for name in names}
    counts = set(rows.values())
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"--data: every input needs the same number of rows (>= 1) to evaluate; got {rows}")
    total = counts.pop()
    pieces: dict[str, list[np.ndarray]] = {}
    for start in range(0, total, chunk):
        index = np.arange(start, start + chunk) % total
        outputs = run({name: np.take(np.asarray(data[name]), index, axis=0) for name in names})
        keep = min(chunk, total - start)
        for name, value in outputs.items():
            array = np.asarray(value)
            if array.ndim == 0 or array.shape[0] != chunk:
                raise UsageError(
                    f"output '{name}' has shape {list(array.shape)} for a batch of {chunk} rows: "
                    "accuracy needs outputs with one row per input row"
                )
            pieces.setdefault(name, []).append(array[:keep])
    return {name: np.concatenate(parts) for name, parts in pieces.items()}


def compare_quality(
    outputs: Arrays, first: Arrays | None, labels: np.ndarray | None, *, where: str
) -> Quality:
    """Quality of ``outputs`` (from ``collect_outputs``) against ``labels`` and the first model.

    Raises:
        UsageError: ``labels`` does not have one integer per row.
    """
    primary = next(iter(outputs.values()))
    samples = int(primary.shape[0])
    accuracy = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape[:1] != (samples,) or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise UsageError(
                f"{where}: --data '{LABELS_KEY}' must be one integer class per row ({samples} rows); "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        accuracy = float(np.mean(_top1(primary) == labels)) if primary.ndim >= 2 else None
    if first is None:
        return Quality(samples, accuracy)
    base = next(iter(first.values()))
    diffs = [
        float(np.max(np.abs(outputs[name].astype(np.float64) - value.astype(np.float64))))
        for name, value in first.items()
        if name in outputs and outputs[name].shape == value.shape and outputs[name].size
    ]
    return Quality(
        samples,
        accuracy,
        agreement_vs_first=agreement(primary, base),
        cosine_vs_first=_mean_cosine(primary, base),
        max_abs_diff_vs_first=max(diffs) if diffs else None,
    )


def agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """Share of rows where ``a`` and ``b`` have the same arg-max over the last axis."""
    if a.shape != b.shape or a.ndim < 2 or a.shape[-1] < 2:
        return None
    return float(np.mean(_top1(a) == _top1(b)))


def _top1(scores: np.ndarray) -> np.ndarray:
    best: np.ndarray = np.argmax(scores.reshape(scores.shape[0], -1, scores.shape[-1]), axis=-1)[:, 0]
    return best


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.shape != b.shape or a.size == 0:
        return None
    x = a.reshape(a.shape[0], -1).astype(np.float64)
    y = b.reshape(b.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    same = np.all(x == y, axis=1)  # two zero rows are identical, not undefined
    cosine = np.where(same, 1.0, np.sum(x * y, axis=1) / np.where(norms > 0, norms, 1.0))
    return float(np.mean(cosine))
