"""The linear ops at the ends of a channel group, and the records the group search builds.

A channel group (``_channel_groups``) is a set of hidden tensors sharing one channel axis.
Its ends are linear ops with constant weights, in two parts:

* a **producer** computes output channel ``c`` from its own weight slice alone: Conv with
  ``group=1`` (``W[c]``, ``B[c]``), Gemm with ``transA=0`` (``B[:, c]``, or ``B[c]`` when
  ``transB=1``, and ``C[..., c]``), MatMul with a constant 2-D ``B`` (``B[:, c]``);
* a **consumer** (the same ops, reading the group at input 0) sums over its input channels:
  ``W[:, c]`` of Conv, ``B[c]`` of MatMul and Gemm (``B[:, c]`` when ``transB=1``).

Between them sit channel-wise ops (``channels.channelwise``). Every constant a transform rewrites is
a ``Site``: the input slot holding it, the tensor axis along which the channels run, its
``Role`` when channel ``c`` is scaled by ``s_c`` and its ``Kind`` (how many entries it must
have along that axis). Channel axes of hidden tensors are counted from the end (``-3`` for
the C of NCHW, ``-1`` for the features of a MatMul), so numpy broadcasting keeps them.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import typing

import numpy as np
import onnx_ir as ir

from modelpress.passes.rules import int_attr

__all__ = [
    "LINEAR_OPS",
    "Consumed",
    "Kind",
    "Produced",
    "Role",
    "Site",
    "Step",
    "constant_array",
    "float_weight",
    "linear_consumer",
    "linear_producer",
    "where",
]

LINEAR_OPS = ("Conv", "Gemm", "MatMul")
_FLOATS = (np.float16, np.float32, np.float64)


class Role(enum.Enum):
    """How a site's tensor changes when channel ``c`` is scaled by ``s_c``."""

    SCALE = "scale"  # multiplied by s: producer weights and biases, additive constants
    UNSCALE = "unscale"  # divided by s: consumer weights
    KEEP = "keep"  # unchanged: gains (Mul/Div constants, BN scale and var, depthwise kernels)


class Kind(enum.Enum):
    """How many entries a site's tensor has along its channel axis."""

    WEIGHT = "weight"  # exactly C; must not be shared (a private copy would double its size)
    VECTOR = "vector"  # exactly C; copied when shared
    BROADCAST = "broadcast"  # C, or 1 / no such axis (numpy broadcasting): then equal for all channels


@dataclasses.dataclass(frozen=True)
class Site:
    """A constant input ``node.inputs[index]`` whose ``axis`` runs along the group's channels."""

    node: ir.Node
    index: int
    axis: int
    role: Role
    kind: Kind


class Produced(typing.NamedTuple):
    """A producer: its sites, its output's channel axis and rank (None: unknown), the channels."""

    sites: list[Site]
    axis: int
    rank: int | None
    channels: int


class Consumed(typing.NamedTuple):
    """A consumer: its weight site and the rank its group input must have (None: any)."""

    site: Site
    rank: int | None


@dataclasses.dataclass(frozen=True)
class Step:
    """A channel-wise node reached with its group inputs on ``axis``.

    Attributes:
        sites: Its constants to rewrite.
        hidden: The input indices carrying the group.
        out_axis: The channel axis of output 0.
        rank_rule: How the output rank follows from the inputs: ``same`` (as input 0),
            ``broadcast`` (numpy broadcasting of the inputs) or ``flat`` (always 2).
        constant_rank: The rank of a constant operand (``broadcast`` only).
        check: Given the rank of input 0 once known (None: unknown), why the node cannot
            carry the channels (None: it can). Run after the search has found the ranks.
        not_homogeneous: Why ``f(s x) != s f(x)`` for some ``s > 0`` (None: equal).
    """

    sites: tuple[Site, ...]
    hidden: tuple[int, ...]
    out_axis: int
    rank_rule: str = "same"
    constant_rank: int | None = None
    check: collections.abc.Callable[[int | None], str | None] | None = None
    not_homogeneous: str | None = None


def where(node: ir.Node) -> str:
    """``OpType 'name'`` for messages."""
    return f"{node.op_type} '{node.name}'"


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The array of an initializer or Constant output; None for graph inputs (overridable)."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def float_weight(node: ir.Node, ndim: int | None) -> np.ndarray | str:
    """Input 1 as a constant float array of ``ndim`` dims (>= 3 when None), or why it is not."""
    weight = constant_array(node.inputs[1] if len(node.inputs) > 1 else None)
    if weight is None or weight.dtype.type not in _FLOATS:
        return f"{where(node)}: weights are not a constant float initializer"
    if (weight.ndim != ndim) if ndim is not None else weight.ndim < 3:
        return f"{where(node)}: weights have {weight.ndim} dims"
    return weight


def _linear_weight(node: ir.Node) -> np.ndarray | str | None:
    """The weights of a Conv (group 1) / Gemm (transA 0) / MatMul; a refusal; None: not linear."""
    if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Conv" and int_attr(node, "group", 1) != 1:
        return None  # grouped: channel-wise when depthwise, refused otherwise
    if node.op_type == "Gemm" and int_attr(node, "transA", 0):
        return f"{where(node)} has transA=1"
    return float_weight(node, None if node.op_type == "Conv" else 2)


def linear_producer(node: ir.Node) -> Produced | str | None:
    """``node`` as the producer of its output 0, a refusal, or None when it is no linear op."""
    weight = _linear_weight(node)
    if weight is None or isinstance(weight, str):
        return weight
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    if node.op_type == "Conv":
        sites = [Site(node, 1, 0, Role.SCALE, Kind.WEIGHT)]
        sites += [Site(node, 2, 0, Role.SCALE, Kind.VECTOR)] if has_bias else []
        return Produced(sites, 1 - weight.ndim, weight.ndim, weight.shape[0])
    if node.op_type == "Gemm":
        axis = 0 if int_attr(node, "transB", 0) else 1
        sites = [Site(node, 1, axis, Role.SCALE, Kind.WEIGHT)]
        sites += [Site(node, 2, -1, Role.SCALE, Kind.BROADCAST)] if has_bias else []
        return Produced(sites, -1, 2, weight.shape[axis])
    source = node.inputs[0]
    rank = None if source is None or source.shape is None else len(source.shape)
    return Produced([Site(node, 1, 1, Role.SCALE, Kind.WEIGHT)], -1, rank, weight.shape[1])


def linear_consumer(node: ir.Node, index: int, axis: int) -> Consumed | str | None:
    """The weight site of ``node`` reading the group at input ``index``, a refusal, or None."""
    weight = _linear_weight(node) if index == 0 else None
    if weight is None or isinstance(weight, str):
        return weight
    if node.op_type == "Conv":
        expected, weight_axis, rank = 1 - weight.ndim, 1, weight.ndim
    elif node.op_type == "Gemm":
        expected, weight_axis, rank = -1, int(int_attr(node, "transB", 0) == 1), 2
    else:
        expected, weight_axis, rank = -1, 0, None
    if axis != expected:
        return f"{where(node)} reads the group's channels on axis {axis}, not {expected}"
    return Consumed(Site(node, 1, weight_axis, Role.UNSCALE, Kind.WEIGHT), rank)
