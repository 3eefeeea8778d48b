"""Post-processing steps: model outputs -> what an application wants (probabilities, labels, values).

All steps work on whole arrays with numpy. ``softmax`` subtracts the maximum along its axis
before exponentiating, so large logits do not overflow. ``top_k`` is terminal: it returns
several named arrays (``indices``, ``scores`` and, with labels, ``labels``), which the pipeline
reports as ``OUTPUT.indices`` and so on.
"""

from __future__ import annotations

import typing

import numpy as np

from modelpress.pipeline.steps import Param, Step, boolean, integer, labels, number, numbers, optional

__all__ = [
    "ArgmaxStep",
    "DiscretizeStep",
    "RescaleStep",
    "RoundStep",
    "SigmoidStep",
    "SoftmaxStep",
    "ThresholdStep",
    "TopKStep",
]


def _label_array(step: Step, names: list[str], classes: int) -> np.ndarray:
    if len(names) != classes:
        raise step.fail(f"has {len(names)} labels but the output has {classes} classes")
    return np.asarray(names, dtype=np.str_)  # fixed-width unicode: saved to .npz without pickle


def _class_axis(step: Step, x: np.ndarray, axis: int) -> int:
    if not -x.ndim <= axis < x.ndim:
        raise step.fail(f"axis {axis} does not exist in an output of shape {list(x.shape)}")
    return axis % x.ndim


class SoftmaxStep(Step):
    """``exp(x - max) / sum(exp(x - max))`` along ``axis`` (-1): logits -> probabilities."""

    name = "softmax"
    stage = "post"
    params_spec: typing.ClassVar = {"axis": Param(integer(), -1)}

    def apply(self, value: object) -> np.ndarray:
        """Normalize along the axis."""
        x = self.numeric(value)
        axis = _class_axis(self, x, self.params["axis"])
        shifted = np.exp(x - x.max(axis=axis, keepdims=True))
        probabilities: np.ndarray = shifted / shifted.sum(axis=axis, keepdims=True)
        return probabilities


class SigmoidStep(Step):
    """``1 / (1 + exp(-x))``: binary or multi-label logits -> probabilities."""

    name = "sigmoid"
    stage = "post"

    def apply(self, value: object) -> np.ndarray:
        """Element-wise logistic function (computed without overflow for large |x|)."""
        x = self.numeric(value)
        # exp of a non-positive number never overflows: split by sign.
        e = np.exp(-np.abs(x))
        probabilities: np.ndarray = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)
        return probabilities


class ArgmaxStep(Step):
    """The best class along ``axis`` (-1): its index, or its name when ``labels`` are given."""

    name = "argmax"
    stage = "post"
    params_spec: typing.ClassVar = {"axis": Param(integer(), -1), "labels": Param(optional(labels), None)}

    def apply(self, value: object) -> np.ndarray:
        """Index (int64) or label (unicode str array) of the maximum."""
        x = self.numeric(value)
        axis = _class_axis(self, x, self.params["axis"])
        index: np.ndarray = x.argmax(axis=axis).astype(np.int64)
        if self.params["labels"] is None:
            return index
        names: np.ndarray = _label_array(self, self.params["labels"], x.shape[axis])[index]
        return names


class TopKStep(Step):
    """The ``k`` best classes of each row, best first: indices, scores and (with ``labels``) names.

    Ties keep the lower class index first (a stable sort), so results are deterministic.
    """

    name = "top_k"
    stage = "post"
    terminal = True
    params_spec: typing.ClassVar = {
        "k": Param(integer(minimum=1), 5),
        "labels": Param(optional(labels), None),
    }

    def apply(self, value: object) -> dict[str, np.ndarray]:
        """``{"indices": [..., k] int64, "scores": [..., k], "labels": [..., k]}`` along the last axis."""
        x = self.numeric(value)
        if x.ndim == 0:
            raise self.fail("expects class scores along the last axis, got a scalar")
        k = min(self.params["k"], x.shape[-1])
        indices = np.argsort(-x, axis=-1, kind="stable")[..., :k].astype(np.int64)
        result = {"indices": indices, "scores": np.take_along_axis(x, indices, axis=-1)}
        if self.params["labels"] is not None:
            result["labels"] = _label_array(self, self.params["labels"], x.shape[-1])[indices]
        return result


class ThresholdStep(Step):
    """``x >= threshold`` -> 1 else 0 (int64), or ``labels[0]`` / ``labels[1]``."""

    name = "threshold"
    stage = "post"
    params_spec: typing.ClassVar = {
        "threshold": Param(number(), 0.5),
        "labels": Param(optional(labels), None),
    }

    def validate(self) -> None:
        """Labels, when given, are exactly [below, at-or-above]."""
        if self.params["labels"] is not None and len(self.params["labels"]) != 2:
            raise self.bad("labels", f"must be [below, above] (2 names), got {len(self.params['labels'])}")

    def apply(self, value: object) -> np.ndarray:
        """Binarize the batch."""
        decision: np.ndarray = (self.numeric(value) >= self.params["threshold"]).astype(np.int64)
        if self.params["labels"] is None:
            return decision
        names: np.ndarray = np.asarray(self.params["labels"], dtype=np.str_)[decision]
        return names


class DiscretizeStep(Step):
    """Bin values by ascending edges: bin i holds ``bins[i-1] <= x < bins[i]`` (``right``: ``<`` and ``<=``).

    With n edges there are n + 1 bins; ``labels`` (n + 1 names) replace the bin indices.
    """

    name = "discretize"
    stage = "post"
    params_spec: typing.ClassVar = {
        "bins": Param(numbers()),
        "labels": Param(optional(labels), None),
        "right": Param(boolean, False),
    }

    def validate(self) -> None:
        """Edges strictly increasing; one label per bin."""
        edges = self.params["bins"] if isinstance(self.params["bins"], list) else [self.params["bins"]]
        self.params["bins"] = edges
        if any(b >= a for a, b in zip(edges[1:], edges[:-1], strict=True)):
            raise self.bad("bins", f"must be strictly increasing, got {edges}")
        names = self.params["labels"]
        if names is not None and len(names) != len(edges) + 1:
            raise self.bad(
                "labels", f"must name all {len(edges) + 1} bins of {len(edges)} edges, got {len(names)}"
            )

    def apply(self, value: object) -> np.ndarray:
        """Bin index (int64) or bin label of every value."""
        index: np.ndarray = np.digitize(
            self.numeric(value), self.params["bins"], right=self.params["right"]
        ).astype(np.int64)
        if self.params["labels"] is None:
            return index
        names: np.ndarray = np.asarray(self.params["labels"], dtype=np.str_)[index]
        return names


class RoundStep(Step):
    """Round to ``decimals`` (0) places, halves to even (numpy's rule)."""

    name = "round"
    stage = "any"
    params_spec: typing.ClassVar = {"decimals": Param(integer(), 0)}

    def apply(self, value: object) -> np.ndarray:
        """Round the batch."""
        return np.round(self.numeric(value), self.params["decimals"])


class RescaleStep(Step):
    """``x * scale + offset`` (scalars or per index of ``axis``): undo a target's standardization."""

    name = "rescale"
    stage = "any"
    params_spec: typing.ClassVar = {
        "scale": Param(numbers(), 1.0),
        "offset": Param(numbers(), 0.0),
        "axis": Param(integer(), -1),
    }

    def apply(self, value: object) -> np.ndarray:
        """Scale and shift the batch."""
        x = self.numeric(value)
        axis = self.params["axis"]
        scaled: np.ndarray = x * self.along("scale", x, axis) + self.along("offset", x, axis)
        return scaled
