"""Structured (channel) pruning: remove whole hidden channels, so the network really shrinks.

Before -> after (a Conv pair whose hidden channels ``K`` are kept, the others removed)::

    h = Conv(x, W1, B1)          [N, C, H, W]     h' = Conv(x, W1[K], B1[K])        [N, |K|, H, W]
    a = Relu(h)                                   a' = Relu(h')
    y = Conv(a, W2, B2)                           y' = Conv(a', W2[:, K], B2)

Math: removing channels is a channel permutation (``protect.obfuscate.permute_channels``)
restricted to the kept ones. Every constant that runs along a channel group's axis (a
``Site``: producer filters and biases, BatchNormalization vectors, per-channel constants,
depthwise kernels, consumer input slices) is replaced by ``np.take(t, K, axis)``. The
result equals the original network in which the removed channels are zero all the way from
their producers to their consumers (their filters, biases and additive constants zero), since
the consumers' sums then get nothing from them. It is lossy: a removed channel's
contribution is dropped, and nothing is fine-tuned here (the loss is reported, not recovered).

Importance of channel ``c``: the L1 norm of its producer filters, summed over the group's
producers (``sum_p sum |W_p[c]|``; for a residual stage every Conv writing into it), on the
original weights. BatchNormalization scales after a producer are not part of it: fold them
first (``modelpress optimize``, or an exporter with constant folding). Per group the
``floor(sparsity * C)`` least important channels go (ties: the lower index goes first), at
least one stays, and the kept channels keep their order. Depthwise Convs in the group get
``group = |K|``. The stored shapes of the group's hidden tensors are cleared and inferred again.

Left alone, with the reason in the report: groups the channel analysis refuses
(``modelpress.channels.groups``: channels reaching a graph input or output, Concat, Reshape, Transpose,
a non-depthwise grouped Conv, shared weights, ...), groups a ``Shape`` reads (its output
would change with the channel count), groups of fewer than ``min_channels`` channels (stems
and heads are small and sensitive) and groups where the sparsity removes nothing.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as common_passes

from modelpress.channels.groups import ChannelGroup, find_channel_groups
from modelpress.channels.ops import Kind, Role, Site, constant_array
from modelpress.channels.sites import rewrite_sites
from modelpress.compress.prune import check_sparsity, outcome_json, prune_on_file
from modelpress.errors import UsageError
from modelpress.passes.rules import int_attr
from modelpress.protect.obfuscate.permute_channels import permuted
from modelpress.runtime.compare import Comparison

__all__ = ["DEFAULT_MIN_CHANNELS", "GroupPrune", "StructuredReport", "prune_channels", "prune_channels_file"]

logger = logging.getLogger(__name__)

DEFAULT_MIN_CHANNELS = 8


@dataclasses.dataclass(frozen=True)
class GroupPrune:
    """What channel pruning did to one channel group.

    Attributes:
        label: The group's first producer (node name).
        channels_before: Its channel count.
        channels_after: Channels kept (equals ``channels_before`` when skipped).
        producers: Nodes writing the channels (their filters rank the channels).
        consumers: Nodes summing over the channels.
        removed: Indices of the removed channels, ascending.
        skipped: Why the group was left alone ("" when pruned).
    """

    label: str
    channels_before: int
    channels_after: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    removed: tuple[int, ...] = ()
    skipped: str = ""


@dataclasses.dataclass
class StructuredReport:
    """Per-group result of ``prune_channels``; ``prune_channels_file`` adds the error and paths.

    Attributes:
        sparsity: The requested fraction of channels to remove per group.
        min_channels: Groups with fewer channels were skipped.
        groups: One entry per channel group, in graph order.
        parameters_before: Initializer elements before pruning.
        parameters_after: Initializer elements after.
        comparison: Output error against the original on random inputs (onnxruntime,
            optimizations off); None from ``prune_channels``. Reported, never checked.
        output_path: Where the pruned model was written (``prune_channels_file`` only).
        seconds: Wall time of ``prune_channels_file``.
    """

    sparsity: float
    min_channels: int
    groups: list[GroupPrune] = dataclasses.field(default_factory=list)
    parameters_before: int = 0
    parameters_after: int = 0
    comparison: Comparison | None = None
    output_path: Path | None = None
    seconds: float = 0.0

    @property
    def removed_channels(self) -> int:
        """Channels removed over all groups."""
        return sum(group.channels_before - group.channels_after for group in self.groups)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-serializable data."""
        return {
            "structured": "channels",
            "sparsity": self.sparsity,
            "min_channels": self.min_channels,
            "removed_channels": self.removed_channels,
            "parameters_before": self.parameters_before,
            "parameters_after": self.parameters_after,
            "groups": [dataclasses.asdict(group) for group in self.groups],
            **outcome_json(self),
        }


def check_min_channels(min_channels: int) -> None:
    """Raise ``UsageError`` unless ``min_channels >= 1``."""
    if not (isinstance(min_channels, int) and min_channels >= 1):
        raise UsageError(f"min_channels {min_channels!r} must be an integer >= 1")


def prune_channels(
    model: ir.Model, sparsity: float, *, min_channels: int = DEFAULT_MIN_CHANNELS, multiple_of: int = 1
) -> StructuredReport:
    """Remove the least important ``sparsity`` fraction of every prunable channel group, in place.

    Args:
        model: The model; its weights shrink and depthwise Convs get their new ``group``.
        sparsity: Fraction of each group's channels to remove (rounded down), in [0, 1).
        min_channels: Groups with fewer channels are left alone.
        multiple_of: Round each group's kept channel count down to a multiple of this (at least
            one multiple), e.g. 8 for the blocked kernels of onnxruntime's CPU provider; 1 = off.

    Returns:
        One ``GroupPrune`` per channel group and the parameter counts before and after.

    Raises:
        UsageError: ``sparsity`` or ``min_channels`` is out of range.
    """
    check_sparsity(sparsity)
    check_min_channels(min_channels)
    if multiple_of < 1:
        raise UsageError(f"multiple_of {multiple_of} must be >= 1 (1: no rounding)")
    report = StructuredReport(sparsity, min_channels, parameters_before=count_parameters(model))
    groups = find_channel_groups(model.graph)
    # Rank every group on the original weights before any of them shrinks (a Conv that reads
    # one group and writes another holds sites of both).
    plans = [(group, _plan(group, sparsity, min_channels, multiple_of)) for group in groups]
    for group, (kept, skipped) in plans:
        if kept is not None:
            _remove_channels(model.graph, group, kept)
        report.groups.append(record := _record(group, kept, skipped))
        logger.debug(
            "prune-channels %s: %d -> %d %s", group.label, group.channels, record.channels_after, skipped
        )
    if report.removed_channels:
        # Shapes stored for the shrunk tensors are stale: clear them, then infer them again
        # (if inference fails they stay cleared, which is valid for hidden tensors).
        for group, (kept, _) in plans:
            for value in group.values if kept is not None else ():
                value.shape = None
        common_passes.ShapeInferencePass(strict_mode=False)(model)
    report.parameters_after = count_parameters(model)
    logger.info(
        "prune-channels: removed %d channels, parameters %d -> %d",
        report.removed_channels,
        report.parameters_before,
        report.parameters_after,
    )
    return report


def prune_channels_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    sparsity: float,
    *,
    min_channels: int = DEFAULT_MIN_CHANNELS,
    multiple_of: int = 1,
    dim_values: collections.abc.Mapping[str, int] | None = None,
) -> StructuredReport:
    """Channel-prune the model at ``src`` and write it to ``dst`` atomically (``src`` untouched).

    As ``prune.prune_file``: the outputs are compared with the original's on random inputs
    (seeds 0-2, onnxruntime with optimizations off); the error is reported, not checked.

    Raises:
        UsageError: an option is out of range, or random inputs cannot be made.
        ModelLoadError: ``src`` is not a valid ONNX model.
        ModelSaveError: ``dst`` could not be written (nothing is left there).
    """
    check_sparsity(sparsity)
    check_min_channels(min_channels)
    return prune_on_file(
        src,
        dst,
        lambda model: prune_channels(model, sparsity, min_channels=min_channels, multiple_of=multiple_of),
        dim_values,
    )


def count_parameters(model: ir.Model) -> int:
    """Elements of the main graph's initializers."""
    return sum(
        value.const_value.size for value in model.graph.initializers.values() if value.const_value is not None
    )


def channel_importance(group: ChannelGroup) -> np.ndarray:
    """L1 norm of each channel's producer filters, summed over the group's producers."""
    importance = np.zeros(group.channels, dtype=np.float64)
    for site in _producer_sites(group):
        array = constant_array(site.node.inputs[site.index])
        assert array is not None, "the channel analysis checked every site"
        moved = np.moveaxis(np.abs(array.astype(np.float64)), site.axis, 0)
        importance += moved.reshape(group.channels, -1).sum(axis=1)
    return importance


def _plan(
    group: ChannelGroup, sparsity: float, min_channels: int, multiple_of: int
) -> tuple[np.ndarray | None, str]:
    """The channels to keep (ascending), or None and why the group is left alone."""
    if group.refusal is not None:
        return None, f"refused: {group.refusal}"
    shape_reader = next((n for v in group.values for n, _ in v.uses() if n.op_type == "Shape"), None)
    if shape_reader is not None:
        return None, f"Shape '{shape_reader.name}' reads the channel count"
    if group.channels < min_channels:
        return None, f"{group.channels} channels < min_channels {min_channels}"
    remove = min(math.floor(sparsity * group.channels), group.channels - 1)
    if multiple_of > 1:
        kept = max(multiple_of, (group.channels - remove) // multiple_of * multiple_of)
        remove = max(group.channels - kept, 0)
    if remove <= 0:
        return None, f"sparsity {sparsity:g} removes none of {group.channels} channels"
    order = np.argsort(channel_importance(group), kind="stable")
    return np.sort(order[remove:]), ""


def _remove_channels(graph: ir.Graph, group: ChannelGroup, kept: np.ndarray) -> None:
    take = functools.partial(permuted, order=kept, channels=group.channels)
    rewrite_sites(graph, group.sites, take)
    for node in {site.node for site in group.sites}:
        if node.op_type == "Conv" and int_attr(node, "group", 1) == group.channels != 1:
            node.attributes["group"] = ir.AttrInt64("group", len(kept))  # depthwise: one per channel


def _producer_sites(group: ChannelGroup) -> list[Site]:
    # Producer filters are the weights scaled with their channel (consumers' are UNSCALE,
    # depthwise kernels KEEP): see channels.ops.Role.
    return [site for site in group.sites if site.kind is Kind.WEIGHT and site.role is Role.SCALE]


def _record(group: ChannelGroup, kept: np.ndarray | None, skipped: str) -> GroupPrune:
    consumers = [site.node for site in group.sites if site.kind is Kind.WEIGHT and site.role is Role.UNSCALE]
    removed = () if kept is None else tuple(int(c) for c in np.setdiff1d(np.arange(group.channels), kept))
    return GroupPrune(
        group.label,
        group.channels,
        group.channels if kept is None else len(kept),
        tuple(dict.fromkeys(site.node.name or "<unnamed>" for site in _producer_sites(group))),
        tuple(dict.fromkeys(node.name or "<unnamed>" for node in consumers)),
        removed,
        skipped,
    )
