"""Channel-wise ops: output channel ``c`` depends only on input channel ``c`` and constants of ``c``.

These carry a channel group from its producers to its consumers (``_channel_groups``):

* element-wise activations (no parameters, or scalar ones): Relu, LeakyRelu, Identity, Abs,
  Neg, Clip, Sigmoid, Tanh, Elu, Selu, Softplus, Softsign, HardSigmoid, HardSwish, Erf, Exp,
  Log, Sqrt, Reciprocal, Gelu, Mish;
* BatchNormalization in inference mode (its four vectors follow the channels), pooling
  (MaxPool without its Indices output, AveragePool, LpPool, their Global forms) and
  depthwise Conv (``group = C``, one kernel ``W[c]`` per channel), all with the channels
  on axis 1;
* Add, Sub, Mul, Div, PRelu of a group tensor with a constant that broadcasts along the
  channel axis (one entry or C entries there), or with another tensor of the group;
* Slice of other axes, and Flatten(axis=1) of ``[N, C, 1, ...]`` (channels keep their order).

Rescaling ``x_c -> s_c x_c`` (``s_c > 0``) passes an op ``f`` when it is positively homogeneous,
``f(s x) = s f(x)``: Relu, LeakyRelu, PRelu, Identity, Abs, Neg, the pools, Slice, Flatten,
Clip with no bound but 0 and +-infinity, BatchNormalization (``mean`` and ``bias`` scale
with ``s``), depthwise Conv (its bias scales), Add/Sub (a constant operand scales), Mul/Div
by a constant. Not homogeneous, so rescaling is refused through them (permuting is not):
the other activations, Clip with a finite non-zero bound (ReLU6), ``x * y`` or ``x / y`` of
two group tensors (they scale by ``s^2``, ``s^0``) and ``k / x``.
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir

from modelpress.channels.ops import (
    Kind,
    Role,
    Site,
    Step,
    constant_array,
    float_weight,
    where,
)
from modelpress.passes.fuse_batchnorm import is_inference_batchnorm
from modelpress.passes.rules import int_attr

__all__ = ["channelwise_step"]

_HOMOGENEOUS_UNARY = frozenset({"Relu", "LeakyRelu", "Identity", "Abs", "Neg"})
_OTHER_UNARY = frozenset(
    {"Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Erf", "Exp",
     "Log", "Sqrt", "Reciprocal", "Gelu", "Mish"}
)  # fmt: skip
_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "PRelu"})
RankCheck = collections.abc.Callable[[int | None], str | None]
# Clip-6 defaults its bounds to the float32 extremes: those are no bound.
_FLT_MAX = float(np.finfo(np.float32).max)


def channelwise_step(node: ir.Node, axis: int) -> Step | str | None:
    """``node`` as a channel-wise op whose group inputs carry the channels on ``axis``.

    Returns:
        The step; a refusal when ``node`` is a channel-wise op type that cannot carry this
        group; None when its op type is not channel-wise at all.
    """
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or not node.outputs:
        return None
    if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
        return f"{where(node)}: an extra output (indices, mask, statistics) is used"
    if op in _HOMOGENEOUS_UNARY or op in _OTHER_UNARY:
        reason = None if op in _HOMOGENEOUS_UNARY else f"{where(node)} is not positively homogeneous"
        return Step((), (0,), axis, not_homogeneous=reason)
    if op == "Clip":
        return Step((), (0,), axis, not_homogeneous=_clip_problem(node))
    if op in _POOLS:
        return Step((), (0,), axis, check=_on_axis_one(node, axis))
    if op == "BatchNormalization":
        if not is_inference_batchnorm(node):
            return f"{where(node)} is in training mode"
        roles = (Role.KEEP, Role.SCALE, Role.SCALE, Role.KEEP)  # scale, bias, mean, var
        sites = tuple(Site(node, i + 1, 0, role, Kind.VECTOR) for i, role in enumerate(roles))
        return Step(sites, (0,), axis, check=_on_axis_one(node, axis))
    if op == "Conv":
        return _depthwise_step(node, axis)
    if op == "Flatten":
        return _flatten_step(node, axis)
    if op == "Slice":
        return _slice_step(node, axis)
    return _binary_step(node, axis) if op in _BINARY else None


def _on_axis_one(node: ir.Node, axis: int) -> RankCheck:
    """A rank check: the channels must be axis 1 (N, C, spatial...) of the node's input."""

    def check(rank: int | None) -> str | None:
        if rank is not None and axis == 1 - rank:
            return None
        return f"{where(node)} needs the channels on axis 1 of an input of known rank"

    return check


def _clip_problem(node: ir.Node) -> str | None:
    """Why Clip(s x) != s Clip(x) for some s > 0 (a finite non-zero bound), or None."""
    bounds: list[float | None] = []
    for index, name in ((1, "min"), (2, "max")):
        attr = node.attributes.get(name)  # Clip-6 and older carry the bounds as attributes
        bound = None if attr is None else attr.as_float()
        if len(node.inputs) > index and node.inputs[index] is not None:
            array = constant_array(node.inputs[index])
            if array is None or array.size != 1:
                return f"{where(node)} has a non-constant bound"
            bound = float(array.reshape(-1)[0])
        bounds.append(bound)
    low, high = bounds
    if (low is not None and low != 0 and low > -_FLT_MAX) or (high is not None and high < _FLT_MAX):
        return f"{where(node)} clips to [{low}, {high}] (a bound other than 0 or infinity)"
    return None


def _depthwise_step(node: ir.Node, axis: int) -> Step | str:
    weight = float_weight(node, None)
    if isinstance(weight, str):
        return weight
    if weight.shape[1] != 1 or weight.shape[0] != int_attr(node, "group", 1) or axis != 1 - weight.ndim:
        return f"{where(node)} is a grouped Conv but not depthwise (one kernel per channel)"
    sites = [Site(node, 1, 0, Role.KEEP, Kind.WEIGHT)]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        sites.append(Site(node, 2, 0, Role.SCALE, Kind.VECTOR))
    return Step(tuple(sites), (0,), axis)


def _flatten_step(node: ir.Node, axis: int) -> Step | str:
    """Flatten(axis=1) of [N, C, 1, ...] keeps the channels in order along axis 1 of [N, C]."""
    source = node.inputs[0]
    definer = None if source is None else source.producer()
    pooled = definer is not None and definer.op_type in _POOLS and definer.op_type.startswith("Global")
    single = source is not None and source.shape is not None and all(d == 1 for d in list(source.shape)[2:])
    if int_attr(node, "axis", 1) != 1 or not (single or pooled):
        return f"{where(node)} mixes the channels with other axes"
    return Step((), (0,), -1, rank_rule="flat", check=_on_axis_one(node, axis))


def _slice_step(node: ir.Node, axis: int) -> Step | str:
    axes = constant_array(node.inputs[3]) if len(node.inputs) > 3 else None
    if "starts" in node.attributes or axes is None:
        return f"{where(node)}: the sliced axes are not constant"
    sliced = [int(a) for a in axes.reshape(-1)]

    def check(rank: int | None) -> str | None:
        if rank is None and any(a >= 0 for a in sliced):
            return f"{where(node)} slices axes {sliced} of an input of unknown rank"
        if axis in {a - rank if a >= 0 else a for a in sliced}:  # type: ignore[operator]
            return f"{where(node)} slices the channel axis"
        return None

    return Step((), (0,), axis, check=check)


def _binary_step(node: ir.Node, axis: int) -> Step | str:
    """Add/Sub/Mul/Div/PRelu of a group tensor with a constant or another group tensor."""
    op = node.op_type
    if "broadcast" in node.attributes or "axis" in node.attributes:
        return f"{where(node)} uses legacy (opset < 7) broadcasting"
    constants = [constant_array(v) for v in node.inputs[:2]]
    hidden = tuple(i for i in (0, 1) if constants[i] is None)
    if op == "PRelu" and hidden != (0,):
        return f"{where(node)}: the slope is not a constant"
    if len(hidden) == 2:
        reason = None if op in ("Add", "Sub") else f"{where(node)} of two group tensors"
        return Step((), hidden, axis, rank_rule="broadcast", not_homogeneous=reason)
    index = 1 - hidden[0]
    constant = constants[index]
    assert constant is not None
    if constant.dtype.kind != "f":
        return f"{where(node)}: the constant operand is not floating point"
    role = Role.SCALE if op in ("Add", "Sub") else Role.KEEP
    reason = f"{where(node)} divides by the group tensor" if op == "Div" and index == 0 else None
    site = Site(node, index, axis, role, Kind.BROADCAST)
    return Step((site,), hidden, axis, "broadcast", constant.ndim, not_homogeneous=reason)
