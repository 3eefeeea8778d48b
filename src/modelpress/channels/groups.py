"""Channel groups: hidden tensors whose channels may be relabelled, rescaled or removed together.

Starting from the output of each linear producer (``channels.ops``), a breadth-first search
follows the channels forward through channel-wise ops (``channels.channelwise``) to the consumers,
and backward from every group tensor that another group tensor is combined with: a residual
``x + y`` stays correct only if ``x`` and ``y`` are transformed alike, so the Add joins both
sides, and with them every producer that writes into a ResNet stage and every consumer that
reads it. The group is the closure.

Tensor ranks: exporters often store no shapes for hidden tensors, and some channel-wise ops
need the channels on axis 1 (BatchNormalization, pooling, Flatten). Ranks are known from
stored shapes and from the linear ops (a Conv's input and output have the rank of its
weights, a Gemm's are 2-D), and spread through the group's ops until nothing changes; the
axis-1 checks run after that.

A group is refused, with the first reason found, when a channel reaches anything but a
producer, a consumer, a channel-wise op or ``Shape`` (whose output no channel transform
changes): a graph input or output, Concat, Reshape, Transpose, Softmax, LayerNormalization,
Dropout, ConvTranspose (not handled yet), a grouped Conv that is not depthwise, a node inside
a subgraph or function; or when a
constant it would rewrite is not a float constant, has the wrong length, or is a weight
shared with another node (copying it would double its size).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import cast

import onnx_ir as ir

from modelpress.channels.channelwise import channelwise_step
from modelpress.channels.ops import (
    LINEAR_OPS,
    Consumed,
    Produced,
    Site,
    Step,
    linear_consumer,
    linear_producer,
    where,
)
from modelpress.channels.sites import site_problem

__all__ = ["ChannelGroup", "find_channel_groups"]


@dataclasses.dataclass
class ChannelGroup:
    """Hidden tensors sharing one channel axis, and every constant transforming it touches.

    Attributes:
        label: The name of the producer the search started from (for reports).
        channels: The number of channels (from the first producer's weights).
        values: The hidden tensors, in search order.
        sites: The constants to rewrite, in search order.
        refusal: Why no transform may touch the group (None: permuting may).
        not_homogeneous: Why a positive rescaling would change the result (None: it would not).
    """

    label: str
    channels: int = 0
    values: list[ir.Value] = dataclasses.field(default_factory=list)
    sites: list[Site] = dataclasses.field(default_factory=list)
    refusal: str | None = None
    not_homogeneous: str | None = None

    def can_permute(self) -> bool:
        """True when nothing refused the group and it has channels to move (C >= 2)."""
        return self.refusal is None and self.channels >= 2

    def can_rescale(self) -> bool:
        """True when nothing refused the group and every op in it is positively homogeneous."""
        return self.refusal is None and self.not_homogeneous is None and self.channels >= 1


def find_channel_groups(graph: ir.Graph) -> list[ChannelGroup]:
    """Every channel group of ``graph``'s main body, in graph order of their first producer."""
    groups: list[ChannelGroup] = []
    claimed: set[ir.Value] = set()
    for node in graph:
        if node.op_type not in LINEAR_OPS or not node.outputs or node.outputs[0] in claimed:
            continue
        if not isinstance(linear_producer(node), Produced):
            continue  # e.g. attention's MatMul of two activations: no weights, no group
        group = _GroupSearch(graph, node).run()
        claimed.update(group.values)
        groups.append(group)
    return groups


class _GroupSearch:
    """One search: the group so far, each value's channel axis, the channel-wise steps taken."""

    def __init__(self, graph: ir.Graph, start: ir.Node) -> None:
        self.graph = graph
        self.group = ChannelGroup(start.name or start.outputs[0].name or "<unnamed>")
        self.queue: collections.deque[tuple[ir.Value, int | None]] = collections.deque()
        self.queue.append((start.outputs[0], None))
        self.axes: dict[ir.Value, int] = {}
        self.ranks: dict[ir.Value, int] = {}
        self.steps: dict[ir.Node, Step] = {}
        self.producers: set[ir.Node] = set()

    def run(self) -> ChannelGroup:
        while self.queue:
            self._visit(*self.queue.popleft())
        _spread_ranks(self.steps, self.ranks)
        for node, step in self.steps.items():
            if step.check is not None:
                self._refuse(step.check(self.ranks.get(node.inputs[0])))  # type: ignore[arg-type]
        for site in self.group.sites:
            self._refuse(site_problem(site, self.group.channels))
        return self.group

    def _refuse(self, reason: str | None) -> None:
        if reason and self.group.refusal is None:
            self.group.refusal = reason

    def _know_rank(self, value: ir.Value | None, rank: int | None) -> None:
        if value is not None and rank is not None:
            self.ranks.setdefault(value, rank)

    def _visit(self, value: ir.Value, axis: int | None) -> None:
        if value in self.axes:
            if axis is not None and axis != self.axes[value]:
                self._refuse(f"'{value.name}' would carry the channels on two different axes")
            return
        axis = self._define(value, axis)
        if axis is None:
            return
        self.axes[value] = axis
        self.group.values.append(value)
        self._know_rank(value, None if value.shape is None else len(value.shape))
        if value.is_graph_output():
            self._refuse(f"'{value.name}' is a graph output")
        for user, index in value.uses():
            self._use(user, index, axis)

    def _define(self, value: ir.Value, axis: int | None) -> int | None:
        """Account for the node producing ``value``; return ``value``'s axis (None: refused)."""
        node = value.producer()
        if node is None or node.graph is not self.graph:
            self._refuse(f"'{value.name}' is a graph input or constant: its channels are fixed")
            return None
        produced = linear_producer(node)
        if isinstance(produced, str):
            self._refuse(produced)
            return None
        if produced is not None:
            self._produce(node, produced, axis)
            return produced.axis
        if node in self.steps or axis is None:  # reached forward: the step is taken already
            return axis
        # Reached backward, as an operand of a group Add: the node must carry the same channels.
        into = axis
        if node.op_type == "Flatten":  # [N, C, 1, ...] -> [N, C]: the input has them on axis 1
            source = node.inputs[0]
            rank = self.ranks.get(source) if source is not None else None
            rank = rank or (len(source.shape) if source is not None and source.shape is not None else None)
            if rank is None:
                self._refuse(f"{where(node)}: the rank of its input is unknown")
                return None
            into = 1 - rank
        step = channelwise_step(node, into)
        if not isinstance(step, Step) or step.out_axis != axis:
            self._refuse(step if isinstance(step, str) else f"{where(node)} mixes the channels")
            return None
        self._take(node, step, into)
        return axis

    def _produce(self, node: ir.Node, produced: Produced, axis: int | None) -> None:
        if axis is not None and axis != produced.axis:
            self._refuse(f"{where(node)} writes its channels on axis {produced.axis}, not {axis}")
        self._know_rank(node.outputs[0], produced.rank)
        if node in self.producers:
            return
        self.producers.add(node)
        self.group.sites.extend(produced.sites)
        if self.group.channels and produced.channels != self.group.channels:
            self._refuse(f"{where(node)} has {produced.channels} channels, not {self.group.channels}")
        self.group.channels = self.group.channels or produced.channels

    def _use(self, user: ir.Node, index: int, axis: int) -> None:
        if user.graph is not self.graph:
            self._refuse(f"{where(user)} in a subgraph or function reads the channels")
            return
        consumed = linear_consumer(user, index, axis)
        if isinstance(consumed, Consumed):
            self.group.sites.append(consumed.site)
            self._know_rank(user.inputs[index], consumed.rank)
        elif isinstance(consumed, str):
            self._refuse(consumed)
        elif user in self.steps or (user.op_type == "Shape" and user.domain == ""):
            return  # an Add reached from its other operand; a Shape sees no channel transform
        else:
            step = channelwise_step(user, axis)
            if isinstance(step, Step):
                self._take(user, step, axis)
            else:
                self._refuse(step or f"{where(user)} mixes the channels or is not supported")

    def _take(self, node: ir.Node, step: Step, axis: int) -> None:
        """Add a channel-wise node whose group inputs carry the channels on ``axis``."""
        self.steps[node] = step
        self.group.sites.extend(step.sites)
        if step.not_homogeneous and self.group.not_homogeneous is None:
            self.group.not_homogeneous = step.not_homogeneous
        for index in step.hidden:
            self.queue.append((node.inputs[index], axis))  # type: ignore[arg-type]
        self.queue.append((node.outputs[0], step.out_axis))


def _spread_ranks(steps: dict[ir.Node, Step], ranks: dict[ir.Value, int]) -> None:
    """Complete ``ranks`` through the steps' rank rules until nothing changes."""
    changed = True
    while changed:
        changed = False
        for node, step in steps.items():
            # A step's group inputs are set: _take queued each of them as a value of the group.
            inputs = cast("list[ir.Value]", [node.inputs[i] for i in step.hidden])
            known = {value: ranks.get(value) for value in [*inputs, node.outputs[0]]}
            for value, rank in _implied_ranks(step, inputs, node.outputs[0], known).items():
                if value not in ranks:
                    ranks[value] = rank
                    changed = True


def _implied_ranks(
    step: Step, inputs: list[ir.Value], output: ir.Value, known: dict[ir.Value, int | None]
) -> dict[ir.Value, int]:
    """Ranks of a step's group inputs and output that follow from those ``known``."""
    out = known[output]
    if step.rank_rule == "flat":
        return {output: 2}
    if step.rank_rule == "same":
        rank = out if out is not None else known[inputs[0]]
        return {} if rank is None else {inputs[0]: rank, output: rank}
    # Broadcasting: out = max(operands). Known operands give the output; a known output
    # larger than every other operand gives the one unknown operand.
    operand_ranks = [known[v] for v in inputs]
    if step.constant_rank is not None:
        operand_ranks.append(step.constant_rank)
    if None not in operand_ranks:
        return {output: max(cast("list[int]", operand_ranks))}  # no None among them
    unknown = [v for v in inputs if known[v] is None]
    others = [r for r in operand_ranks if r is not None]
    if out is not None and len(unknown) == 1 and max(others, default=0) < out:
        return {unknown[0]: out}
    return {}
