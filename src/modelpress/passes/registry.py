"""THE ordered list of passes, and the levels that select from it.

Order matters: cleanup (fold, no-ops, dead code) first so that fusion patterns see the
real producer/consumer pairs; CSE after the fusions (see below); fusions before
BatchNorm→Scale, so that only BNs that could not be folded become Mul+Add; the onnxruntime
rewrites next; moving Slices last. The pass manager repeats the whole list until a round
changes nothing.

Levels (cumulative):

* ``basic``: semantics-preserving cleanups that never change arithmetic except by folding;
* ``extended``: + fusions and operator replacement (changes arithmetic within fp32 rounding);
* ``all``: + operator reordering (Slice ahead of element-wise ops, constant re-association).

Targets: ``onnx`` (default) keeps the output portable, standard-domain ONNX;
``onnxruntime`` adds the rewrites of ``passes/ort/`` into onnxruntime contrib ops
(``com.microsoft``), which stock onnxruntime runs but other runtimes do not.

No pass registers itself on import: adding a pass means adding it here.
"""

from __future__ import annotations

import collections.abc

import onnx_ir as ir

from modelpress.errors import UsageError
from modelpress.passes.base import ModelpressPass
from modelpress.passes.eliminate_common_subexpressions import EliminateCommonSubexpressionsPass
from modelpress.passes.eliminate_dead_code import EliminateDeadCodePass
from modelpress.passes.eliminate_no_ops import EliminateNoOpsPass
from modelpress.passes.fold_constant_chains import FoldConstantChainsPass
from modelpress.passes.fold_constants import FoldConstantsPass
from modelpress.passes.fold_reshape_shapes import FoldReshapeShapesPass
from modelpress.passes.fuse_batchnorm import FuseBatchNormPass
from modelpress.passes.fuse_conv_affine import FuseConvAffinePass
from modelpress.passes.fuse_matmul_add import FuseMatMulAddPass
from modelpress.passes.merge_transposes_reshapes import MergeTransposesReshapesPass
from modelpress.passes.ort.fuse_conv_activation import FuseConvActivationPass
from modelpress.passes.remove_initializer_inputs import RemoveInitializerInputsPass
from modelpress.passes.reorder_slices import MoveSlicesUpPass
from modelpress.passes.replace_batchnorm import ReplaceBatchNormWithScalePass

__all__ = ["DEFAULT_PASSES", "LEVELS", "ORT_PASSES", "PASSES", "TAIL_PASSES", "TARGETS", "passes_for"]

# (pass class, lowest level that runs it), in execution order.
DEFAULT_PASSES: tuple[tuple[type[ModelpressPass], str], ...] = (
    (RemoveInitializerInputsPass, "basic"),
    (FoldConstantsPass, "basic"),
    (FoldReshapeShapesPass, "basic"),
    (EliminateNoOpsPass, "basic"),
    (EliminateDeadCodePass, "basic"),
    (MergeTransposesReshapesPass, "basic"),
    (FoldConstantChainsPass, "all"),
    (FuseBatchNormPass, "extended"),
    (FuseMatMulAddPass, "extended"),
    (FuseConvAffinePass, "extended"),  # after fuse-matmul-add: a new Gemm absorbs a Mul/Add too
    (ReplaceBatchNormWithScalePass, "extended"),  # last fusion: only BNs nothing absorbed
    # After the fusions: merging equal weights first would make them shared, and a fusion
    # must not rewrite a weight another node reads.
    (EliminateCommonSubexpressionsPass, "basic"),
)

# onnxruntime-only rewrites, run after the portable list when target == "onnxruntime".
ORT_PASSES: tuple[tuple[type[ModelpressPass], str], ...] = ((FuseConvActivationPass, "extended"),)

# Run last, after every fusion: a Slice moved between a Conv and its activation would
# otherwise block Conv+activation fusions.
TAIL_PASSES: tuple[tuple[type[ModelpressPass], str], ...] = ((MoveSlicesUpPass, "all"),)

LEVELS: tuple[str, ...] = ("basic", "extended", "all")
TARGETS: tuple[str, ...] = ("onnx", "onnxruntime")

PASSES: dict[str, type[ModelpressPass]] = {
    cls.name: cls for cls, _ in (*DEFAULT_PASSES, *ORT_PASSES, *TAIL_PASSES)
}


def passes_for(
    level: str = "all",
    names: collections.abc.Sequence[str] | None = None,
    *,
    target: str = "onnx",
) -> list[ir.passes.PassBase]:
    """Instantiate the passes of ``level`` for ``target`` (or exactly ``names``, in registry order).

    Raises:
        UsageError: unknown level, target or pass name; the message lists the valid ones.
    """
    if level not in LEVELS:
        raise UsageError(f"unknown level '{level}'; choose one of: {', '.join(LEVELS)}")
    if target not in TARGETS:
        raise UsageError(f"unknown target '{target}'; choose one of: {', '.join(TARGETS)}")
    ordered = (*DEFAULT_PASSES, *ORT_PASSES, *TAIL_PASSES)
    if names:
        unknown = [n for n in names if n not in PASSES]
        if unknown:
            raise UsageError(f"unknown pass(es) {', '.join(unknown)}; known passes: {', '.join(PASSES)}")
        return [cls() for cls, _ in ordered if cls.name in names]
    rank = LEVELS.index(level)
    chosen = DEFAULT_PASSES + (ORT_PASSES if target == "onnxruntime" else ()) + TAIL_PASSES
    return [cls() for cls, lvl in chosen if LEVELS.index(lvl) <= rank]
