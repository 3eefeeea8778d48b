"""Re-associate chains of Add/Sub/Mul/Div by constants so the constants fold into one (算子重排).

Before → after::

    t = Add(x, c1);  y = Add(t, c2)                      =>  y = Add(x, c1 + c2)
    t = Mul(x, c1);  y = Div(t, c2)                      =>  y = Mul(x, c1 / c2)
    t = Sub(c1, x);  y = Add(t, c2)                      =>  y = Sub(c1 + c2, x)
    t = Mul(x, c1); u = Add(t, c2); v = Mul(u, c3); y = Add(v, c4)
                                                         =>  t = Mul(x, c1*c3); y = Add(t, c2*c3 + c4)

The last line collapses a BatchNormalization lowered to Mul+Add (scale/shift) followed by
another Mul+Add into one Mul+Add.

Math. Each step is affine in its non-constant input: ``Add(x, c) = 1*x + c``,
``Sub(x, c) = 1*x - c``, ``Sub(c, x) = -1*x + c``, ``Mul(x, c) = c*x + 0``,
``Div(x, c) = (1/c)*x + 0``. Composing ``y2 = m2*(m1*x + s1) + s2`` gives
``y2 = (m1*m2)*x + (m2*s1 + s2)``, so a chain of n steps is ``y = M*x + S``, emitted as one node
when ``M`` is all ones (``Add``), ``S`` all zeros (``Mul``), or ``M`` all minus ones (``Sub(S, x)``),
else as ``Mul`` then ``Add``. ``M`` and ``S`` are computed in float64 (int64 for integer types,
whose wrap-around arithmetic is exactly associative and distributive) and cast to the dtype.

Rounding. For floating types the result may differ from the original in the last bits: the
folded constants are rounded once, and ``x * (1/c)`` rounds twice where ``x / c`` rounded once
(at most about 1 ulp per element). Where an intermediate of the original overflowed,
underflowed or cancelled (``(x + 1e8) - 1e8`` in fp32), the folded form is the more accurate one;
distributing a factor over a sum (``(x + c1) * c2 -> x*c2 + c1*c2``) loses the exactness of a
cancellation ``x ~ -c1``, an error small relative to the output's scale, as compare measures it.

Preconditions (per chain; a failed one leaves the graph as it was):

* each step has one non-constant and one constant input of the same dtype
  (float16/32/64 or an integer type), default domain, and the same graph;
* every intermediate result has exactly one consumer (the next step) and is not a graph output;
* ``Div`` only as ``Div(x, c)`` on floating types (integer division truncates: refused).

Refused, and why:

* constants or folded constants that are not finite (inf/nan would turn ``0*inf`` into NaN, and
  a folded constant may overflow the dtype where the original chain did not);
* a folded constant larger than every constant of the chain (``[C,1] + [1,W]`` would become a
  ``[C,W]`` initializer): folded constants are broadcast to the joint shape of the chain's
  constants, so the output shape never changes, but we do not grow the weights;
* chains whose folded form has as many nodes as the original (``Add`` then ``Mul``), a lone
  ``Div`` by a constant included: turning it into ``Mul(x, 1/c)`` hides the GELU pattern
  ``Erf(Div(x, sqrt 2))`` from onnxruntime's own fusions (measured: BERT-like 4-11 % slower
  at ORT_ENABLE_ALL when it did).
"""

from __future__ import annotations

import collections.abc
import dataclasses

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter import _basics as basics

from modelpress.passes._rewriting import broadcast_shape, unique_names
from modelpress.passes.base import RulesPass
from modelpress.passes.rules import PatternOp, PatternValue, PatternVar, RewriteOp, const_array, producer_of

__all__ = ["FoldConstantChainsPass"]

_FLOATS = frozenset({np.dtype(t) for t in (np.float16, np.float32, np.float64)})
_INTS = frozenset(
    {np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)}
)


@dataclasses.dataclass(frozen=True)
class _Step:
    """One chain step ``y = mul * x + add`` (None: the identity factor/term)."""

    node: ir.Node
    x: ir.Value
    const: np.ndarray
    mul: np.ndarray | None
    add: np.ndarray | None

    @property
    def const_name(self) -> str | None:
        """Name of the constant input, the stem of the folded constants' names."""
        return next((v.name for v in self.node.inputs if v is not None and v is not self.x), None)


@dataclasses.dataclass(frozen=True)
class _Folded:
    """A checked chain and its replacement: ``form`` is add, mul, rsub or mul_add."""

    steps: tuple[_Step, ...]
    form: str
    mul: np.ndarray | None
    add: np.ndarray | None


def _as_step(node: ir.Node) -> _Step | None:
    """``node`` as an affine step in its one non-constant input, or None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Add", "Sub", "Mul", "Div"):
        return None
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is None or b is None:
        return None
    const_a, const_b = const_array(a), const_array(b)
    if const_a is not None and const_b is None:
        c, x, const_first = const_a, b, True
    elif const_b is not None and const_a is None:
        c, x, const_first = const_b, a, False
    else:
        return None  # two constants (fold-constants' work) or none
    if c.dtype not in _FLOATS | _INTS or (x.dtype is not None and x.dtype.numpy() != c.dtype):
        return None
    wide = c.astype(np.float64 if c.dtype in _FLOATS else np.int64)
    if node.op_type == "Add":
        return _Step(node, x, c, None, wide)
    if node.op_type == "Mul":
        return _Step(node, x, c, wide, None)
    if node.op_type == "Sub" and const_first:
        return _Step(node, x, c, -np.ones((), wide.dtype), wide)
    if node.op_type == "Sub":
        return _Step(node, x, c, None, -wide)
    if const_first or c.dtype not in _FLOATS:
        return None  # c / x is not affine; integer x / c truncates
    with np.errstate(divide="ignore"):
        return _Step(node, x, c, 1.0 / wide, None)


def _chain(root: ir.Node) -> tuple[_Step, ...]:
    """The longest chain of steps ending at ``root``, whose intermediates have one consumer."""
    step = _as_step(root)
    if step is None:
        return ()
    steps = [step]
    while True:
        x = steps[0].x
        producer = x.producer()
        if producer is None or producer.graph is not root.graph:
            break
        if x.is_graph_output() or len(x.uses()) != 1:
            break
        previous = _as_step(producer)
        if previous is None or previous.const.dtype != step.const.dtype:
            break
        steps.insert(0, previous)
    return tuple(steps)


def _compose(steps: tuple[_Step, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(M, S)`` with ``chain(x) == M * x + S`` (None: identity), in float64/int64."""
    mul: np.ndarray | None = None
    add: np.ndarray | None = None
    with np.errstate(over="ignore", invalid="ignore"):
        for step in steps:
            if step.mul is not None:
                mul = step.mul if mul is None else mul * step.mul
                add = None if add is None else add * step.mul
            if step.add is not None:
                add = step.add if add is None else add + step.add
    return mul, add


def _output_shape(x: ir.Value, mul: np.ndarray | None, add: np.ndarray | None) -> ir.Shape | None:
    """The broadcast shape of the folded form's output (None when not known)."""
    return broadcast_shape([x.shape, *(a.shape for a in (mul, add) if a is not None)])


def _fold(root: ir.Node) -> _Folded | str:
    """The folded form of the chain ending at ``root``, or why it is refused."""
    steps = _chain(root)
    if not steps:
        return "not an Add/Sub/Mul/Div of one non-constant and one constant of a supported dtype"
    dtype = steps[0].const.dtype
    is_float = dtype in _FLOATS
    if is_float and not all(np.isfinite(s.const).all() for s in steps):
        return "a constant is not finite"
    joint = np.broadcast_shapes(*(s.const.shape for s in steps))
    largest = max(s.const.size for s in steps)
    wide_mul, wide_add = _compose(steps)
    with np.errstate(over="ignore", invalid="ignore"):
        mul = None if wide_mul is None else wide_mul.astype(dtype)
        add = None if wide_add is None else wide_add.astype(dtype)
    if is_float and any(a is not None and not np.isfinite(a).all() for a in (mul, add)):
        return "a folded constant is not finite in the dtype"
    is_one, is_zero = mul is None or bool((mul == 1).all()), add is None or bool((add == 0).all())
    if is_one:
        form, mul, add = "add", None, np.zeros((), dtype) if add is None else add
    elif is_zero:
        form, add = "mul", None
    elif mul is not None and bool((mul == -1).all()):  # mul is not None: is_one is false
        form, mul = "rsub", None
    else:
        form = "mul_add"
    # Broadcast the emitted constants to the chain's joint shape, so the output shape is kept.
    kept = [a for a in (mul, add) if a is not None]
    if np.broadcast_shapes(*(a.shape for a in kept)) != joint:
        if add is not None:
            add = np.broadcast_to(add, np.broadcast_shapes(add.shape, joint)).copy()
        elif mul is not None:  # always here: one of mul and add is kept
            mul = np.broadcast_to(mul, np.broadcast_shapes(mul.shape, joint)).copy()
    if any(a is not None and a.size > largest for a in (mul, add)):
        return f"folded constant of shape {joint} would be larger than every constant of the chain"
    expected, out = _output_shape(steps[0].x, mul, add), root.outputs[0].shape
    if expected is not None and out is not None and list(expected) != list(out):
        return f"folded constants would change the output shape {out} to {expected}"
    nodes = 2 if form == "mul_add" else 1
    if nodes >= len(steps):
        return f"{len(steps)} step(s) fold into {nodes} node(s): nothing gained"
    return _Folded(steps, form, mul, add)


class _FoldConstantChain(RewriteRuleClassBase):
    """The chain of constant Add/Sub/Mul/Div ending at one node -> at most Mul + Add."""

    def __init__(self, op_type: str) -> None:
        super().__init__(name=f"fold_constant_chain_{op_type}")
        self.op_type = op_type

    def pattern(self, op: PatternOp, a: PatternVar, b: PatternVar) -> PatternValue:
        return getattr(op, self.op_type)(a, b, _outputs=["y"])

    def check(
        self, context: basics.MatchContext, a: ir.Value, b: ir.Value, y: ir.Value
    ) -> basics.MatchResult:
        result = basics.MatchResult()
        folded = _fold(producer_of(y))
        if isinstance(folded, str):
            return result.fail(folded, producer_of(y))
        return result

    def rewrite(self, op: RewriteOp, a: ir.Value, b: ir.Value, y: ir.Value) -> ir.Value:
        root = producer_of(y)
        folded = _fold(root)
        assert isinstance(folded, _Folded), folded  # check() accepted this match
        x = folded.steps[0].x
        base = folded.steps[-1].const_name or "chain"
        mul_name, add_name = unique_names(root.graph, [f"{base}_scale", f"{base}_shift"])
        mul = None if folded.mul is None else _initializer(op, folded.mul, mul_name)
        add = None if folded.add is None else _initializer(op, folded.add, add_name)
        if folded.form == "add":
            return op.Add(x, add)
        if folded.form == "mul":
            return op.Mul(x, mul)
        if folded.form == "rsub":
            return op.Sub(add, x)
        assert folded.mul is not None  # the mul_add form has both constants
        scaled = op.Mul(x, mul)
        scaled.type = y.type
        scaled.shape = broadcast_shape([x.shape, folded.mul.shape])
        return op.Add(scaled, add)


def _initializer(op: RewriteOp, array: np.ndarray, name: str) -> ir.Value:
    return op.initializer(ir.tensor(array, name=name), name=name)


class FoldConstantChainsPass(RulesPass):
    """Fold chains of Add/Sub/Mul/Div by constants into one Mul and/or Add (see the module doc)."""

    name = "fold-constant-chains"
    summary = "re-associate Add/Sub/Mul/Div chains with constants so the constants fold into one"

    def rules(self) -> collections.abc.Sequence[RewriteRule]:
        """One rule per op type that can end a chain."""
        return [_FoldConstantChain.rule(t) for t in ("Add", "Sub", "Mul", "Div")]
