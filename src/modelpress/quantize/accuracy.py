"""Accuracy-aware static quantization: keep the fewest nodes in float until the drop is within budget.

``search_fallback`` takes the prepared float model, the calibration samples, labelled or
unlabelled evaluation samples and a budget ``max_drop``; it returns the node names to keep in
float (``QuantSpec.exclude_nodes``) and an ``AccuracyReport``. The workflow then quantizes
with those exclusions (``quantize_file(..., max_drop=..., eval_dir=...)``).

Metric (``metric``, on one model output, the first float output unless ``output`` names one):

* ``accuracy``: top-1 accuracy against the labels of the eval data (output ``[N, classes]``);
  the drop is ``accuracy(float) - accuracy(candidate)``;
* ``agreement``: the fraction of samples whose argmax is the float model's (no labels needed);
* ``cosine``: the mean cosine similarity of each sample's output to the float model's (any
  output shape: embeddings, detection maps); the drop is ``1 - cosine``;
* ``auto``: ``accuracy`` with labels, else ``cosine``.

Search (every candidate is quantized from ranges calibrated once, so a candidate costs one
graph rewrite and one onnxruntime run over the eval data; nothing is recalibrated):

1. The units are the nodes the full static plan quantizes (named nodes: unnamed ones get
   their plan label as name first). Quantize everything; stop if the drop is within budget.
2. Large models (more than ``_FULL_RANK_UNITS`` units, where ranking costs hundreds of
   candidates: MiniLM has 96 units) first try a quick pass: the greedy step of 3. over the units
   ordered by their output error in the all-int8 model (one extra run, no candidates), for at
   most ``_QUICK_STEPS`` steps. When it meets the budget, step 4 prunes it and the search ends
   (the two sensitivities below are then not measured: ``None`` in the report); otherwise
   the search goes on from an empty fallback set with the ranking.
3. Rank the units by sensitivity, two measures (2 x units candidates): the metric *gained*
   when the unit alone is kept float (errors that add up), and the metric *lost* when the
   unit alone is quantized (a node that is bad by itself even where a neighbour's Q/DQ hides
   the gain, e.g. an outlier channel that ruins a shared activation range). The rank is the
   larger of the two, then the unit's output error in the all-int8 model, then graph order.
4. Greedy: at each step try the ``beam`` best-ranked units left and keep the one whose
   fallback gives the best metric; stop as soon as the drop is within budget. At least one
   compute node always stays quantized.
5. Prune: try to re-quantize each fallen-back node, last added first; keep it quantized when
   the budget still holds.

The best candidate seen (highest metric, then fewest float nodes) is returned when the budget
cannot be met, and ``AccuracyReport.met`` says so: the caller always gets a model.

Eval data is held in memory (it is evaluated many times), with the float model's reference
outputs of the chosen output; ``MAX_EVAL_BYTES`` caps both.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import time
import typing

import numpy as np
import onnx_ir as ir

from modelpress.errors import CalibrationError, PreconditionError, UsageError
from modelpress.quantize.bias_correction import BiasShift, apply_shifts, bias_shifts
from modelpress.quantize.calibrate import observe, observer_range
from modelpress.quantize.plan import QuantPlan, build_plan, node_label
from modelpress.quantize.qdq import apply_plan
from modelpress.quantize.spec import QuantSpec
from modelpress.runtime.session import create_session, run_session

__all__ = ["MAX_EVAL_BYTES", "METRICS", "AccuracyReport", "LayerRecord", "name_nodes", "search_fallback"]

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("auto", "accuracy", "agreement", "cosine")
MAX_EVAL_BYTES = 2**30
Feeds = collections.abc.Mapping[str, np.ndarray]
Labelled = tuple[Feeds, np.ndarray | None]
Progress = collections.abc.Callable[[str, int, int | None], None]
_SEARCH_PHASE = "accuracy search (models)"
# Eval samples per onnxruntime run, and samples whose intermediate outputs give the per-node
# errors (every quantized node's output is fetched at once: memory grows with both).
_EVAL_CHUNK = 64
_LAYER_ERROR_SAMPLES = 256
# Above this many units the search tries the quick pass ordered by output error first (step 2),
# for at most this many greedy steps.
_FULL_RANK_UNITS = 32
_QUICK_STEPS = 3


@dataclasses.dataclass
class LayerRecord:
    """What the search found about one quantizable node.

    Attributes:
        node: Node name.
        op_type: Its op type.
        output_error: Relative RMS error of the node's output in the all-int8 model
            (``||q - f|| / ||f||`` over the first 256 eval samples, QDQ simulated at
            ORT_DISABLE_ALL).
        gain_if_float: Metric gained when this node alone is kept float.
        loss_if_alone: Metric lost when this node alone is quantized.
        kept_float: Whether the final model keeps it in float.
        reason: Why it was kept float (or why it stayed quantized).
    """

    node: str
    op_type: str
    output_error: float | None = None
    gain_if_float: float | None = None
    loss_if_alone: float | None = None
    kept_float: bool = False
    reason: str = ""

    @property
    def sensitivity(self) -> float:
        """The larger of ``gain_if_float`` and ``loss_if_alone`` (0 when not measured)."""
        return max(self.gain_if_float or 0.0, self.loss_if_alone or 0.0)

    def to_json(self) -> dict[str, object]:
        """The fields, with the sensitivity."""
        return {**dataclasses.asdict(self), "sensitivity": self.sensitivity}


@dataclasses.dataclass
class AccuracyReport:
    """The outcome of ``search_fallback`` (``to_json`` goes into the quantize report)."""

    metric: str
    output: str
    eval_samples: int
    max_drop: float
    float_metric: float
    int8_metric: float
    final_metric: float
    met: bool
    kept_float: list[str]
    layers: list[LayerRecord]
    candidates: int = 0
    seconds: float = 0.0

    @property
    def drop(self) -> float:
        """Metric lost by the final model against the float one."""
        return self.float_metric - self.final_metric

    @property
    def int8_drop(self) -> float:
        """Metric lost when every quantizable node is quantized."""
        return self.float_metric - self.int8_metric

    def to_json(self) -> dict[str, object]:
        """A JSON-serializable summary."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "layers"}
        data.update(drop=self.drop, int8_drop=self.int8_drop, seconds=round(self.seconds, 3))
        data["layers"] = [layer.to_json() for layer in self.layers]
        return data


def name_nodes(model: ir.Model) -> int:
    """Give every unnamed main-graph node its plan label as name (so it can be excluded).

    Returns:
        How many nodes were named.
    """
    taken = {node.name for node in model.graph if node.name}
    named = 0
    for index, node in enumerate(model.graph):
        if not node.name:
            name = node_label(node, index)
            while name in taken:
                name += "_"
            node.name, named = name, named + 1
            taken.add(name)
    return named


class _Metric:
    """Scores a candidate's chosen output over the eval batches (see the module docstring)."""

    def __init__(self, kind: str, output: str, batches: list[Labelled], references: list[np.ndarray]) -> None:
        self.kind, self.output = kind, output
        self.batches, self.references = batches, references
        self.samples = sum(len(ref) for ref in references)

    def score(self, outputs: list[np.ndarray]) -> float:
        """The metric of ``outputs`` (one array per eval batch)."""
        if self.kind == "accuracy":
            hits = sum(
                int(np.sum(out.argmax(axis=1) == labels))
                for out, (_, labels) in zip(outputs, self.batches, strict=True)
            )
            return hits / self.samples
        if self.kind == "agreement":
            same = sum(
                int(np.sum(o.argmax(axis=1) == r.argmax(axis=1)))
                for o, r in zip(outputs, self.references, strict=True)
            )
            return same / self.samples
        return float(
            sum(_cosines(o, r).sum() for o, r in zip(outputs, self.references, strict=True)) / self.samples
        )


def _cosines(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (row after flattening); two zero vectors count as 1."""
    c = candidate.reshape(len(candidate), -1).astype(np.float64)
    r = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(c, axis=1) * np.linalg.norm(r, axis=1)
    dots = np.sum(c * r, axis=1)
    both_zero = (np.linalg.norm(c, axis=1) == 0) & (np.linalg.norm(r, axis=1) == 0)
    return np.where(both_zero, 1.0, dots / np.where(norms > 0, norms, 1.0))


def _load_eval(eval_data: collections.abc.Iterable[Labelled], model: ir.Model) -> list[Labelled]:
    """The eval batches in memory, cut into runs of at most ``_EVAL_CHUNK`` samples.

    Cutting bounds onnxruntime's memory per run (an eval file may hold thousands of samples);
    a model with a static batch dim gets its batches as they are.
    """
    inputs = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    static = any(v.shape is not None and len(v.shape) and isinstance(v.shape[0], int) for v in inputs)
    batches, size = [], 0
    for feeds, labels in eval_data:
        size += sum(np.asarray(a).nbytes for a in feeds.values())
        if size > MAX_EVAL_BYTES:
            raise CalibrationError(
                f"the eval data is over {MAX_EVAL_BYTES >> 20} MiB in memory; the accuracy search "
                "evaluates it many times and keeps it loaded: use a smaller eval folder"
            )
        arrays = [np.asarray(a) for a in feeds.values()]
        count = len(arrays[0]) if arrays and all(a.ndim for a in arrays) else 0
        if static or count <= _EVAL_CHUNK:
            batches.append((feeds, labels))
            continue
        for start in range(0, count, _EVAL_CHUNK):
            part = slice(start, start + _EVAL_CHUNK)
            batches.append(
                ({k: np.asarray(v)[part] for k, v in feeds.items()}, None if labels is None else labels[part])
            )
    if not batches:
        raise CalibrationError("the eval data holds no samples; pass a folder with at least one sample")
    return batches


def _choose_metric(kind: str, batches: list[Labelled], reference: np.ndarray, output: str) -> str:
    if kind not in METRICS:
        raise UsageError(f"unknown eval metric '{kind}'; choose one of: {', '.join(METRICS)}")
    has_labels = all(labels is not None for _, labels in batches)
    if kind == "auto":
        kind = "accuracy" if has_labels else "cosine"
    if kind == "accuracy" and not has_labels:
        raise UsageError("the accuracy metric needs labels: add a 'labels' array to every eval .npz file")
    if kind in ("accuracy", "agreement") and (reference.ndim != 2 or reference.shape[1] < 2):
        raise UsageError(
            f"the {kind} metric needs a [N, classes] output; output '{output}' has shape "
            f"{list(reference.shape)}: use --eval-metric cosine or name another --eval-output"
        )
    return kind


class _Candidates:
    """Builds and scores quantized variants of ``base`` that differ in their excluded nodes."""

    def __init__(self, base: ir.Model, spec: QuantSpec, samples: collections.abc.Iterable[Feeds]) -> None:
        self.base, self.spec, self.samples = base, spec, samples
        self.ranges: dict[str, tuple[float, float]] = {}
        self.shifts: dict[str, BiasShift] = {}
        self.metric: _Metric | None = None
        self.count = 0
        self.progress: Progress | None = None
        self.scores: dict[frozenset[str], float] = {}

    def calibrate(self, plan: QuantPlan, model: ir.Model) -> None:
        """Observe every float tensor a variant of ``plan`` may quantize, in one pass."""
        targets = set(plan.calibration_targets)
        for label in plan.selected:
            node = next(n for n in model.graph if n.name == label)
            targets.update(v.name or "" for v in (*node.inputs, *node.outputs[:1]) if _is_float_activation(v))
        self._observe(sorted(targets))
        if self.spec.bias_correction:
            self.shifts = bias_shifts(model, plan, self.samples, self.spec)

    def _observe(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self.ranges]
        if missing:
            on_batch = None
            if self.progress is not None:
                progress = self.progress
                on_batch = lambda size: progress("calibrate for the search", size, None)  # noqa: E731
            observers = observe(self.base, self.samples, missing, self.spec, on_batch=on_batch)
            self.ranges.update({n: observer_range(o, self.spec) for n, o in observers.items()})

    def build(
        self, exclude: frozenset[str], extra_outputs: collections.abc.Sequence[str] = ()
    ) -> ir.Model | None:
        """The model quantized with ``exclude`` kept float (None when nothing is left to quantize)."""
        model = self.base.clone()
        spec = dataclasses.replace(self.spec, exclude_nodes=self.spec.exclude_nodes | exclude)
        plan = build_plan(model, spec)
        if not plan.weights:
            return None
        self._observe(plan.calibration_targets)  # only a plan shape ``calibrate`` did not foresee
        if self.shifts:
            apply_shifts(model, plan, self.shifts, variance=self.spec.variance_correction)
        apply_plan(model, plan, self.ranges, spec)
        _add_outputs(model, extra_outputs)
        return model

    def score(self, exclude: frozenset[str]) -> float | None:
        """The metric of the model that keeps ``exclude`` float (cached; None: nothing quantized)."""
        if exclude in self.scores:
            return self.scores[exclude]
        assert self.metric is not None
        model = self.build(exclude)
        if model is None:
            return None
        session = create_session(model, level="all")
        outputs = [
            np.asarray(run_session(session, feeds, [self.metric.output])[self.metric.output])
            for feeds, _ in self.metric.batches
        ]
        self.count += 1
        if self.progress is not None:
            self.progress(_SEARCH_PHASE, 1, None)
        self.scores[exclude] = self.metric.score(outputs)
        logger.debug("fallback %s: %s %.4f", sorted(exclude), self.metric.kind, self.scores[exclude])
        return self.scores[exclude]


def _is_float_activation(value: ir.Value | None) -> typing.TypeGuard[ir.Value]:
    return value is not None and value.dtype == ir.DataType.FLOAT and value.const_value is None


def _add_outputs(model: ir.Model, names: collections.abc.Sequence[str]) -> None:
    if not names:
        return
    values = {out.name: out for node in model.graph for out in node.outputs}
    values.update({v.name: v for v in model.graph.inputs})
    for name in names:
        value = values[name]
        if not value.is_graph_output():
            model.graph.outputs.append(value)


def search_fallback(
    model: ir.Model,
    spec: QuantSpec,
    samples: collections.abc.Iterable[Feeds],
    eval_data: collections.abc.Iterable[Labelled],
    max_drop: float,
    *,
    metric: str = "auto",
    output: str | None = None,
    beam: int = 3,
    progress: Progress | None = None,
) -> tuple[frozenset[str], AccuracyReport]:
    """Find the fewest nodes to keep float so that the metric drop is at most ``max_drop``.

    Args:
        model: The float model, prepared (opset checked, shapes inferred) and with named nodes
            (``name_nodes``); it is not modified.
        spec: A static-mode spec; its own ``exclude_nodes`` stay excluded.
        samples: Calibration feeds, re-iterable (read once for ranges, once more with bias
            correction).
        eval_data: ``(feeds, labels or None)`` batches (see ``quantize.data.EvalData``).
        max_drop: The budget, in metric units (0.01: one point of top-1 accuracy).
        metric: ``auto``, ``accuracy``, ``agreement`` or ``cosine`` (module docstring).
        output: The model output the metric reads (default: the first float output).
        beam: Units tried per greedy step.
        progress: ``progress(phase, count, None)`` after each calibration batch of the
            search and after each candidate model.

    Returns:
        ``(nodes to keep float, report)``; the report says whether the budget was met.

    Raises:
        UsageError: not static mode, a negative budget, an unknown metric or output, or a
            metric the output's shape cannot feed.
        CalibrationError: empty or oversized eval data, bad calibration data.
        PreconditionError: nothing is left to quantize.
    """
    start = time.perf_counter()
    if spec.mode != "static":
        raise UsageError(
            f"--max-drop needs --mode static (got {spec.mode}): it trades quantized nodes for accuracy"
        )
    if not max_drop >= 0:
        raise UsageError(f"--max-drop {max_drop} must be >= 0 (0.01 is one point of top-1 accuracy)")
    candidates = _Candidates(model, spec, samples)
    candidates.progress = progress
    full_plan = build_plan(model, spec)  # reads the model, does not change it
    units = list(full_plan.selected)  # graph order
    candidates.metric, float_metric = _make_metric(model, eval_data, metric, output)
    candidates.calibrate(full_plan, model)
    search = _Search(candidates, list(units), float_metric, max_drop, beam)
    kept, met = search.run()
    layers = _layer_records(full_plan, search, kept, met)
    report = AccuracyReport(
        metric=candidates.metric.kind,
        output=candidates.metric.output,
        eval_samples=candidates.metric.samples,
        max_drop=max_drop,
        float_metric=float_metric,
        int8_metric=search.int8_metric,
        final_metric=candidates.scores[kept],
        met=met,
        kept_float=[u for u in units if u in kept],
        layers=layers,
        candidates=candidates.count,
        seconds=time.perf_counter() - start,
    )
    return kept, report


def _make_metric(
    model: ir.Model, eval_data: collections.abc.Iterable[Labelled], kind: str, output: str | None
) -> tuple[_Metric, float]:
    """The metric over the loaded eval data, and the float model's score."""
    floats = [v.name or "" for v in model.graph.outputs if v.dtype == ir.DataType.FLOAT]
    if output is None:
        if not floats:
            raise UsageError("the model has no float32 output for the accuracy metric")
        output = floats[0]
    elif output not in floats:
        raise UsageError(f"no float32 output '{output}'; the model's float outputs are: {', '.join(floats)}")
    batches = _load_eval(eval_data, model)
    session = create_session(model, level="disable")
    references = [np.asarray(run_session(session, feeds, [output])[output]) for feeds, _ in batches]
    kind = _choose_metric(kind, batches, references[0], output)
    for (_, labels), reference in zip(batches, references, strict=True):
        if labels is not None and kind == "accuracy" and len(labels) != len(reference):
            raise CalibrationError(f"an eval batch has {len(labels)} labels for {len(reference)} samples")
    metric = _Metric(kind, output, batches, references)
    return metric, metric.score(references)


class _Search:
    """The greedy fallback and the pruning pass (module docstring, steps 1-4)."""

    def __init__(
        self, candidates: _Candidates, units: list[str], float_metric: float, max_drop: float, beam: int
    ) -> None:
        self.candidates, self.units = candidates, units
        self.float_metric, self.max_drop, self.beam = float_metric, max_drop, max(1, beam)
        self.int8_metric = float("nan")
        self.gain: dict[str, float] = {}
        self.loss: dict[str, float] = {}
        self.errors: dict[str, float] = {}
        self.reasons: dict[str, str] = {}
        self.order: list[str] = []  # units in the order the greedy step kept them float

    def ok(self, score: float | None) -> bool:
        # a hair of slack: a float metric of 0.9815 minus 0.01 must accept 0.9715 exactly
        return score is not None and self.float_metric - score <= self.max_drop + 1e-12

    def run(self) -> tuple[frozenset[str], bool]:
        empty: frozenset[str] = frozenset()
        score = self.candidates.score(empty)
        if score is None:
            raise PreconditionError(
                "nothing to quantize: no float32 Conv/Gemm/MatMul with constant weights is left "
                "(see --exclude); the accuracy-aware mode needs at least one"
            )
        self.int8_metric = score
        self.errors = _output_errors(self.candidates, self.units)  # for the report, and ties
        if self.ok(score):
            return empty, True
        if len(self.units) > _FULL_RANK_UNITS:
            position = {u: i for i, u in enumerate(self.units)}
            by_error = sorted(self.units, key=lambda u: (-self.errors.get(u, 0.0), position[u]))
            kept = self._greedy(by_error, _QUICK_STEPS, "quick pass by output error, ")
            if self.ok(self.candidates.scores.get(kept)):
                return self._prune(kept), True
            self.order.clear()
            self.reasons.clear()
        self._rank()
        kept = self._greedy(self.units)
        if not self.ok(self.candidates.scores.get(kept)):
            return self._best(), False
        return self._prune(kept), True

    def _rank(self) -> None:
        everything = frozenset(self.units)
        for unit in self.units:
            alone = self.candidates.score(everything - {unit})
            self.loss[unit] = self.float_metric - alone if alone is not None else 0.0
            without = self.candidates.score(frozenset({unit}))  # None: the unit was the last one
            self.gain[unit] = without - self.int8_metric if without is not None else 0.0
        position = {u: i for i, u in enumerate(self.units)}
        self.units.sort(
            key=lambda u: (-max(self.gain[u], self.loss[u]), -self.errors.get(u, 0.0), position[u])
        )

    def _greedy(self, ranked: list[str], max_steps: int | None = None, how: str = "") -> frozenset[str]:
        kept: frozenset[str] = frozenset()
        left = list(ranked)
        while left and (max_steps is None or len(kept) < max_steps):
            tried = [(self.candidates.score(kept | {u}), u) for u in left[: self.beam]]
            scored = [(s, u) for s, u in tried if s is not None]  # None: nothing left quantized
            if not scored:
                break
            best_score, best_unit = max(scored, key=lambda t: t[0])  # first of equals: best ranked
            kept = kept | {best_unit}
            left.remove(best_unit)
            self.order.append(best_unit)
            self.reasons[best_unit] = (
                f"kept float at greedy step {len(kept)} "
                f"({how}drop {self.float_metric - best_score:.3g} with it)"
            )
            if self.ok(best_score):
                break
        return kept

    def _prune(self, kept: frozenset[str]) -> frozenset[str]:
        for unit in reversed(self.order):
            trial = kept - {unit}
            if trial and self.ok(self.candidates.score(trial)):  # empty: int8 already failed
                kept = trial
                self.reasons[unit] = "re-quantized by the pruning pass (budget still met without it)"
        return kept

    def _best(self) -> frozenset[str]:
        scored = [(s, -len(k), sorted(k)) for k, s in self.candidates.scores.items() if s is not None]
        _, _, names = max(scored)
        return frozenset(names)


def _output_errors(candidates: _Candidates, units: list[str]) -> dict[str, float]:
    """Relative RMS error of each unit's first output in the all-int8 model (QDQ at DISABLE_ALL)."""
    nodes = {n.name: n for n in candidates.base.graph}
    names = [nodes[u].outputs[0].name or "" for u in units]
    quantized = candidates.build(frozenset(), names)
    reference = candidates.base.clone()
    _add_outputs(reference, names)
    assert quantized is not None and candidates.metric is not None
    q_session, f_session = (
        create_session(quantized, level="disable"),
        create_session(reference, level="disable"),
    )
    noise = dict.fromkeys(names, 0.0)
    energy = dict.fromkeys(names, 0.0)
    seen = 0
    for feeds, _ in candidates.metric.batches:
        if seen >= _LAYER_ERROR_SAMPLES:
            break
        first = np.asarray(next(iter(feeds.values())))
        seen += len(first) if first.ndim else 1
        q_out, f_out = run_session(q_session, feeds, names), run_session(f_session, feeds, names)
        for name in names:
            f = np.asarray(f_out[name], np.float64)
            noise[name] += float(np.sum((np.asarray(q_out[name], np.float64) - f) ** 2))
            energy[name] += float(np.sum(f**2))
    return {u: (noise[n] / energy[n]) ** 0.5 if energy[n] else 0.0 for u, n in zip(units, names, strict=True)}


def _layer_records(plan: QuantPlan, search: _Search, kept: frozenset[str], met: bool) -> list[LayerRecord]:
    records = []
    for unit, op_type in plan.selected.items():
        reason = search.reasons.get(unit, "")
        if unit in kept and not met:
            reason = f"part of the best candidate found (budget not met); {reason}"
        elif unit not in kept:
            reason = "quantized" if not reason or reason.startswith("kept") else reason
        records.append(
            LayerRecord(
                unit,
                op_type,
                output_error=search.errors.get(unit),
                gain_if_float=search.gain.get(unit),
                loss_if_alone=search.loss.get(unit),
                kept_float=unit in kept,
                reason=reason,
            )
        )
    return records
