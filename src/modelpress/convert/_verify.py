"""Checks of a converted model's outputs against the source framework's on the same inputs.

Error measures follow ``modelpress.runtime.compare``: ``max_abs`` is the largest
``|onnx - source|``, ``max_rel`` is ``max_abs`` over the largest ``|source|`` of that output
(relative to the output's scale: an element-wise ratio explodes near zero and says nothing
about the conversion). NaNs must sit at the same positions. Values are compared in float64,
because scikit-learn computes in float64 what the ONNX model computes in float32.

Class labels are compared exactly, except where the source itself has a tie: when its two
best class probabilities are within the probability tolerance, float32 rounding may pick
either class, and that row is counted as a tie, not an error.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import typing

import numpy as np

from modelpress.errors import NumericMismatchError
from modelpress.runtime.compare import float_errors

__all__ = ["OutputCheck", "check_close", "check_labels", "raise_on_failure"]


@dataclasses.dataclass(frozen=True)
class OutputCheck:
    """The verdict on one output for one set of example inputs.

    Attributes:
        output: Output name in the ONNX model.
        feed: Which inputs ran (e.g. ``seed 1, batch 2``).
        max_abs: Largest absolute error (0 or inf for labels).
        max_rel: ``max_abs`` relative to the largest source magnitude.
        index: Position of the largest error, or of the first differing label.
        tolerance: The rule applied (``max rel 1e-4``, ``max abs 1e-5``, ``exact``).
        ok: Whether the output passed.
        note: Extra detail (ties accepted, shape adapted, why it failed).
    """

    output: str
    feed: str
    max_abs: float
    max_rel: float
    index: tuple[int, ...] | None
    tolerance: str
    ok: bool
    note: str = ""

    def to_json(self) -> dict[str, typing.Any]:
        """A JSON-serializable dict (infinities as strings)."""
        data = dataclasses.asdict(self)
        for key in ("max_abs", "max_rel"):
            if math.isinf(data[key]):
                data[key] = "inf"
        data["index"] = list(self.index) if self.index is not None else None
        return data


def _aligned(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray | None, str]:
    """``ref`` in ``cand``'s shape when only the layout differs (scikit-learn's (N,) vs (N, 1))."""
    if ref.shape == cand.shape:
        return ref, ""
    if ref.size == cand.size:
        return ref.reshape(cand.shape), f"source shape {ref.shape} read as {cand.shape}"
    return None, f"shape {cand.shape} != source shape {ref.shape}"


def check_close(
    output: str,
    feed: str,
    ref: np.ndarray,
    cand: np.ndarray,
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> OutputCheck:
    """Compare one output within ``rtol`` (relative to scale) or ``atol``; non-floats exactly.

    Exactly one of ``rtol`` and ``atol`` is given for float outputs.
    """
    ref, cand = np.asarray(ref), np.asarray(cand)
    tolerance = f"max rel {rtol:g}" if rtol is not None else f"max abs {atol:g}"
    aligned, note = _aligned(ref, cand)
    if aligned is None:
        return OutputCheck(output, feed, math.inf, math.inf, None, tolerance, False, note)
    if aligned.dtype.kind not in "fc" or cand.dtype.kind not in "fc":
        return _exact(output, feed, aligned, cand, note)
    if aligned.size == 0:
        return OutputCheck(output, feed, 0.0, 0.0, None, tolerance, True, note)
    max_abs, max_rel, index, nan_note = float_errors(aligned.astype(np.float64), cand.astype(np.float64))
    note = "; ".join(n for n in (note, nan_note) if n)
    ok = max_rel <= rtol if rtol is not None else max_abs <= (atol or 0.0)
    return OutputCheck(output, feed, max_abs, max_rel, index, tolerance, ok, note)


def _exact(output: str, feed: str, ref: np.ndarray, cand: np.ndarray, note: str) -> OutputCheck:
    unequal = ref != cand
    if not np.any(unequal):
        return OutputCheck(output, feed, 0.0, 0.0, None, "exact", True, note)
    index = tuple(int(i) for i in np.argwhere(unequal)[0])
    detail = (
        f"{int(np.count_nonzero(unequal))} of {ref.size} values differ (first at index {list(index)}: "
        f"source {ref[index]!r}, converted {cand[index]!r})"
    )
    return OutputCheck(
        output, feed, math.inf, math.inf, index, "exact", False, "; ".join(filter(None, (note, detail)))
    )


def check_labels(
    output: str,
    feed: str,
    ref: np.ndarray,
    cand: np.ndarray,
    *,
    ref_scores: np.ndarray | None,
    tie_tolerance: float,
) -> OutputCheck:
    """Compare predicted labels exactly, accepting rows where the source's top-2 scores tie.

    Args:
        output: Output name.
        feed: Which inputs ran.
        ref: The source's labels, shape (N,).
        cand: The converted model's labels.
        ref_scores: The source's class probabilities (N, classes), to detect ties; None
            accepts no ties.
        tie_tolerance: Two best scores closer than this are a tie.
    """
    ref, cand = np.asarray(ref), np.asarray(cand)
    aligned, note = _aligned(ref, cand)
    if aligned is None:
        return OutputCheck(output, feed, math.inf, math.inf, None, "exact", False, note)
    # One label per row: (N,) or (N, 1).
    aligned, cand = aligned.reshape(-1), cand.reshape(-1)
    unequal = aligned != cand
    if not np.any(unequal):
        return OutputCheck(output, feed, 0.0, 0.0, None, "exact", True, note)
    rows = np.flatnonzero(unequal)
    if ref_scores is not None and ref_scores.ndim == 2 and ref_scores.shape[1] >= 2:
        top2 = np.sort(ref_scores[rows], axis=1)[:, -2:]
        ties = (top2[:, 1] - top2[:, 0]) <= tie_tolerance
        if ties.all():
            return OutputCheck(output, feed, 0.0, 0.0, None, "exact", True, f"{len(rows)} tie(s) accepted")
        rows = rows[~ties]
    first = int(rows[0])
    detail = (
        f"{len(rows)} of {len(cand)} labels differ (first at row {first}: source {aligned[first]!r}, "
        f"converted {cand[first]!r})"
    )
    return OutputCheck(
        output,
        feed,
        math.inf,
        math.inf,
        (int(rows[0]),),
        "exact",
        False,
        "; ".join(filter(None, (note, detail))),
    )


def raise_on_failure(checks: collections.abc.Sequence[OutputCheck], *, source: str, framework: str) -> None:
    """Raise ``NumericMismatchError`` naming the worst failed check, if any.

    Raises:
        NumericMismatchError: names the output, the inputs, both errors, the index and the rule.
    """
    failed = [c for c in checks if not c.ok]
    if not failed:
        return
    worst = max(failed, key=lambda c: (c.max_rel, c.max_abs))
    if math.isinf(worst.max_abs) and worst.note:
        detail = worst.note
    else:
        note = f"; {worst.note}" if worst.note else ""
        detail = (
            f"max rel error {worst.max_rel:.3g}, max abs error {worst.max_abs:.3g} "
            f"at index {worst.index}{note}"
        )
    raise NumericMismatchError(
        f"{source}: the converted model differs from {framework} on output '{worst.output}' "
        f"({worst.feed}): {detail}, allowed {worst.tolerance}; nothing was written. Look for code in "
        "forward() that depends on the example's values or batch size (Python branches, .item(), "
        "int(x.shape[0])), or loosen --rtol if the error is expected"
    )
