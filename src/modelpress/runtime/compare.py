"""Numeric equivalence of two models on onnxruntime with its graph optimizations off.

Both models run on CPU onnxruntime at ``ORT_DISABLE_ALL``, one session at a time, on the same
feeds (given, or random per seed with dynamic dims bound). Every output is compared by name.
The error measures are:

* ``max_abs``: the largest ``|candidate - reference|``;
* ``max_rel``: ``max_abs`` divided by the largest ``|reference|`` of that output, i.e. the
  error relative to the output's scale. (An element-wise ratio explodes wherever the
  reference is near zero, which says nothing about a rewrite's quality.)

NaNs must sit at the same positions (they then count as equal); a NaN mismatch, a shape or
dtype mismatch, or a missing output gives an infinite error. Integer, boolean and string
outputs must match exactly.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx_ir as ir

from modelpress.errors import NumericMismatchError
from modelpress.ir import io
from modelpress.runtime.feeds import random_feeds
from modelpress.runtime.session import OptLevel, create_session, run_session

__all__ = ["Comparison", "OutputDiff", "compare_models", "float_errors", "run_model"]

Feeds = collections.abc.Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class OutputDiff:
    """The error of one output for one feed."""

    name: str
    seed: int | None
    max_abs: float
    max_rel: float
    index: tuple[int, ...] | None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Per-output errors of a candidate model against a reference model."""

    diffs: list[OutputDiff]

    def worst(self) -> dict[str, OutputDiff]:
        """The largest error of each output over all feeds (by relative, then absolute error)."""
        worst: dict[str, OutputDiff] = {}
        for diff in self.diffs:
            if diff.name not in worst or _rank(diff) > _rank(worst[diff.name]):
                worst[diff.name] = diff
        return worst

    @property
    def max_rel(self) -> float:
        """The largest relative error over every output and feed."""
        return max((d.max_rel for d in self.diffs), default=0.0)

    @property
    def max_abs(self) -> float:
        """The largest absolute error over every output and feed."""
        return max((d.max_abs for d in self.diffs), default=0.0)

    def within(self, rtol: float) -> bool:
        """Whether every output's relative error is at most ``rtol``."""
        return self.max_rel <= rtol

    def check(self, rtol: float, *, what: str = "candidate") -> None:
        """Raise ``NumericMismatchError`` naming the worst output when ``rtol`` is exceeded.

        Raises:
            NumericMismatchError: names the output, the seed, both errors and the index.
        """
        if self.within(rtol):
            return
        bad = max(self.diffs, key=_rank)
        raise NumericMismatchError(
            f"{what} differs from the reference on output '{bad.name}' (seed {bad.seed}): "
            f"max rel error {bad.max_rel:.3g} > {rtol:.3g}, max abs error {bad.max_abs:.3g} "
            f"at index {bad.index}{'; ' + bad.note if bad.note else ''}; find the rewrite "
            "responsible by running fewer passes, or loosen the tolerance if this error is expected"
        )

    def to_json(self) -> list[dict[str, object]]:
        """Worst error per output, JSON-serializable."""
        return [
            {
                "output": d.name,
                "seed": d.seed,
                "max_abs": d.max_abs,
                "max_rel": d.max_rel,
                "index": list(d.index) if d.index is not None else None,
                "note": d.note,
            }
            for d in self.worst().values()
        ]


def _rank(diff: OutputDiff) -> tuple[float, float]:
    return (diff.max_rel, diff.max_abs)


ModelLike = ir.Model | bytes | str | Path


def run_model(
    model: ModelLike, feeds: Feeds, *, level: OptLevel = "disable", threads: int | None = None
) -> dict[str, object]:
    """Run ``model`` once on onnxruntime and return its outputs by name.

    Raises:
        ModelLoadError: onnxruntime cannot load the model.
        UsageError: a model input has no feed.
        InvalidModelError: onnxruntime failed while running it.
    """
    session = create_session(model, level=level, threads=threads)
    return run_session(session, feeds)


def compare_models(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    feeds: Feeds | collections.abc.Sequence[Feeds] | None = None,
    seeds: collections.abc.Sequence[int] = (0,),
    dim_values: collections.abc.Mapping[str, int] | None = None,
) -> Comparison:
    """Run both models on the same feeds and measure the error of every output.

    Args:
        reference: The model taken as correct (e.g. the input of a pass).
        candidate: The model checked against it.
        feeds: One feed dict or a list of them; when None, random feeds per seed.
        seeds: Seeds of the random feeds (ignored when ``feeds`` is given).
        dim_values: Sizes of dynamic dims for random feeds (see ``feeds.input_specs``).

    Returns:
        The per-output, per-feed errors, in the reference's output order.

    Raises:
        UsageError: random feeds cannot be made for an input, or a given feed is missing.
        ModelLoadError: a model cannot be loaded.
        InvalidModelError: onnxruntime failed while running a model.
    """
    ref_model = reference if isinstance(reference, ir.Model) else io.load(reference)
    feed_list: list[tuple[int | None, Feeds]]
    if feeds is None:
        feed_list = [(seed, random_feeds(ref_model, seed, dim_values=dim_values)) for seed in seeds]
    elif isinstance(feeds, collections.abc.Mapping):
        feed_list = [(None, feeds)]
    else:
        feed_list = [(None, f) for f in feeds]
    # One session alive at a time: no idle threads of one session steal cores from the other.
    # A path or bytes goes to onnxruntime as is: no second serialization of the reference.
    ref_source = ref_model if isinstance(reference, ir.Model) else reference
    ref_outputs = _run_all(ref_source, [f for _, f in feed_list])
    cand_outputs = _run_all(candidate, [f for _, f in feed_list])
    diffs = []
    for (seed, _), ref, cand in zip(feed_list, ref_outputs, cand_outputs, strict=True):
        for name, ref_value in ref.items():
            if name not in cand:
                diffs.append(
                    OutputDiff(name, seed, math.inf, math.inf, None, "output missing from candidate")
                )
                continue
            diffs.append(_diff(name, seed, ref_value, cand[name]))
    return Comparison(diffs)


def _run_all(model: ModelLike, feed_list: list[Feeds]) -> list[dict[str, object]]:
    session = create_session(model)
    return [run_session(session, feeds) for feeds in feed_list]


def _is_float(dtype: np.dtype) -> bool:
    # ml_dtypes floats (bfloat16, float8_*) have numpy kind "V" but are floats.
    return dtype.kind == "f" or (dtype.kind == "V" and dtype.name.startswith(("bfloat", "float")))


def _diff(name: str, seed: int | None, ref: object, cand: object) -> OutputDiff:
    if isinstance(ref, list):  # sequence outputs: compare element-wise, keep the worst
        if not isinstance(cand, list) or len(cand) != len(ref):
            return OutputDiff(name, seed, math.inf, math.inf, None, "sequence length differs")
        parts = [_diff(name, seed, r, c) for r, c in zip(ref, cand, strict=True)]
        return max(
            parts, key=lambda d: (d.max_rel, d.max_abs), default=OutputDiff(name, seed, 0.0, 0.0, None)
        )
    ref_arr, cand_arr = np.asarray(ref), np.asarray(cand)
    if ref_arr.shape != cand_arr.shape:
        return OutputDiff(name, seed, math.inf, math.inf, None, f"shape {cand_arr.shape} != {ref_arr.shape}")
    if ref_arr.dtype != cand_arr.dtype:
        return OutputDiff(name, seed, math.inf, math.inf, None, f"dtype {cand_arr.dtype} != {ref_arr.dtype}")
    if ref_arr.size == 0:
        return OutputDiff(name, seed, 0.0, 0.0, None)
    if ref_arr.dtype.kind == "c":
        return _float_diff(name, seed, ref_arr.astype(np.complex128), cand_arr.astype(np.complex128))
    if _is_float(ref_arr.dtype):
        return _float_diff(name, seed, ref_arr.astype(np.float64), cand_arr.astype(np.float64))
    unequal = ref_arr != cand_arr
    if not np.any(unequal):
        return OutputDiff(name, seed, 0.0, 0.0, None)
    index = tuple(int(i) for i in np.argwhere(unequal)[0])
    return OutputDiff(name, seed, math.inf, math.inf, index, "non-float values differ")


def _float_diff(name: str, seed: int | None, ref: np.ndarray, cand: np.ndarray) -> OutputDiff:
    """Errors of float (or complex) arrays of one shape, in float64."""
    max_abs, max_rel, index, note = float_errors(ref, cand)
    return OutputDiff(name, seed, max_abs, max_rel, index, note)


def float_errors(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, tuple[int, ...] | None, str]:
    """``(max_abs, max_rel, index of max_abs, note)`` of two float arrays of one shape.

    The measures of this module's docstring: NaNs must sit at the same positions (then they
    match, as do equal infinities); ``max_rel`` is relative to the largest finite ``|ref|``.
    """
    ref_nan, cand_nan = np.isnan(ref), np.isnan(cand)
    if (ref_nan != cand_nan).any():
        index = tuple(int(i) for i in np.argwhere(ref_nan != cand_nan)[0])
        return math.inf, math.inf, index, "NaN at different positions"
    same = ref_nan | (np.isinf(ref) & (ref == cand))  # equal infinities and NaN pairs match
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(cand - ref).astype(np.float64)
    err[same] = 0.0
    err[np.isnan(err)] = math.inf  # inf - inf of the same sign cannot happen here; opposite signs can
    flat = int(np.argmax(err))
    max_abs = float(err.reshape(-1)[flat])
    finite_ref = np.abs(ref[np.isfinite(ref)])
    scale = float(finite_ref.max()) if finite_ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return max_abs, max_rel, tuple(int(i) for i in np.unravel_index(flat, err.shape)), ""
