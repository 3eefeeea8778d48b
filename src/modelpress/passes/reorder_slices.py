"""Move a Slice above the element-wise op that feeds it, so the op computes only the slice (算子重排).

Before → after (unary: Relu, Sigmoid, Cast, Clip, LeakyRelu, Gelu ...)::

    t = Relu(x)                                     s = Slice(x, starts, ends, axes, steps)
    y = Slice(t, starts, ends, axes, steps)    =>   y = Relu(s)

Before → after (broadcasting: Add, Sub, Mul, Div, Pow, Max, Min, PRelu, Where ...)::

    t = Add(x, c)          # x: [1, 64, 8, 8], c: [64, 1, 1] constant
    y = Slice(t, [0], [16], [1])               =>   s = Slice(x, [0], [16], [1])
                                                    y = Add(s, c[0:16])       # c sliced offline

Repeated until no rule applies, so a Slice climbs a whole chain (Relu -> Add(bias) ->
Mul(scale) -> Slice becomes Slice -> Relu -> Add -> Mul). As far as we know, none of the
onnxruntime, onnxslim or onnxscript optimizers makes this move.

Math. An element-wise op computes every output element from the elements at the same
(broadcast) position of its operands, so ``Slice(f(x)) == f(Slice(x))`` for unary ops, with the
Slice unchanged. For ``y = f(a, b, ...)`` with numpy broadcasting (operands right-aligned to the
output rank R), slicing output axis ``ax`` equals slicing, along ``ax``, every operand whose dim
there equals the output's (it *carries* the axis) and leaving alone the operands that broadcast
on it (dim 1, or the axis is missing because the operand has a lower rank): a size-1 dim
broadcast against the sliced length L gives L. A carrying constant is sliced offline with numpy
along its own axis ``ax - (R - rank(c))``, with the indices the ONNX spec defines (negative
indices wrapped, clamping, negative steps, INT64_MAX ends; see ``_slicing.slice_indices``). A
carrying non-constant operand takes a ``Slice`` node with the original parameters (its dim
equals the one the original Slice saw), restricted to its carried axes and re-numbered to its
own rank (one Slice when the same value is several operands, ``Mul(x, x)``). When every
operand has size 1 on a sliced axis and the Slice keeps that element, nobody is sliced there.
The element-wise results are the same numbers as before, computed on fewer elements.

Preconditions (per match; a failed one leaves the graph as it was):

* the Slice's data is the only output of a default-domain element-wise op, consumed by this
  Slice alone and not a graph output (else the op would have to be computed twice);
* the op has a non-constant input (an all-constant op is fold-constants' work);
* broadcasting ops: constant starts/ends/axes/steps (unary ops: any parameters), known operand
  ranks, and for each sliced axis a statically known broadcast role of every operand.

Refused, and why:

* a non-constant operand of static size d > 1 on a sliced axis against one of symbolic size:
  the symbolic one may be 1 (broadcast, must stay) or d (must be sliced);
* two non-constant operands that both carry a sliced axis (``Add(x, y)`` of equal shapes):
  moving would need a Slice on each, adding a node and a second copy of the sliced elements;
  we keep the node count from growing, so such a Slice stays where it is;
* a Slice that empties an axis along which every operand has size 1;
* element-wise ops whose attributes reference function attributes.

Subgraphs: onnxscript's rule engine also visits If/Loop/Scan bodies; rewrites that add
initializers are skipped inside model-local functions.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter import _basics as basics

from modelpress.passes._rewriting import unique_names
from modelpress.passes._slicing import BroadcastPlan, plan_broadcast_slice, slice_constant
from modelpress.passes.base import RulesPass
from modelpress.passes.rules import (
    PatternOp,
    PatternValue,
    PatternVar,
    RewriteOp,
    checked_const,
    const_array,
    producer_of,
)

__all__ = ["BROADCAST_OPS", "UNARY_OPS", "MoveSlicesUpPass"]

# Input 0 is the data; other inputs (Clip min/max, CastLike's target) are scalars or only
# give a dtype, so they pass through untouched.
UNARY_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Cast", "CastLike",
    "Ceil", "Celu", "Clip", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
    "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not",
    "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus",
    "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
})  # fmt: skip
# Every input takes part in (multidirectional or, for PRelu, unidirectional) broadcasting.
BROADCAST_OPS = frozenset({
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal",
    "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul",
    "Or", "Pow", "PRelu", "Sub", "Sum", "Where", "Xor",
})  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Move:
    """A checked match: the element-wise node and, for broadcasting ops, the slicing plan."""

    elementwise: ir.Node
    plan: BroadcastPlan | None  # None: unary op, the Slice moves to input 0 unchanged


def _plan_move(slice_node: ir.Node) -> _Move | str:
    """What moving ``slice_node`` above its producer takes, or why it is refused."""
    data = slice_node.inputs[0]
    node = None if data is None else data.producer()
    if data is None or node is None:
        return "Slice data is not produced by a node"
    if node.domain not in ("", "ai.onnx") or node.op_type not in UNARY_OPS | BROADCAST_OPS:
        return f"producer {node.op_type} is not an element-wise op we know"
    if node.graph is not slice_node.graph or len(node.outputs) != 1:
        return "producer is in another graph or has several outputs"
    if data.is_graph_output() or [(u.node, u.idx) for u in data.uses()] != [(slice_node, 0)]:
        return f"'{data.name}' has consumers besides the Slice (or is a graph output)"
    if any(attr.is_ref() for attr in node.attributes.values()):
        return "attribute references a function attribute"
    if node.op_type in UNARY_OPS:
        if node.inputs[0] is None or const_array(node.inputs[0]) is not None:
            return "input is constant (left to fold-constants)"
        return _Move(node, None)
    operands = [v for v in node.inputs if v is not None]
    if len(operands) != len(node.inputs):
        return "missing input"
    plan = plan_broadcast_slice(slice_node, operands)
    return plan if isinstance(plan, str) else _Move(node, plan)


class _MoveSliceAboveElementwise(RewriteRuleClassBase):
    """``Slice(f(x, c...))`` -> ``f(Slice(x), c'...)`` for one element-wise op type ``f``.

    One rule per op type: onnxscript patterns name a fixed op type, and a two-node pattern
    lets the engine remove ``f`` at once, so the new Slice can climb on in the same round.
    """

    def __init__(self, op_type: str) -> None:
        super().__init__(name=f"move_slice_above_{op_type}")
        self.op_type = op_type

    def pattern(self, op: PatternOp, starts: PatternVar, ends: PatternVar) -> PatternValue:
        data = getattr(op, self.op_type)(
            _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["data"]
        )
        return op.Slice(data, starts, ends, _allow_other_inputs=True, _outputs=["sliced"])

    def check(
        self, context: basics.MatchContext, starts: ir.Value, ends: ir.Value, data: ir.Value, sliced: ir.Value
    ) -> basics.MatchResult:
        result = basics.MatchResult()
        move = _plan_move(producer_of(sliced))
        if isinstance(move, str):
            return result.fail(move, producer_of(sliced))
        return result

    def rewrite(
        self, op: RewriteOp, starts: ir.Value, ends: ir.Value, data: ir.Value, sliced: ir.Value
    ) -> ir.Value:
        slice_node = producer_of(sliced)
        move = _plan_move(slice_node)
        assert isinstance(move, _Move), move  # check() accepted this match
        node = move.elementwise
        if move.plan is None:
            x = node.inputs[0]
            assert x is not None  # _plan_move refuses a unary op without input
            inputs = [_slice_value(op, x, slice_node, sliced, None), *node.inputs[1:]]
        else:
            inputs = _sliced_operands(op, node, slice_node, sliced, move.plan)
        attributes: dict[str, Any] = dict(node.attributes)  # onnxscript takes attributes as **Any
        new = op.op(node.op_type, *inputs, **attributes)
        assert isinstance(new, ir.Value)  # _plan_move requires one output
        return new


def _sliced_operands(
    op: RewriteOp, node: ir.Node, slice_node: ir.Node, sliced: ir.Value, plan: BroadcastPlan
) -> list[ir.Value | None]:
    """The inputs of the moved op: the carrier behind a Slice, constants sliced offline."""
    graph = slice_node.graph
    replacement: dict[int, ir.Value] = {}
    if plan.carrier is not None:
        replacement[id(plan.carrier)] = _slice_value(op, plan.carrier, slice_node, sliced, plan)
    names = unique_names(graph, [f"{value.name}_sliced" for value, _ in plan.constants])
    for (value, axes), name in zip(plan.constants, names, strict=True):
        array = slice_constant(checked_const(value), axes, plan.rank)
        replacement[id(value)] = op.initializer(ir.tensor(array, name=name), name=name)
    return [replacement.get(id(v), v) for v in node.inputs]


def _slice_value(
    op: RewriteOp, value: ir.Value, slice_node: ir.Node, sliced: ir.Value, plan: BroadcastPlan | None
) -> ir.Value:
    """A Slice of ``value`` equal to the old Slice restricted to the axes ``value`` carries."""
    rank = len(value.shape) if value.shape is not None else None
    if plan is None or (rank == plan.rank and len(plan.carrier_axes) == _slice_count(slice_node)):
        new = op.Slice(value, *slice_node.inputs[1:])  # same axes, same rank: reuse the inputs
    else:
        assert rank is not None  # plan_broadcast_slice refuses operands of unknown rank
        offset = plan.rank - rank
        starts = slice_node.inputs[1]
        assert starts is not None  # plan_broadcast_slice read constant starts
        index_dtype = checked_const(starts).dtype
        columns = {
            "starts": [a.start for a in plan.carrier_axes],
            "ends": [a.end for a in plan.carrier_axes],
            "axes": [a.axis - offset for a in plan.carrier_axes],
            "steps": [a.step for a in plan.carrier_axes],
        }
        base = starts.name or "slice"
        names = unique_names(slice_node.graph, [f"{base}_{key}_moved" for key in columns])
        params = [
            op.initializer(ir.tensor(np.array(column, dtype=index_dtype), name=name), name=name)
            for column, name in zip(columns.values(), names, strict=True)
        ]
        new = op.Slice(value, *params)
    new.type = value.type
    new.shape = _sliced_shape(value, sliced, plan)
    return new


def _slice_count(slice_node: ir.Node) -> int:
    starts = const_array(slice_node.inputs[1])
    return -1 if starts is None else int(starts.size)


def _sliced_shape(value: ir.Value, sliced: ir.Value, plan: BroadcastPlan | None) -> ir.Shape | None:
    """Shape of the new Slice: ``value``'s, with carried axes taking the old Slice's sizes."""
    if plan is None or value.shape is None or sliced.shape is None:
        return None if sliced.shape is None else ir.Shape(list(sliced.shape))
    dims = list(value.shape)
    for item in plan.carrier_axes:
        dims[item.axis - (plan.rank - len(dims))] = sliced.shape[item.axis]
    return ir.Shape(dims)


class MoveSlicesUpPass(RulesPass):
    """Move Slices above the element-wise ops that feed them (see the module doc)."""

    name = "move-slices-up"
    summary = "move Slice above element-wise ops (slicing broadcast constants offline)"
    # A Slice climbs one op per rewrite and the engine visits the new Slice later in the same
    # round, so one round usually moves every Slice to the top; the bound is a safety net.
    max_rounds = 16

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """One Slice-moving rule per element-wise op type."""
        return [_MoveSliceAboveElementwise.rule(t) for t in sorted(UNARY_OPS | BROADCAST_OPS)]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Apply the rules, skipping at once a model without a Slice (the common case).

        Trying ~70 rules costs a fraction of a millisecond per node and round.
        """
        graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        if not any(n.op_type == "Slice" for g in graphs for n in ir.traversal.RecursiveGraphIterator(g)):
            return ir.passes.PassResult(model, False)
        return super().call(model)
