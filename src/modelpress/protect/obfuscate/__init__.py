"""Obfuscation that needs no runtime library and costs nothing at run time.

Three passes, each in its own module, rewrite a model into one that computes the same
function with the same graph shape (same ops, same tensor shapes), so stock onnxruntime runs
it at the original speed:

* ``permute_channels``: every group of hidden channels (from the producing Conv/Gemm/MatMul,
  through channel-wise ops and residual Adds, to the consuming ones) is relabelled by a random
  permutation folded into the weights;
* ``rescale_channels``: the same groups, where every op between the layers is positively
  homogeneous (ReLU, LeakyReLU, pooling, BatchNormalization, Add), scaled per channel by
  random factors ``s > 0`` that the consumers' weights divide out;
* ``anonymize``: node and value names replaced by meaningless symbols, doc strings and
  metadata dropped (the model's input and output names are kept).

``obfuscate_model`` runs them by strength through ``PassManager`` (one round: a random
transform run twice is simply another random transform)::

    low     anonymize-names
    medium  permute-channels, anonymize-names
    high    permute-channels, rescale-channels, anonymize-names

What this protects against, and what not: the weights no longer sit where a copy of the
original checkpoint would have them, and the names no longer tell the architecture's story,
so diffing against a known checkpoint or reading the graph by its names fails. The graph
structure stays visible, and the transforms are linear-algebra symmetries an attacker who
knows about them can partly undo (e.g. by sorting channels by weight norm); use encryption
(``modelpress.protect.encrypt``) for confidentiality at rest.

Opaque operators (``opaque=True``, issue 4 steps 2-6) go further and need an operator
library at run time. After the passes of the strength (names last), four more run::

    compress-subgraphs   every key subgraph (Conv+BN+Relu, MatMul+Add+GELU, attention, LayerNorm)
                         and the glue between them becomes one node calling a model-local function
    scramble-weights     every weight stored permuted and scaled by powers of two (exact); the
                         inverse (Mul/Gather/Reshape by constants) goes into the function
    expand-graph         decoy operators, fake outputs and ignored inputs
    anonymize-op-types   every function its own meaningless type, in meaningless domains

``library.write_obfuscated`` then writes the functions to ``OUT.mplib`` beside the model
(encrypted when a key is given), and ``library.attach_library`` merges them back in memory:
``runtime`` mode lets onnxruntime inline them (it folds the decoding into constants at
session creation), ``transport`` mode restores the plain graph first (``restore``). The model
file alone holds no standard op, no original name and no original weight bytes.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from modelpress.channels.groups import ChannelGroup, find_channel_groups
from modelpress.errors import UsageError
from modelpress.passes.base import Instrument, ModelpressPass, PassManager, PassRecord
from modelpress.protect.obfuscate._regions import find_regions
from modelpress.protect.obfuscate.anonymize import AnonymizeNamesPass
from modelpress.protect.obfuscate.anonymize_ops import AnonymizeOpTypesPass
from modelpress.protect.obfuscate.compress_subgraphs import CompressSubgraphsPass
from modelpress.protect.obfuscate.expand_graph import ExpandGraphPass
from modelpress.protect.obfuscate.library import (
    LIBRARY_SUFFIX,
    MODES,
    WrittenFiles,
    attach_library,
    has_library,
    library_path,
    write_obfuscated,
)
from modelpress.protect.obfuscate.permute_channels import PermuteChannelsPass
from modelpress.protect.obfuscate.rescale_channels import RescaleChannelsPass
from modelpress.protect.obfuscate.restore import restore_original
from modelpress.protect.obfuscate.scramble_weights import ScrambleWeightsPass
from modelpress.runtime.compare import Comparison, compare_models

__all__ = [
    "LIBRARY_SUFFIX",
    "MODES",
    "OPAQUE_PASSES",
    "STRENGTHS",
    "AnonymizeNamesPass",
    "AnonymizeOpTypesPass",
    "ChannelGroup",
    "CompressSubgraphsPass",
    "ExpandGraphPass",
    "ObfuscationReport",
    "PermuteChannelsPass",
    "RescaleChannelsPass",
    "ScrambleWeightsPass",
    "WrittenFiles",
    "attach_library",
    "find_channel_groups",
    "has_library",
    "library_path",
    "obfuscate_model",
    "obfuscation_passes",
    "restore_original",
    "verify_obfuscation",
    "write_obfuscated",
]

STRENGTHS: dict[str, tuple[str, ...]] = {
    "low": ("anonymize-names",),
    "medium": ("permute-channels", "anonymize-names"),
    "high": ("permute-channels", "rescale-channels", "anonymize-names"),
}
# Run after the strength's channel passes and before anonymize-names when ``opaque`` is asked.
OPAQUE_PASSES: tuple[str, ...] = (
    "compress-subgraphs",
    "scramble-weights",
    "expand-graph",
    "anonymize-op-types",
)


@dataclasses.dataclass
class ObfuscationReport:
    """What ``obfuscate_model`` did.

    Attributes:
        seed: The seed the pass seeds were derived from.
        strength: ``low``, ``medium`` or ``high``.
        records: One record per pass (changed, seconds, op-count delta, which is empty).
        groups: Channel groups found in the original model.
        permuted: Groups permute-channels transformed (0 when it did not run).
        rescaled: Groups rescale-channels transformed (0 when it did not run).
        left_alone: ``"group: reason"`` for each group a channel pass that ran did not touch.
        opaque: Whether opaque operators were made (the model then needs its library).
        regions: The op types of each compressed subgraph (``Conv+BatchNormalization+Relu``);
            empty unless ``opaque``.
    """

    seed: int
    strength: str
    records: list[PassRecord]
    groups: int
    permuted: int
    rescaled: int
    left_alone: list[str]
    opaque: bool = False
    regions: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-serializable data."""
        data = dataclasses.asdict(self)
        data["records"] = [dataclasses.asdict(r) for r in self.records]
        return data


def obfuscation_passes(seed: int, strength: str = "medium", *, opaque: bool = False) -> list[ModelpressPass]:
    """The passes of ``strength`` (plus ``OPAQUE_PASSES`` when ``opaque``), each seeded independently.

    Raises:
        UsageError: an unknown strength, or a seed that is not a non-negative integer.
    """
    if strength not in STRENGTHS:
        raise UsageError(f"unknown obfuscation strength '{strength}'; choose one of: {', '.join(STRENGTHS)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UsageError(f"the obfuscation seed must be a non-negative integer, got {seed!r}")
    factories: dict[str, collections.abc.Callable[[int], ModelpressPass]] = {
        "permute-channels": PermuteChannelsPass,
        "rescale-channels": RescaleChannelsPass,
        "anonymize-names": AnonymizeNamesPass,
        "compress-subgraphs": lambda _seed: CompressSubgraphsPass(),
        "scramble-weights": ScrambleWeightsPass,
        "expand-graph": ExpandGraphPass,
        "anonymize-op-types": AnonymizeOpTypesPass,
    }
    passes = []
    for index, name in enumerate(_pass_names(strength, opaque)):
        # One independent stream per pass: the permutation does not depend on the strength.
        pass_seed = int(np.random.SeedSequence([int(seed), index]).generate_state(1)[0])
        passes.append(factories[name](pass_seed))
    return passes


def _pass_names(strength: str, opaque: bool) -> tuple[str, ...]:
    names = STRENGTHS[strength]
    if not opaque:
        return names
    return (*(n for n in names if n != "anonymize-names"), *OPAQUE_PASSES, "anonymize-names")


def obfuscate_model(
    model: ir.Model,
    *,
    seed: int,
    strength: str = "medium",
    opaque: bool = False,
    instruments: collections.abc.Sequence[Instrument] = (),
) -> tuple[ir.Model, ObfuscationReport]:
    """Obfuscate ``model`` in place (clone it first to keep the original).

    Args:
        model: The model; its main graph's input and output names are kept.
        seed: Makes the result reproducible: the same seed and model give the same bytes.
        strength: ``low``, ``medium`` or ``high`` (see the module docstring).
        opaque: Also compress subgraphs into opaque operators, scramble weights, add decoys
            and anonymize op types. The model then holds its operators as model-local
            functions; ``write_obfuscated`` splits them off into the operator library.
        instruments: Passed to ``PassManager`` (e.g. IR verification after each pass).

    Returns:
        The model and a report of what changed and which channel groups were left alone.

    Raises:
        UsageError: an unknown strength or a bad seed.
        PreconditionError: ``opaque`` on a model with control flow or its own functions.
        PassError: a pass failed (a bug); the message names the pass and those before it.
    """
    passes = obfuscation_passes(seed, strength, opaque=opaque)
    groups = find_channel_groups(model.graph)  # before the names change, for a readable report
    regions: list[str] = []
    if opaque:
        CompressSubgraphsPass().requires(model)
        regions = [region.label() for region in find_regions(_sorted_lifted(model))]
    records = PassManager(passes, max_rounds=1, instruments=instruments)(model)
    ran = set(STRENGTHS[strength])
    permuted = sum(g.can_permute() for g in groups) if "permute-channels" in ran else 0
    rescaled = sum(g.can_rescale() for g in groups) if "rescale-channels" in ran else 0
    left_alone = [f"{g.label}: {_why_left_alone(g, ran)}" for g in groups if _why_left_alone(g, ran)]
    report = ObfuscationReport(int(seed), strength, records, len(groups), permuted, rescaled, left_alone)
    if opaque:
        report.opaque, report.regions = True, regions
    return model, report


def _sorted_lifted(model: ir.Model) -> ir.Graph:
    """A copy of the main graph as compress-subgraphs sees it (constants lifted, sorted)."""
    copy = model.clone()
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(copy)
    copy.graph.sort()
    return copy.graph


def _why_left_alone(group: ChannelGroup, ran: set[str]) -> str | None:
    if not ran & {"permute-channels", "rescale-channels"}:
        return None
    if group.refusal or group.channels < 2:
        return group.refusal or "a single channel"
    if "rescale-channels" in ran and group.not_homogeneous:
        return f"permuted, not rescaled: {group.not_homogeneous}"
    return None


def verify_obfuscation(
    original: ir.Model | bytes,
    obfuscated: ir.Model | bytes,
    *,
    rtol: float = 1e-5,
    seeds: collections.abc.Sequence[int] = (0, 1, 2),
    dim_values: collections.abc.Mapping[str, int] | None = None,
) -> Comparison:
    """Check that the obfuscated model computes what the original does, on random feeds.

    Both run on onnxruntime with its optimizations off; outputs are matched by name, so the
    obfuscated model must keep the interface names (the default of ``obfuscate_model``).

    Args:
        original: The model before obfuscation.
        obfuscated: The model after.
        rtol: Largest error relative to each output's largest magnitude. 1e-5 covers the
            reordered fp32 sums of permuted channels and the roundings of rescaled weights.
        seeds: Seeds of the random feeds.
        dim_values: Sizes of dynamic dims (see ``modelpress.runtime.feeds.input_specs``).

    Returns:
        The comparison (errors per output and feed).

    Raises:
        NumericMismatchError: some output differs by more than ``rtol``.
    """
    comparison = compare_models(original, obfuscated, seeds=seeds, dim_values=dim_values)
    comparison.check(rtol, what="the obfuscated model")
    return comparison
