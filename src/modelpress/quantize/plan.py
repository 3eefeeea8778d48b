"""Which tensors of a model get Q/DQ pairs, which weights and biases are quantized, and why not.

``build_plan`` applies a ``QuantSpec`` to a model's main graph and returns a ``QuantPlan``; it
does not change the model. ``calibrate.py`` observes the plan's activations, ``qdq.py``
rewrites the model from it.

Selection (static mode):

1. Every node whose op type has a role in the spec (``spec.OP_ROLES``), is not excluded and
   passes its checks (float32 data, constant weights, ...) is a candidate; a refused
   candidate is recorded with its reason.
2. Compute nodes (Conv, Gemm, MatMul) are selected. Other candidates are selected only when
   they touch a selected node (an input produced by one, or an output consumed by one), to a
   fixpoint: a Reshape between two float ops would only add a Q and a DQ.
3. A Relu/Clip whose input is the only use of a selected compute or requant node's output is
   *fused*: that output gets no Q/DQ, the activation's output does, and onnxruntime drops the
   activation into the Q (a uint8 range that starts at 0 clamps exactly like Relu).
4. Tensors with a Q/DQ pair: the float activation inputs of selected nodes (a fused
   activation's input excepted) and the outputs of selected Conv, activation, shared and
   requant nodes (a fused producer excepted). Gemm/MatMul outputs are not quantized for
   their own sake: onnxruntime runs QGemm / MatMulIntegerToFloat with a float output, which
   is faster and exact; a quantized consumer still quantizes them. Outputs of shared (data
   movement) nodes take the scale and zero point of their input.

With ``spec.float_stem`` (static mode), a Conv that reads a graph input with at most
``STEM_MAX_CHANNELS`` input channels per group is refused as an image stem, and so is a Relu/Clip
that is the only use of its output (a Q/DQ pair between the two would only add work); the
stem's output is then quantized once, where its quantized consumers read it.

Weight-only mode selects compute nodes and quantizes their weights only. Dynamic mode selects
MatMul and Gemm nodes with a constant 2-D weight (right operand) and quantizes their weights,
plus (``spec.quantize_embeddings``) every Gather on axis 0 of a constant float32 2-D table
(a ``WeightSite`` on input 0, per row); ``dynamic.py`` rewrites them. Conv is refused there with
the reason (ConvInteger is slow).
Only the main graph is planned; subgraphs (If/Loop/Scan) and functions stay float.
"""

from __future__ import annotations

import dataclasses
import typing

import onnx_ir as ir

from modelpress.quantize.spec import STEM_MAX_CHANNELS, QuantSpec

__all__ = ["ActivationSite", "BiasSite", "QuantPlan", "WeightSite", "build_plan", "node_label"]

_FLOAT = ir.DataType.FLOAT


@dataclasses.dataclass(frozen=True)
class ActivationSite:
    """A float tensor that gets a QuantizeLinear/DequantizeLinear pair.

    Attributes:
        value: The tensor.
        source: Name of the tensor whose range gives the scale (itself, unless it is the
            output of a data-movement op, which reuses its input's parameters).
    """

    value: ir.Value
    source: str


@dataclasses.dataclass(frozen=True)
class WeightSite:
    """A constant weight input quantized offline to int8 (``axis`` None: per-tensor)."""

    node: ir.Node
    input_index: int
    axis: int | None


@dataclasses.dataclass(frozen=True)
class BiasSite:
    """A constant Conv/Gemm bias quantized to int32 with ``scale = x_scale * w_scale``."""

    node: ir.Node
    activation: str  # the input whose scale multiplies the weight's


@dataclasses.dataclass
class QuantPlan:
    """What ``qdq.py`` will do to the model (see the module docstring)."""

    activations: dict[str, ActivationSite]
    weights: list[WeightSite]
    biases: list[BiasSite]
    selected: dict[str, str]  # node label -> op type, in graph order
    skipped: dict[str, str]  # node label -> why it stays float

    @property
    def calibration_targets(self) -> list[str]:
        """Tensors whose range calibration must observe (in graph order)."""
        return list(dict.fromkeys(site.source for site in self.activations.values()))

    def op_counts(self, model: ir.Model) -> dict[str, dict[str, int]]:
        """Per op type with a role: how many nodes are quantized and how many stay float."""
        counts: dict[str, dict[str, int]] = {}
        selected = set(self.selected)
        for index, node in enumerate(model.graph):
            label = node_label(node, index)
            if label in selected or label in self.skipped:
                entry = counts.setdefault(node.op_type, {"quantized": 0, "float": 0})
                entry["quantized" if label in selected else "float"] += 1
        return counts


def node_label(node: ir.Node, index: int) -> str:
    """The node's name, or ``<op type>#<index in the graph>`` for an unnamed node."""
    return node.name or f"{node.op_type}#{index}"


def build_plan(model: ir.Model, spec: QuantSpec) -> QuantPlan:
    """Apply ``spec`` to ``model``'s main graph (which must carry inferred dtypes)."""
    nodes = list(model.graph)
    labels = {node: node_label(node, i) for i, node in enumerate(nodes)}
    roles: dict[ir.Node, str] = {}
    skipped: dict[str, str] = {}
    for node in nodes:
        role = spec.role(node.op_type) if node.domain in ("", "ai.onnx") else None
        if role is None:
            continue
        if role != "compute" and not _has_float_data(node):
            continue  # shape arithmetic on int64 and the like: not a float computation at all
        reason = (
            "excluded by the spec" if node.name in spec.exclude_nodes else _refusal(node, role, spec.mode)
        )
        if reason:
            skipped[labels[node]] = reason
        else:
            roles[node] = role
    if spec.float_stem and spec.mode == "static":
        _keep_stems_float(nodes, labels, roles, skipped)
    selected = [n for n in nodes if roles.get(n) == "compute"]
    if spec.mode == "static":
        selected = _grow_selection(nodes, roles, set(selected))
    lonely = set(roles) - set(selected)
    skipped.update({labels[n]: "no quantized neighbour (a Q/DQ pair would only add work)" for n in lonely})
    plan = QuantPlan({}, [], [], {labels[n]: n.op_type for n in selected}, skipped)
    for node in selected:
        _plan_weights(plan, node, spec)
    if spec.mode == "dynamic":
        _plan_gathers(plan, nodes, labels, spec)
    if spec.mode == "static":
        _plan_activations(plan, selected, roles)
    return plan


def _keep_stems_float(
    nodes: list[ir.Node], labels: dict[ir.Node, str], roles: dict[ir.Node, str], skipped: dict[str, str]
) -> None:
    """Refuse image stems and the Relu/Clip that only they feed (``spec.float_stem``)."""
    for node in nodes:
        channels = _stem_channels(node) if roles.get(node) == "compute" else None
        if channels is None:
            continue
        del roles[node]
        skipped[labels[node]] = (
            f"image stem ({channels} input channel(s) from the graph input, float_stem): the float "
            "NCHWc Conv is faster than QLinearConv here and the input needs no Quantize/Transpose"
        )
        out = node.outputs[0]
        follower = next(iter(out.uses())).node if len(out.uses()) == 1 and not out.is_graph_output() else None
        if follower is not None and roles.get(follower) == "activation":
            del roles[follower]
            skipped[labels[follower]] = "follows a float image stem (float_stem)"


def _stem_channels(node: ir.Node) -> int | None:
    """Input channels per group of a Conv that reads a graph input, when <= ``STEM_MAX_CHANNELS``."""
    x, weight = node.inputs[0], node.inputs[1]
    if node.op_type != "Conv" or x is None or not x.is_graph_input() or weight is None:
        return None
    shape = weight.shape
    if shape is None or len(shape) < 3 or not isinstance(shape[1], int):
        return None
    return shape[1] if shape[1] <= STEM_MAX_CHANNELS else None


def _grow_selection(nodes: list[ir.Node], roles: dict[ir.Node, str], selected: set[ir.Node]) -> list[ir.Node]:
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if node in roles and node not in selected and _touches(node, selected):
                selected.add(node)
                changed = True
    return [n for n in nodes if n in selected]


def _touches(node: ir.Node, selected: set[ir.Node]) -> bool:
    producers = {v.producer() for v in node.inputs if v is not None}
    consumers = {use.node for out in node.outputs for use in out.uses()}
    return bool((producers | consumers) & selected)


def _plan_weights(plan: QuantPlan, node: ir.Node, spec: QuantSpec) -> None:
    if node.op_type == "Conv":
        plan.weights.append(WeightSite(node, 1, 0 if spec.per_channel else None))
    elif node.op_type == "Gemm" and _is_constant(node.inputs[1]):
        trans_b = node.attributes.get_int("transB", 0)
        plan.weights.append(WeightSite(node, 1, (0 if trans_b else 1) if spec.per_channel else None))
    elif node.op_type == "MatMul" and _is_constant(node.inputs[1]):
        rank = len(node.inputs[1].shape or ())
        plan.weights.append(WeightSite(node, 1, 1 if spec.per_channel and rank == 2 else None))
    if spec.mode == "static" and node.op_type in ("Conv", "Gemm") and _input(node, 2) is not None:
        plan.biases.append(BiasSite(node, node.inputs[0].name))  # type: ignore[union-attr,arg-type]


def _plan_gathers(plan: QuantPlan, nodes: list[ir.Node], labels: dict[ir.Node, str], spec: QuantSpec) -> None:
    """Dynamic mode: int8 per-row Gather tables (or the reason each stays float)."""
    for node in nodes:
        table = node.inputs[0] if node.op_type == "Gather" and node.domain in ("", "ai.onnx") else None
        if table is None or not _is_constant(table) or table.dtype != _FLOAT:
            continue  # shape arithmetic and activations: not an embedding table
        label = labels[node]
        if node.name in spec.exclude_nodes:
            plan.skipped[label] = "excluded by the spec"
        elif not spec.quantize_embeddings:
            plan.skipped[label] = (
                "embedding tables kept float32 (quantize_embeddings off, --float-embeddings)"
            )
        elif len(table.shape or ()) != 2:
            plan.skipped[label] = f"the table has rank {len(table.shape or ())}; int8 Gather takes 2-D tables"
        elif node.attributes.get_int("axis", 0) != 0:
            plan.skipped[label] = "Gather on axis != 0 (only row lookups are quantized)"
        elif other := next((u.node for u in table.uses() if not _is_row_lookup(u.node, u.idx)), None):
            plan.skipped[label] = (
                f"the table '{table.name}' is also read by {other.op_type} '{other.name}' (it stays float32 "
                "there, so an int8 copy would only add size)"
            )
        else:
            plan.selected[label] = node.op_type
            plan.weights.append(WeightSite(node, 0, 0))


def _is_row_lookup(node: ir.Node, index: int) -> bool:
    return node.op_type == "Gather" and index == 0 and node.attributes.get_int("axis", 0) == 0


def _plan_activations(plan: QuantPlan, selected: list[ir.Node], roles: dict[ir.Node, str]) -> None:
    chosen = set(selected)
    fused = {
        n
        for n in selected
        if roles[n] == "activation" and _fusable_producer(n.inputs[0], chosen, roles)  # type: ignore[arg-type]
    }
    fused_producers = {n.inputs[0].producer() for n in fused}  # type: ignore[union-attr]

    def want(value: ir.Value, source: ir.Value | None = None) -> None:
        name = value.name or ""
        if name not in plan.activations:
            root = plan.activations[source.name or ""].source if source is not None else name
            plan.activations[name] = ActivationSite(value, root)

    for node in selected:
        role = roles[node]
        if node not in fused:
            for value in _activation_inputs(node):
                want(value)
        out = node.outputs[0]
        if node in fused_producers or (role == "compute" and node.op_type != "Conv"):
            continue
        source = node.inputs[0]
        if role == "shared" and source is not None and source.name in plan.activations:
            want(out, source=source)
        else:
            want(out)


def _fusable_producer(value: ir.Value, chosen: set[ir.Node], roles: dict[ir.Node, str]) -> bool:
    producer = value.producer()
    return (
        producer in chosen
        and roles[producer] in ("compute", "requant")
        and len(value.uses()) == 1
        and not value.is_graph_output()
    )


def _activation_inputs(node: ir.Node) -> list[ir.Value]:
    """The float, non-constant data inputs the node's integer kernel reads quantized."""
    if node.op_type in ("Conv", "Gemm", "MatMul"):
        candidates = [node.inputs[0]] + ([node.inputs[1]] if node.op_type != "Conv" else [])
    elif node.op_type in ("Add", "Mul", "Concat"):
        candidates = list(node.inputs)
    else:
        candidates = [node.inputs[0]]
    return [v for v in candidates if v is not None and not _is_constant(v) and v.dtype == _FLOAT]


def _data_inputs(node: ir.Node) -> list[ir.Value | None]:
    if node.op_type == "Concat":
        return list(node.inputs)
    return list(node.inputs[: 2 if node.op_type in ("Add", "Mul", "MatMul", "Gemm") else 1])


def _has_float_data(node: ir.Node) -> bool:
    return all(v is not None and v.dtype == _FLOAT for v in _data_inputs(node))


def _refusal(node: ir.Node, role: str, mode: str = "static") -> str | None:
    """Why ``node`` cannot be quantized (None when it can)."""
    data = _data_inputs(node)
    for value in data:
        if value is None or value.dtype != _FLOAT:
            dtype = None if value is None else value.dtype
            name = getattr(value, "name", "")
            return f"input '{name}' is {dtype}, not float32 (only float32 models are quantized)"
    if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
        return "a second output is used"
    if role == "compute":
        return _dynamic_refusal(node) if mode == "dynamic" else _compute_refusal(node)
    if node.op_type in ("Add", "Mul", "Concat") and any(_is_constant(v) for v in data):
        return "a constant input (not quantized yet)"
    return None


def _compute_refusal(node: ir.Node) -> str | None:
    weight, bias = node.inputs[1], _input(node, 2)
    if node.op_type == "MatMul":
        if _is_constant(node.inputs[0]):
            return "the constant operand is on the left (not supported yet)"
        return None
    if not _is_constant(weight):
        return "the weight is not a constant initializer"
    if node.op_type == "Gemm":
        alpha, beta = node.attributes.get_float("alpha", 1.0), node.attributes.get_float("beta", 1.0)
        if alpha != 1.0 or beta != 1.0:
            return f"alpha={alpha}, beta={beta} (only 1.0 is supported)"
        if bias is not None and weight.shape is not None and len(weight.shape) == 2:
            channels = weight.shape[0 if node.attributes.get_int("transB", 0) else 1]
            if not _is_constant(bias) or tuple(bias.shape or ()) != (channels,):
                return f"the bias is not a constant vector of {channels} values"
    if node.op_type == "Conv" and bias is not None and (not _is_constant(bias) or len(bias.shape or ()) != 1):
        return "the bias is not a constant vector"
    return None


def _dynamic_refusal(node: ir.Node) -> str | None:
    """Why a node cannot become DynamicQuantizeLinear -> MatMulInteger (None when it can)."""
    if node.op_type == "Conv":
        return (
            "dynamic mode skips Conv: onnxruntime's ConvInteger has no fast CPU kernel (a dynamic "
            "Conv runs several times slower than the float one); use --mode static for CNNs"
        )
    weight = node.inputs[1]
    if not _is_constant(weight):
        return "the weight (right operand) is not a constant initializer"
    if len(weight.shape or ()) != 2:
        return f"the weight has rank {len(weight.shape or ())}; dynamic mode takes 2-D weights"
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0) != 0:
        return "transA=1 (not supported in dynamic mode)"
    return _compute_refusal(node)


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _is_constant(value: ir.Value | None) -> typing.TypeGuard[ir.Value]:
    """An initializer the user cannot override (not also a graph input)."""
    return value is not None and value.const_value is not None and not value.is_graph_input()
