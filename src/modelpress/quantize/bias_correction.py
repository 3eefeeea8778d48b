"""Bias correction: remove the mean shift that weight rounding adds to each output channel.

Rounding ``W`` to ``W_q = dequantize(quantize(W))`` moves the expected output of a Conv/Gemm
``y = W * x + B`` by ``shift[c] = E[W_q * x][c] - E[W * x][c] = E[(W_q - W) * x][c]``: the
rounding errors of one channel do not average out when ``x`` has a non-zero mean (post-ReLU
activations, images in [0, 1]), and every later layer sees the offset (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019, section 4.2). The
correction subtracts it from the float bias before the bias is quantized::

    y = Conv(x, W, B)   =>   y = Conv(x, W_q, B - shift)     (B - shift then goes to int32 as usual)

``shift`` is measured, not modelled: for each corrected node a copy ``Conv(x, W_q - W)`` (same
attributes, no bias) is added to the float model for one pass over the calibration data, and
its output is averaged over every axis but the channel axis 1. That is exact for any stride,
padding, group or transpose attribute, and ``x`` is the *float* activation (the expectation of
the float network). Streaming: per channel sums only.

Variance correction (``QuantSpec.variance_correction``): from the same pass, per channel,
``Var[W_q x] = Var[W x] + 2 Cov[W x, dW x] + Var[dW x]``; the channel's weight scale is
multiplied by ``r = sqrt(Var[W x] / Var[W_q x])`` (its int8 values are unchanged: per-channel
weights only) and the bias becomes ``B + m - r (m + shift)`` with ``m = E[W x]``, so that the
quantized channel has the float channel's mean and variance.

Refused per node, with the reason in the report: a Conv/Gemm without a bias (there is no bias
to correct; MatMul + Add biases are not corrected yet), a constant activation input (no
calibration statistics), and variance correction of per-tensor or shared weights.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import typing

import numpy as np
import onnx_ir as ir

from modelpress.errors import UsageError
from modelpress.ir.build import add_initializer
from modelpress.quantize.plan import QuantPlan, build_plan
from modelpress.quantize.qdq import apply_plan, quantize_weight
from modelpress.quantize.spec import QuantSpec
from modelpress.runtime.session import create_session, run_session

__all__ = ["BiasCorrectionReport", "BiasShift", "apply_shifts", "bias_shifts", "correct_biases"]

Feeds = collections.abc.Mapping[str, np.ndarray]
Progress = collections.abc.Callable[[str, int, int | None], None]
# A channel whose float output barely varies keeps its weights: the ratio would be noise.
_MIN_VARIANCE = 1e-12


@dataclasses.dataclass(frozen=True)
class BiasShift:
    """The measured statistics of one node's output channels over the calibration data.

    Attributes:
        node: Node name.
        shift: ``E[(W_q - W) x]`` per output channel (what the correction subtracts).
        mean: ``E[W x + B]`` per channel (the float output's mean).
        std: The float output's standard deviation per channel.
        ratio: ``sqrt(Var[W x] / Var[W_q x])`` per channel (1 where not measurable).
    """

    node: str
    shift: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    ratio: np.ndarray

    @property
    def relative_shift(self) -> float:
        """The largest ``|shift| / std`` over the channels (how far rounding moved the mean)."""
        std = np.where(self.std > 0, self.std, 1.0)
        return float(np.max(np.abs(self.shift) / std, initial=0.0))


@dataclasses.dataclass
class BiasCorrectionReport:
    """What bias correction changed, and the output mean error before and after it.

    ``mean_error_before`` / ``mean_error_after`` map each float graph output to the largest
    ``|E[quantized] - E[float]|`` over its channels (axis 1; the expectation runs over the
    calibration samples and every other axis, as the correction's does).
    """

    corrected: dict[str, float] = dataclasses.field(default_factory=dict)  # node -> relative shift
    variance_corrected: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    mean_error_before: dict[str, float] = dataclasses.field(default_factory=dict)
    mean_error_after: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The fields as JSON values."""
        return dataclasses.asdict(self)


class _Sums:
    """Running per-channel sums of the float output ``f`` and the rounding term ``d``."""

    def __init__(self) -> None:
        self.count = 0
        self.f = self.ff = self.d = self.dd = self.fd = np.zeros(0)

    def update(self, f: np.ndarray, d: np.ndarray) -> None:
        axes = tuple(i for i in range(f.ndim) if i != 1)
        f, d = f.astype(np.float64), d.astype(np.float64)
        terms = [f.sum(axes), (f * f).sum(axes), d.sum(axes), (d * d).sum(axes), (f * d).sum(axes)]
        if not self.count:
            self.f, self.ff, self.d, self.dd, self.fd = (np.zeros_like(t) for t in terms)
        self.f, self.ff, self.d, self.dd, self.fd = (
            a + t for a, t in zip((self.f, self.ff, self.d, self.dd, self.fd), terms, strict=True)
        )
        self.count += f.size // f.shape[1]

    def shift(self, node: str) -> BiasShift:
        n = max(self.count, 1)
        mean_f, mean_d = self.f / n, self.d / n
        var_f = np.maximum(self.ff / n - mean_f**2, 0.0)
        var_d = np.maximum(self.dd / n - mean_d**2, 0.0)
        cov = self.fd / n - mean_f * mean_d
        var_q = np.maximum(var_f + 2 * cov + var_d, 0.0)
        ok = (var_f > _MIN_VARIANCE) & (var_q > _MIN_VARIANCE)
        ratio = np.where(ok, np.sqrt(var_f / np.where(ok, var_q, 1.0)), 1.0)
        return BiasShift(node, mean_d, mean_f, np.sqrt(var_f), ratio)


def _rounding_delta(node: ir.Node, axis: int | None, spec: QuantSpec) -> np.ndarray:
    """``W_q - W`` of the node's weight under ``spec`` (as ``qdq.py`` will quantize it)."""
    weight = node.inputs[1].const_value.numpy().astype(np.float32)  # type: ignore[union-attr]
    w_i8, w_scale = quantize_weight(weight, axis, spec.weight_qmax)
    if axis is not None:
        w_scale = np.expand_dims(w_scale, tuple(i for i in range(weight.ndim) if i != axis))
    return typing.cast(np.ndarray, (w_i8.astype(np.float32) * w_scale - weight).astype(np.float32))


def _targets(plan: QuantPlan) -> list[tuple[ir.Node, int | None]]:
    """(node, weight axis) of every planned node with a quantized weight and a bias."""
    axes = {id(site.node): site.axis for site in plan.weights}
    return [(site.node, axes[id(site.node)]) for site in plan.biases if id(site.node) in axes]


def bias_shifts(
    model: ir.Model, plan: QuantPlan, samples: collections.abc.Iterable[Feeds], spec: QuantSpec
) -> dict[str, BiasShift]:
    """Measure ``BiasShift`` of every node of ``plan`` with a bias, in one pass over ``samples``.

    ``model`` (the float model the plan was built on) is not modified: the measuring nodes go
    into a clone.
    """
    targets = [(node, axis) for node, axis in _targets(plan) if node.inputs[0].const_value is None]  # type: ignore[union-attr]
    if not targets:
        return {}
    probe = model.clone()
    by_name = {node.name: node for node in probe.graph}
    fetch: dict[str, tuple[str, str]] = {}
    for node, axis in targets:
        twin = by_name[node.name]
        array = _rounding_delta(node, axis, spec)
        delta = ir.Value(name=f"{node.name}_bc_delta_w", const_value=ir.tensor(array))
        delta.type, delta.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(array.shape)
        probe.graph.register_initializer(delta)
        attributes = {name: attr.value for name, attr in twin.attributes.items()}
        copy = ir.node(twin.op_type, [twin.inputs[0], delta], attributes, name=f"{node.name}_bc_probe")
        copy.outputs[0].name, copy.outputs[0].type = (
            f"{node.name}_bc_delta_y",
            ir.TensorType(ir.DataType.FLOAT),
        )
        probe.graph.append(copy)
        probe.graph.outputs.extend(v for v in (twin.outputs[0], copy.outputs[0]) if not v.is_graph_output())
        fetch[node.name or ""] = (twin.outputs[0].name or "", copy.outputs[0].name or "")
    session = create_session(probe, level="disable")
    names = [name for pair in fetch.values() for name in pair]
    sums = {label: _Sums() for label in fetch}
    for feeds in samples:
        outputs = run_session(session, feeds, names)
        for label, (f_name, d_name) in fetch.items():
            sums[label].update(np.asarray(outputs[f_name]), np.asarray(outputs[d_name]))
    return {label: total.shift(label) for label, total in sums.items()}


def apply_shifts(
    model: ir.Model,
    plan: QuantPlan,
    shifts: collections.abc.Mapping[str, BiasShift],
    *,
    variance: bool = False,
    report: BiasCorrectionReport | None = None,
) -> int:
    """Replace the float bias (and with ``variance`` the weight) of each shifted node of ``plan``.

    Call before ``qdq.apply_plan``, which then quantizes the corrected bias to int32. New
    initializers are named ``<bias>_corrected`` / ``<weight>_varcorr``; the old ones are
    dropped when nothing else uses them.

    Returns:
        How many nodes were corrected.
    """
    axes = {id(site.node): site.axis for site in plan.weights}
    corrected = 0
    for node, _ in _targets(plan):
        label = node.name or ""
        shift = shifts.get(label)
        if shift is None:
            if report is not None:
                report.skipped[label] = "a constant activation input (no calibration statistics)"
            continue
        ratio = np.ones_like(shift.ratio)
        if variance:
            ratio = _scale_weight(model, node, shift, axes[id(node)], report)
        bias = node.inputs[2]
        b = bias.const_value.numpy().astype(np.float64)  # type: ignore[union-attr]
        m = shift.mean - b  # E[W x]
        new_bias = (b + m - ratio * (m + shift.shift)).astype(np.float32)
        _replace_input(model, node, 2, new_bias, f"{bias.name}_corrected")  # type: ignore[union-attr]
        corrected += 1
        if report is not None:
            report.corrected[label] = shift.relative_shift
    return corrected


def _scale_weight(
    model: ir.Model, node: ir.Node, shift: BiasShift, axis: int | None, report: BiasCorrectionReport | None
) -> np.ndarray:
    weight = node.inputs[1]
    assert weight is not None and weight.const_value is not None
    why = None
    if axis is None:
        why = "per-tensor weights: a per-channel variance ratio would change the rounding"
    elif len(weight.uses()) > 1:
        why = "the weight is shared with another node"
    elif weight.shape[axis] != len(shift.ratio):  # type: ignore[index]
        why = "the weight's channel axis does not match the output channels"
    if why is not None:
        if report is not None:
            report.skipped[node.name or ""] = f"no variance correction: {why}"
        return np.ones_like(shift.ratio)
    w = weight.const_value.numpy().astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1  # type: ignore[index]
    _replace_input(
        model, node, 1, (w * shift.ratio.reshape(shape)).astype(np.float32), f"{weight.name}_varcorr"
    )
    if report is not None:
        report.variance_corrected.append(node.name or "")
    return shift.ratio


def _replace_input(model: ir.Model, node: ir.Node, index: int, array: np.ndarray, base: str) -> None:
    graph = model.graph
    name, count = base, 0
    taken = set(graph.initializers) | {out.name for n in graph for out in n.outputs}
    while name in taken:
        count += 1
        name = f"{base}_{count}"
    value = add_initializer(graph, name, array.astype(np.float32, copy=False))
    old = node.inputs[index]
    node.replace_input_with(index, value)
    if old is not None and not old.uses() and not old.is_graph_output() and old.name in graph.initializers:
        graph.initializers.pop(old.name)  # type: ignore[arg-type]


def correct_biases(
    model: ir.Model,
    plan: QuantPlan,
    ranges: collections.abc.Mapping[str, tuple[float, float]],
    samples: collections.abc.Iterable[Feeds],
    spec: QuantSpec,
    *,
    progress: Progress | None = None,
) -> BiasCorrectionReport:
    """Correct the biases of ``model`` in place (before ``apply_plan``) and measure the effect.

    Two passes over ``samples`` (which must be re-iterable): the statistics, then the float
    model and the quantized model without and with the correction side by side, for the
    report's output mean errors (measured on the calibration data itself).

    Raises:
        UsageError: ``samples`` is a one-shot iterator.
    """
    if iter(samples) is samples:
        raise UsageError("bias correction reads the calibration samples twice: pass a list or a folder")
    report = BiasCorrectionReport()
    with_bias = {node.name for node, _ in _targets(plan)}
    for label, op_type in plan.selected.items():
        if op_type in ("Conv", "Gemm") and label not in with_bias:
            report.skipped[label] = "no bias to correct (add a zero bias to correct it)"
    shifts = bias_shifts(model, plan, samples, spec)
    reference, before = model.clone(), _quantized(model, ranges, spec)
    apply_shifts(model, plan, shifts, variance=spec.variance_correction, report=report)
    after = _quantized(model, ranges, spec)
    report.mean_error_before, report.mean_error_after = _mean_errors(
        reference, before, after, samples, progress
    )
    return report


def _quantized(
    model: ir.Model, ranges: collections.abc.Mapping[str, tuple[float, float]], spec: QuantSpec
) -> ir.Model:
    copy = model.clone()
    apply_plan(copy, build_plan(copy, spec), dict(ranges), spec)
    return copy


def _channel_sums(array: np.ndarray) -> np.ndarray:
    """``[count, sum of channel 0, sum of channel 1, ...]`` over every axis but 1."""
    if array.ndim < 2:
        return np.concatenate([[array.size], [array.sum()]])
    axes = tuple(i for i in range(array.ndim) if i != 1)
    return np.concatenate([[array.size // array.shape[1]], array.sum(axis=axes)])


def _mean_errors(
    reference: ir.Model,
    before: ir.Model,
    after: ir.Model,
    samples: collections.abc.Iterable[Feeds],
    progress: Progress | None,
) -> tuple[dict[str, float], dict[str, float]]:
    names = [v.name or "" for v in reference.graph.outputs if v.dtype == ir.DataType.FLOAT]
    sessions = [
        create_session(m, level="all" if m is not reference else "disable")
        for m in (reference, before, after)
    ]
    sums: list[dict[str, np.ndarray]] = [{}, {}, {}]
    for feeds in samples:
        for session, total in zip(sessions, sums, strict=True):
            outputs = run_session(session, feeds, names)
            for name in names:
                total[name] = total.get(name, 0.0) + _channel_sums(np.asarray(outputs[name], np.float64))
        size = len(next(iter(feeds.values())))
        if progress is not None:
            progress("bias correction check", size, None)
    ref, pre, post = ({n: s[n][1:] / max(s[n][0], 1) for n in names} for s in sums)
    return (
        {n: float(np.max(np.abs(pre[n] - ref[n]), initial=0.0)) for n in names},
        {n: float(np.max(np.abs(post[n] - ref[n]), initial=0.0)) for n in names},
    )
