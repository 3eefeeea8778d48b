"""A thin layer on ``onnx_ir.passes``: our pass base classes, the pass manager and instruments.

A modelpress pass is an ``onnx_ir.passes.InPlacePass`` with a CLI ``name`` and a one-line
``summary``. ``RulesPass`` applies a fixed list of ``onnxscript.rewriter`` rules until none
matches and reports ``changed`` only when a rule fired. ``PassManager`` runs passes in rounds
until a round changes nothing, records per-pass op counts and wall time, and wraps any failure
in ``PassError`` with the pass name and the passes run before it. Instruments (callables run
after every pass) add checks such as IR verification without the passes knowing.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import time
from typing import ClassVar

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import RewriteRule, RewriteRuleSet

from modelpress.errors import ModelpressError, PassError
from modelpress.ir.stats import op_histogram

__all__ = ["Instrument", "ModelpressPass", "PassManager", "PassRecord", "RulesPass"]

logger = logging.getLogger(__name__)


class ModelpressPass(ir.passes.InPlacePass):
    """Base of every modelpress pass: in place, with a CLI name and a summary line."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RulesPass(ModelpressPass):
    """Applies ``rules()`` (onnxscript rewrite rules) to the graph, its subgraphs and functions.

    onnxscript's engine also rewrites inside If/Loop/Scan bodies; the unused-node cleanup
    afterwards runs on the main graph, so a subgraph may keep an orphaned initializer
    (the model stays valid).
    """

    max_rounds: ClassVar[int] = 8

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """The rewrite rules this pass applies, in priority order."""
        raise NotImplementedError

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Apply the rules until a round applies none (each rewrite can expose another)."""
        rules = list(self.rules())
        total = 0
        for _ in range(self.max_rounds):
            # onnxscript tries every rule on every node; most rules' root op is absent from a
            # given model, and dropping those first halves a pass's time on CNNs.
            present = {node.op_type for node in _all_nodes(model)}
            live = [rule for rule in rules if _root_op_type(rule) in (None, *present)]
            if not live:
                break
            count = RewriteRuleSet(live).apply_to_model(model)
            total += count
            if not count:
                break
        if total:
            logger.info("%s: %d rewrites", self.name, total)
            # Rules emit Constant nodes for new attributes-as-inputs (axes, shapes): keep the
            # graph in one convention, constants as initializers.
            common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, bool(total))


def _all_nodes(model: ir.Model) -> collections.abc.Iterator[ir.Node]:
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def _root_op_type(rule: RewriteRule) -> str | None:
    """The op type a rule's single output node must have, or None when not fixed or unknown.

    Reads onnxscript's pattern through private attributes; anything unexpected means
    "unknown", so the rule is always kept (correctness never depends on this filter).
    """
    try:
        (root,) = rule._target_pattern.output_nodes
        identifier = root.op_identifier()
    except (AttributeError, ValueError, TypeError):
        return None
    return identifier[1] if identifier else None


Instrument = collections.abc.Callable[[ir.passes.PassBase, ir.Model], None]


@dataclasses.dataclass
class PassRecord:
    """What one pass did over all rounds of a ``PassManager`` run.

    ``op_delta`` sums, over every run of the pass, the change in node count per op type that
    the pass itself made (not the passes around it).
    """

    name: str
    changed: bool = False
    runs: int = 0
    seconds: float = 0.0
    op_delta: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def nodes_delta(self) -> int:
        """Net change in node count made by this pass (negative: nodes removed)."""
        return sum(self.op_delta.values())

    def add(self, before: dict[str, int], after: dict[str, int]) -> None:
        """Accumulate the op-count change of one run."""
        for op in set(before) | set(after):
            change = after.get(op, 0) - before.get(op, 0)
            if change:
                self.op_delta[op] = self.op_delta.get(op, 0) + change
        self.op_delta = {k: v for k, v in sorted(self.op_delta.items()) if v}


class PassManager:
    """Runs passes in rounds until a round changes nothing, recording what each pass did.

    Args:
        passes: The passes in order.
        max_rounds: Upper bound on rounds (a round runs every pass once).
        instruments: Callables ``f(pass, model)`` run after every pass that changed the model,
            e.g. IR verification in tests, or a progress callback.
    """

    def __init__(
        self,
        passes: collections.abc.Sequence[ir.passes.PassBase],
        *,
        max_rounds: int = 4,
        instruments: collections.abc.Sequence[Instrument] = (),
    ) -> None:
        self.passes = list(passes)
        self.max_rounds = max_rounds
        self.instruments = list(instruments)

    def __call__(self, model: ir.Model) -> list[PassRecord]:
        """Run the passes on ``model`` in place; return one record per pass."""
        records = [PassRecord(_pass_name(p)) for p in self.passes]
        history: list[str] = []
        # Every pass is idempotent (each has a test for it): a pass whose last run saw the
        # model as it is now would change nothing, so the confirming round skips it.
        version = 0
        seen_version: dict[int, int] = {}
        ops_now = op_histogram(model)  # kept current: recounted only after a change
        for _ in range(self.max_rounds):
            round_changed = False
            for index, (pass_, record) in enumerate(zip(self.passes, records, strict=True)):
                if seen_version.get(index) == version:
                    continue
                start = time.perf_counter()
                try:
                    result = pass_(model)
                except ModelpressError:
                    raise
                except Exception as e:
                    raise PassError(
                        f"{type(e).__name__}: {e}", pass_name=record.name, history=tuple(history)
                    ) from e
                record.seconds += time.perf_counter() - start
                record.runs += 1
                history.append(record.name)
                if result.modified:
                    version += 1
                    record.changed = round_changed = True
                    ops_after = op_histogram(model)
                    record.add(ops_now, ops_after)
                    ops_now = ops_after
                    for instrument in self.instruments:
                        instrument(pass_, model)
                seen_version[index] = version
            if not round_changed:
                break
        return records


def _pass_name(pass_: ir.passes.PassBase) -> str:
    return getattr(pass_, "name", "") or type(pass_).__name__
