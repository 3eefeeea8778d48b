"""``optimize``: run the pass list on a model, verify it numerically, write it atomically.

The input model is never modified: passes run on a clone, and the result is compared with
the original on onnxruntime with its graph optimizations disabled. A file is written only
when the check passed (or was skipped on request); otherwise ``NumericMismatchError`` is
raised and the destination is left as it was.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import time
import typing
from pathlib import Path

import onnx_ir as ir

from modelpress.ir import io
from modelpress.ir.stats import op_histogram
from modelpress.passes.base import Instrument, PassManager, PassRecord
from modelpress.passes.registry import passes_for
from modelpress.runtime.compare import Comparison, compare_models

__all__ = ["DEFAULT_RTOL", "OptimizeReport", "optimize_file", "optimize_model"]

# fp32 rewrites (BN folding, constant re-association) change rounding, never more than this
# relative to the output's scale. The contract: max rel error <= 1e-4.
DEFAULT_RTOL = 1e-4


@dataclasses.dataclass
class OptimizeReport:
    """What optimize did: per-pass records, op counts, the numeric check, timings."""

    level: str
    target: str
    records: list[PassRecord]
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    seconds: float
    comparison: Comparison | None = None
    rtol: float = DEFAULT_RTOL
    input_path: str | None = None
    output_path: str | None = None

    @property
    def nodes_before(self) -> int:
        """Node count of the input model."""
        return sum(self.ops_before.values())

    @property
    def nodes_after(self) -> int:
        """Node count of the optimized model."""
        return sum(self.ops_after.values())

    def to_json(self) -> dict[str, typing.Any]:
        """A JSON-serializable summary (what ``--json`` prints)."""
        return {
            "input": self.input_path,
            "output": self.output_path,
            "level": self.level,
            "target": self.target,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
            "seconds": round(self.seconds, 4),
            "passes": [
                {
                    "name": r.name,
                    "changed": r.changed,
                    "runs": r.runs,
                    "seconds": round(r.seconds, 4),
                    "nodes_delta": r.nodes_delta,
                    "op_delta": r.op_delta,
                }
                for r in self.records
            ],
            "verification": None
            if self.comparison is None
            else {
                "rtol": self.rtol,
                "max_rel": self.comparison.max_rel,
                "max_abs": self.comparison.max_abs,
                "outputs": self.comparison.to_json(),
            },
        }


def optimize_model(
    model: ir.Model,
    *,
    level: str = "all",
    passes: collections.abc.Sequence[str] | None = None,
    target: str = "onnx",
    verify: bool = True,
    rtol: float = DEFAULT_RTOL,
    seeds: collections.abc.Sequence[int] = (0,),
    dim_values: collections.abc.Mapping[str, int] | None = None,
    instruments: collections.abc.Sequence[Instrument] = (),
) -> tuple[ir.Model, OptimizeReport]:
    """Optimize a copy of ``model`` and, unless ``verify=False``, check it against the original.

    Args:
        model: The input model; it is not modified.
        level: ``basic``, ``extended`` or ``all`` (see ``passes.registry``).
        passes: Run exactly these pass names instead of a level's list.
        target: ``onnx`` (portable output) or ``onnxruntime`` (adds contrib-op fusions).
        verify: Compare outputs with the input model on random feeds.
        rtol: Largest accepted relative error (see ``runtime.compare``).
        seeds: Random-feed seeds for the check.
        dim_values: Sizes for dynamic dims in the check.
        instruments: Called after every pass that changed the model.

    Returns:
        The optimized model and the report.

    Raises:
        NumericMismatchError: the check failed (the caller must not save the model).
        PassError: a pass crashed; the message names it and the passes before it.
    """
    start = time.perf_counter()
    ops_before = op_histogram(model)
    work = model.clone()
    records = PassManager(passes_for(level, passes, target=target), instruments=instruments)(work)
    report = OptimizeReport(level, target, records, ops_before, op_histogram(work), 0.0, rtol=rtol)
    if verify:
        report.comparison = compare_models(model, work, seeds=seeds, dim_values=dim_values)
    report.seconds = time.perf_counter() - start
    if report.comparison is not None:
        report.comparison.check(rtol, what="the optimized model")
    return work, report


def optimize_file(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    verify: bool = True,
    rtol: float = DEFAULT_RTOL,
    seeds: collections.abc.Sequence[int] = (0,),
    dim_values: collections.abc.Mapping[str, int] | None = None,
    **options: typing.Any,
) -> OptimizeReport:
    """Load ``source``, optimize it (see ``optimize_model``) and save it to ``destination``.

    The check runs on the staged output file itself (what is about to be published) against
    the source file, so neither model is serialized twice. Nothing is written when loading,
    a pass or the numeric check fails.
    """
    start = time.perf_counter()
    model = io.load(source)
    optimized, report = optimize_model(model, verify=False, rtol=rtol, **options)
    del model  # the source file is the reference from here on: free its weights

    def check(staged: Path) -> None:
        # compare_models loads any path (io.load, create_session); its ModelLike names only str | Path.
        reference = typing.cast("str | Path", source)
        report.comparison = compare_models(reference, staged, seeds=seeds, dim_values=dim_values)
        report.comparison.check(rtol, what="the optimized model")

    io.save(optimized, destination, before_commit=check if verify else None)
    report.seconds = time.perf_counter() - start
    report.input_path, report.output_path = str(source), str(Path(destination))
    return report
