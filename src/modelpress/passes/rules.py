"""Helpers shared by rewrite rules written on ``onnxscript.rewriter`` patterns."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

__all__ = [
    "PatternOp",
    "PatternValue",
    "PatternVar",
    "RewriteOp",
    "checked_const",
    "const_array",
    "int_attr",
    "producer_of",
    "same_shape",
    "static_shape",
]

# Types of the hooks of an onnxscript ``RewriteRuleClassBase``, which onnxscript leaves
# unannotated: ``pattern(self, op: PatternOp, x: PatternVar, ...) -> PatternValue``,
# ``check(self, context: MatchContext, x: ir.Value, ...) -> MatchResult`` and
# ``rewrite(self, op: RewriteOp, x: ir.Value, ...) -> ir.Value``. ``op.Conv(...)`` is untyped
# in both builders (see the passes override in pyproject.toml's [tool.mypy]).
PatternOp = pattern.OpsetPatternBuilder
PatternVar = pattern.Var
if TYPE_CHECKING:
    # onnxscript internals, for the type checker only: they move between onnxscript releases.
    # The engine passes a TapeBuilder; its public base RewriterContext has no ``op.Conv`` sugar.
    from onnxscript.rewriter._context import TapeBuilder as RewriteOp
    from onnxscript.rewriter._pattern_ir import ValuePattern as PatternValue
else:  # used in annotations only, which are never evaluated (``from __future__ import annotations``)
    RewriteOp = PatternValue = object


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant array behind ``value`` (initializer or folded Constant), else None.

    Graph inputs that are also initializers are not constants: a user may override them.
    """
    if value is None or value.is_graph_input():
        return None
    tensor = value.const_value
    return None if tensor is None else tensor.numpy()


def checked_const(value: ir.Value | None) -> np.ndarray:
    """``const_array(value)`` for a value the rule's ``check`` already found constant."""
    array = const_array(value)
    assert array is not None, "check() accepted a match whose constant input is not constant"
    return array


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of ``value`` when every dimension is a known integer, else None."""
    if value is None or value.shape is None:
        return None
    dims = tuple(d for d in value.shape if isinstance(d, int))
    return dims if len(dims) == len(value.shape) else None


def same_shape(a: ir.Value | None, b: ir.Value | None) -> bool:
    """Whether ``a`` and ``b`` surely have one shape.

    Same rank, and each dim the same integer or the same named symbolic dim (unnamed or
    unknown dims never match).
    """
    if a is None or b is None or a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    for x, y in zip(a.shape, b.shape, strict=True):
        if isinstance(x, int) or isinstance(y, int):
            if x != y:
                return False
        elif x.value is None or x.value != y.value:
            return False
    return True


def producer_of(value: ir.Value) -> ir.Node:
    """The node that computes ``value``, for values a pattern bound as a node output.

    A pattern's ``_outputs`` names bind node outputs, so the node always exists.
    """
    node = value.producer()
    assert node is not None, f"value '{value.name}' is bound as a node output but has no producer"
    return node


def int_attr(node: ir.Node, name: str, default: int) -> int:
    """An INT attribute of ``node``, or the ONNX default the caller states."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()
