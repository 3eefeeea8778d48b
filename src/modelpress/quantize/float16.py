"""Float16 conversion: weights and activations float16, graph inputs/outputs float32.

Decision, per node of the main graph with float32 data (``BLOCKED`` and the checks below say
why a node stays float32; every kept node is reported with its reason):

1. ``BLOCKED`` ops stay float32: they overflow float16's range (max 65504: Exp, Pow, sums and
   means over many elements, Softmax's sum of exponentials), lose the precision their result
   needs (normalizations' variance, CumSum, Log), or have float attributes or indices that
   make no sense in float16 (Random*, Range, TopK, NonMaxSuppression, RoiAlign, Resize).
2. ``fp16_target="cpu"`` (default): an op stays float32 when onnxruntime's CPU provider has no
   float16 kernel for it (probed on this machine: a one-node float16 model is loaded and
   onnxruntime is asked whether it had to insert Casts). On x86 builds this keeps every
   arithmetic op (MatMul, Conv, Add, ...) float32; only data movement has float16 kernels.
3. With calibration data, any node output with ``|x| > 65504 / 2`` keeps its producer float32
   (half the range: headroom for inputs larger than the calibration set's).
4. Constant inputs outside float16's range, subgraph-holding nodes, non-default domains and
   nodes with float64 data stay float32.
5. Connected regions of convertible nodes without a MatMul/Gemm/Conv/ConvTranspose stay float32:
   converting them would only add Casts.

Rewrite: constant inputs of converted nodes become float16 initializers; one ``Cast`` per value
where a float32 value meets a float16 consumer and back; a graph output produced in float16
keeps its name on the Cast back to float32. Constant weights of float32 nodes are stored
float16 behind a ``Cast`` (onnxruntime folds it at load, so they run at float32 speed) when
every value fits float16's range. Finally ``tidy_casts`` removes identity and dangling
Casts, merges duplicate ones and collapses ``Cast(Cast(x))`` (see its docstring); no Cast
feeds another Cast afterwards.
"""

from __future__ import annotations

import collections.abc
import tempfile
import typing
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from modelpress.ir.stats import op_histogram
from modelpress.quantize.calibrate import observe, observer_range
from modelpress.quantize.plan import node_label
from modelpress.quantize.qdq import _Names
from modelpress.quantize.report import QuantizeReport
from modelpress.quantize.spec import QuantSpec
from modelpress.runtime.session import create_session

__all__ = ["BLOCKED", "FP16_MAX", "cast_problems", "convert_float16", "tidy_casts"]

FP16_MAX = 65504.0
_F32, _F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
_COMPUTE = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
_RANGE = "overflows float16's range (max 65504)"
_PRECISION = "needs more precision than float16's 11 bits"
# Data types of a node's inputs or outputs as float16 (None: a missing input or unknown type).
_DTypes = tuple[ir.DataType | None, ...]
BLOCKED: dict[str, str] = {
    "Exp": _RANGE,
    "Pow": _RANGE,
    "Softmax": f"sums exponentials: {_PRECISION}",
    "LogSoftmax": f"sums exponentials: {_PRECISION}",
    "ReduceSum": f"sums many elements: {_RANGE}",
    "ReduceMean": f"sums many elements: {_RANGE}",
    "ReduceSumSquare": _RANGE,
    "ReduceL1": _RANGE,
    "ReduceL2": _RANGE,
    "ReduceLogSum": _RANGE,
    "ReduceLogSumExp": _RANGE,
    "ReduceProd": _RANGE,
    "CumSum": _PRECISION,
    "Log": _PRECISION,
    "LayerNormalization": f"variance of the row: {_PRECISION}",
    "GroupNormalization": f"variance: {_PRECISION}",
    "InstanceNormalization": f"variance: {_PRECISION}",
    "RandomNormal": "random generator: float attributes",
    "RandomUniform": "random generator: float attributes",
    "RandomNormalLike": "random generator: float attributes",
    "RandomUniformLike": "random generator: float attributes",
    "Multinomial": "random generator",
    "Range": "indices: float16 counts exactly only to 2048",
    "TopK": "indices and ties: float16 merges close values",
    "NonMaxSuppression": "box coordinates and scores",
    "RoiAlign": "box coordinates",
    "Resize": "float32 scales/roi inputs",
}
# Ops whose every float input and output shares one type (T), checked by the probe anyway.
_ANY_TYPE = frozenset({"Cast", "Shape", "Size"})


def convert_float16(
    model: ir.Model,
    spec: QuantSpec,
    *,
    samples: collections.abc.Iterable[collections.abc.Mapping[str, np.ndarray]] | None = None,
    progress: collections.abc.Callable[[str, int, int | None], None] | None = None,
) -> QuantizeReport:
    """Convert ``model`` (with inferred dtypes) to float16 in place; returns the report's core."""
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    graph = model.graph
    nodes = list(graph)
    labels = {node: node_label(node, i) for i, node in enumerate(nodes)}
    report = QuantizeReport("fp16", spec.to_json(), {}, {}, {}, {}, {}, 0, 0)
    hot = _hot_values(model, samples, spec, report, progress) if samples is not None else {}
    opset = model.opset_imports.get("", 17)
    probe = _KernelProbe(opset)
    candidates: set[ir.Node] = set()
    for node in nodes:
        if not _float_values(node):
            continue
        reason = _refusal(node, spec, hot, probe)
        if reason:
            report.skipped[labels[node]] = reason
        else:
            candidates.add(node)
    for region in _regions(candidates):
        if not any(n.op_type in _COMPUTE for n in region):
            for node in region:
                report.skipped[labels[node]] = (
                    "no float16 MatMul/Gemm/Conv in its region: Casts would cost more than they save"
                )
            candidates -= region
    converted = [n for n in nodes if n in candidates]
    rewriter = _Rewriter(model)
    for node in converted:
        rewriter.convert(node, candidates)
    rewriter.store_kept_weights_float16()
    tidy_casts(graph)
    for node in nodes:
        if node in candidates or labels[node] in report.skipped:
            entry = report.op_counts.setdefault(node.op_type, {"quantized": 0, "float": 0})
            entry["quantized" if node in candidates else "float"] += 1
    report.inserted = {
        "float16_nodes": len(converted),
        "float16_weights": rewriter.weights,
        "float16_stored_weights": rewriter.stored,
        "casts": op_histogram(model).get("Cast", 0),
    }
    if not converted:
        report.notes.append(
            "no op was converted to float16 (on this onnxruntime CPU build MatMul/Gemm/Conv have no "
            "float16 kernel): only the weights are stored float16; pass fp16_target='any' "
            "(--fp16-target any) for a model meant for a float16-capable provider (CUDA, ARM64)"
        )
    return report


def _float_values(node: ir.Node) -> list[ir.Value]:
    values = [v for v in (*node.inputs, *node.outputs) if v is not None]
    return [v for v in values if v.dtype == _F32]


def _refusal(node: ir.Node, spec: QuantSpec, hot: dict[str, float], probe: _KernelProbe) -> str | None:
    if node.name in spec.exclude_nodes:
        return "excluded by the spec"
    if node.domain not in ("", "ai.onnx"):
        return f"domain '{node.domain}' (only standard ONNX ops are converted)"
    if node.op_type in BLOCKED:
        return f"block list: {BLOCKED[node.op_type]}"
    if any(
        attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()
    ):
        return "holds a subgraph (subgraphs are not converted)"
    values = [v for v in (*node.inputs, *node.outputs) if v is not None]
    if any(v.dtype in (ir.DataType.DOUBLE, _F16, ir.DataType.BFLOAT16) or v.dtype is None for v in values):
        return "a tensor is not float32 or has no inferred dtype"
    for out in node.outputs:
        if out.name in hot:
            peak = hot[out.name]
            return f"calibrated |{out.name}| reaches {peak:.4g} > {FP16_MAX / 2:g} (half float16's range)"
    for value in node.inputs:
        if value is not None and value.const_value is not None and value.dtype == _F32:
            peak = float(np.abs(value.const_value.numpy()).max(initial=0.0))
            if peak > FP16_MAX:
                return f"constant '{value.name}' holds {peak:.4g}, beyond float16's 65504"
    if spec.fp16_target == "cpu" and node.op_type not in _ANY_TYPE and not probe.native(node):
        return (
            f"onnxruntime's CPU provider has no float16 {node.op_type} kernel (it would cast back to float32)"
        )
    return None


def _hot_values(
    model: ir.Model,
    samples: collections.abc.Iterable[collections.abc.Mapping[str, np.ndarray]],
    spec: QuantSpec,
    report: QuantizeReport,
    progress: collections.abc.Callable[[str, int, int | None], None] | None,
) -> dict[str, float]:
    """Node outputs whose calibrated ``max |x|`` exceeds half float16's range."""
    targets = [out.name for node in model.graph for out in node.outputs if out.dtype == _F32 and out.name]

    def counted(size: int) -> None:
        report.calibration_samples += size
        if progress is not None:
            progress("calibrate", size, None)

    minmax = QuantSpec(mode="static", calibrator="minmax")
    observers = observe(model, samples, targets, minmax, on_batch=counted)
    peaks = {name: max(abs(v) for v in observer_range(obs, minmax)) for name, obs in observers.items()}
    return {name: peak for name, peak in peaks.items() if peak > FP16_MAX / 2}


def _regions(nodes: set[ir.Node]) -> list[set[ir.Node]]:
    """Connected components of ``nodes`` (edges: a value produced by one and read by the other)."""
    left, regions = set(nodes), []
    while left:
        stack, region = [left.pop()], set()
        while stack:
            node = stack.pop()
            region.add(node)
            neighbours = {v.producer() for v in node.inputs if v is not None}
            neighbours |= {use.node for out in node.outputs for use in out.uses()}
            for other in left & neighbours:
                left.discard(other)
                stack.append(other)
        regions.append(region)
    return regions


class _KernelProbe:
    """Whether onnxruntime's CPU provider runs a node with float16 data without its own Casts."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.cache: dict[tuple[str, _DTypes, _DTypes], bool] = {}

    def native(self, node: ir.Node) -> bool:
        def dtype(v: ir.Value | None) -> ir.DataType | None:
            return None if v is None else (_F16 if v.dtype == _F32 else v.dtype)

        key = (node.op_type, tuple(map(dtype, node.inputs)), tuple(map(dtype, node.outputs)))
        if key not in self.cache:
            self.cache[key] = self._probe(node, key[1], key[2])
        return self.cache[key]

    def _probe(self, node: ir.Node, in_types: _DTypes, out_types: _DTypes) -> bool:
        inputs = [
            ir.Value(name=f"i{k}", type=ir.TensorType(t)) if t else None for k, t in enumerate(in_types)
        ]
        attrs = list(node.attributes.values())
        probe = ir.Node("", node.op_type, inputs, attrs, num_outputs=len(out_types), name="probe")
        for k, (out, t) in enumerate(zip(probe.outputs, out_types, strict=True)):
            # An untyped output (None) is passed on as before: the probe then fails below.
            out.name, out.type = f"o{k}", ir.TensorType(typing.cast(ir.DataType, t))
        graph = ir.Graph(
            [v for v in inputs if v is not None],
            list(probe.outputs),
            nodes=[probe],
            name="probe",
            opset_imports={"": self.opset},
        )
        model = ir.Model(graph, ir_version=10)
        with tempfile.TemporaryDirectory(prefix="modelpress-fp16-") as folder:
            path = Path(folder) / "probe.onnx"
            try:
                create_session(model, level="disable", optimized_model_path=path)
                return "Cast" not in op_histogram(ir.load(path))
            except Exception:  # any refusal means: no float16 kernel to rely on
                return False


class _Rewriter:
    def __init__(self, model: ir.Model) -> None:
        self.graph = model.graph
        self.names = _Names(self.graph)
        self.casts: dict[tuple[int, ir.DataType], ir.Value] = {}
        self.half_constants: dict[int, ir.Value] = {}
        self.weights = self.stored = 0

    def cast(self, value: ir.Value, to: ir.DataType) -> ir.Value:
        key = (id(value), to)
        if key not in self.casts:
            suffix = "fp16" if to == _F16 else "fp32"
            node = ir.node("Cast", [value], {"to": to.value}, name=self.names(f"{value.name}_to_{suffix}"))
            out = node.outputs[0]
            out.name, out.type, out.shape = (
                self.names(f"{value.name}_{suffix}"),
                ir.TensorType(to),
                value.shape,
            )
            producer = value.producer()
            if producer is not None:
                self.graph.insert_after(producer, node)
            else:
                self.graph.insert_before(next(iter(self.graph)), node)
            self.casts[key] = out
        return self.casts[key]

    def half_constant(self, value: ir.Value) -> ir.Value:
        if id(value) not in self.half_constants:
            array = value.const_value.numpy().astype(np.float16)  # type: ignore[union-attr]
            name = self.names(f"{value.name}_fp16")
            half = ir.Value(
                name=name,
                type=ir.TensorType(_F16),
                shape=value.shape,
                const_value=ir.tensor(array, name=name),
            )
            self.graph.register_initializer(half)
            self.half_constants[id(value)] = half
            self.weights += 1
        return self.half_constants[id(value)]

    def convert(self, node: ir.Node, converted: set[ir.Node]) -> None:
        for index, value in enumerate(node.inputs):
            if value is None or value.dtype != _F32 or value.producer() in converted:
                continue
            constant = value.const_value is not None and not value.is_graph_input()
            node.replace_input_with(index, self.half_constant(value) if constant else self.cast(value, _F16))
            if constant and not value.uses() and value.name in self.graph.initializers:
                self.graph.initializers.pop(value.name)  # type: ignore[arg-type]
        if node.op_type == "Cast" and node.attributes.get_int("to") == _F32.value:
            node.attributes["to"] = ir.AttrInt64("to", _F16.value)
        for out in node.outputs:
            if out.dtype != _F32:
                continue
            out.type = ir.TensorType(_F16)
            for use in list(out.uses()):
                if use.node not in converted:
                    use.node.replace_input_with(use.idx, self.cast(out, _F32))
            if out.is_graph_output():
                back = self.cast(out, _F32)
                original = out.name
                out.name = self.names(f"{original}_fp16")
                back.name = original
                outputs = self.graph.outputs
                outputs[next(i for i, v in enumerate(outputs) if v is out)] = back

    def store_kept_weights_float16(self) -> None:
        """float32 initializers read by float32 nodes -> float16 initializer + Cast (folded by ORT)."""
        for name, value in list(self.graph.initializers.items()):
            if (
                value.dtype != _F32
                or value.is_graph_input()
                or value.is_graph_output()
                or value.const_value is None
            ):
                continue
            array = value.const_value.numpy()
            if array.size < 16 or np.abs(array).max(initial=0.0) > FP16_MAX:
                continue
            half = self.half_constant(value)
            restored = self.cast(half, _F32)
            for use in list(value.uses()):
                use.node.replace_input_with(use.idx, restored)
            self.graph.initializers.pop(name)
            restored.name = name  # the Cast output takes the weight's name back
            self.stored += 1


_LOSSLESS = {
    _F16: {_F32, ir.DataType.DOUBLE},
    ir.DataType.BFLOAT16: {_F32, ir.DataType.DOUBLE},
    _F32: {ir.DataType.DOUBLE},
}
_INTEGERS = {
    ir.DataType.BOOL,
    ir.DataType.INT8,
    ir.DataType.UINT8,
    ir.DataType.INT16,
    ir.DataType.UINT16,
    ir.DataType.INT32,
    ir.DataType.UINT32,
    ir.DataType.INT64,
    ir.DataType.UINT64,
}


def _collapsible(source: ir.DataType, middle: ir.DataType, target: ir.DataType) -> bool:
    """Whether ``Cast(Cast(x: source, to=middle), to=target)`` may become ``Cast(x, to=target)``."""
    if middle in _LOSSLESS.get(source, ()):
        return True  # the first Cast is exact
    if (source, middle, target) == (_F32, _F16, _F32):
        return True  # a round trip: dropping it is more precise, never less
    # integer -> float32 -> float16: float32 is exact to 2**24, beyond 65504 both give inf
    return source in _INTEGERS and (middle, target) == (_F32, _F16)


def tidy_casts(graph: ir.Graph) -> int:
    """Remove identity/dangling Casts, merge duplicates, collapse ``Cast(Cast(x))``; returns removals.

    Collapsed: the inner Cast is lossless (float16 -> float32, ...), a float32 -> float16 ->
    float32 round trip (removed: the result is more precise), integer -> float32 -> float16.
    Other chains (float -> int -> float, a floor) change values and are kept.
    """
    removed, changed = 0, True
    while changed:
        changed = False
        seen: dict[tuple[int, int], ir.Value] = {}
        for node in list(graph):
            if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
                continue
            source, out = node.inputs[0], node.outputs[0]
            to = ir.DataType(node.attributes.get_int("to"))
            inner = source.producer() if source is not None else None
            if inner is not None and inner.op_type == "Cast" and inner.inputs[0] is not None:
                origin = inner.inputs[0]
                if origin.dtype is not None and _collapsible(origin.dtype, source.dtype, to):  # type: ignore[union-attr,arg-type]
                    node.replace_input_with(0, origin)
                    changed = True
                    continue
            key = (id(source), to.value)
            replacement = source if source is not None and source.dtype == to else seen.get(key)
            if replacement is not None and not out.is_graph_output():
                ir.convenience.replace_all_uses_with(out, replacement)
            if not out.uses() and not out.is_graph_output():
                graph.remove(node, safe=True)
                removed, changed = removed + 1, True
            else:
                seen.setdefault(key, out)
    return removed


def cast_problems(graph: ir.Graph) -> list[str]:
    """Casts that feed a Cast, have no use, or cast to their own dtype (empty after ``tidy_casts``)."""
    problems = []
    for node in graph:
        if node.op_type != "Cast":
            continue
        source, out = node.inputs[0], node.outputs[0]
        inner = source.producer() if source is not None else None
        if inner is not None and inner.op_type == "Cast":
            problems.append(f"{inner.name} -> {node.name}: cascaded Casts")
        if not out.uses() and not out.is_graph_output():
            problems.append(f"{node.name}: dangling Cast")
        if source is not None and source.dtype == ir.DataType(node.attributes.get_int("to")):
            problems.append(f"{node.name}: identity Cast")
    return problems
