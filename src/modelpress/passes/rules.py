"""Helpers shared by rewrite rules written on ``onnxscript.rewriter`` patterns."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["const_array", "int_attr", "same_shape", "static_shape"]


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant array behind ``value`` (initializer or folded Constant), else None.

    Graph inputs that are also initializers are not constants: a user may override them.
    """
    if value is None or value.is_graph_input():
        return None
    tensor = value.const_value
    return None if tensor is None else tensor.numpy()


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of ``value`` when every dimension is a known integer, else None."""
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape)
    if not all(isinstance(d, int) for d in dims):
        return None
    return dims  # type: ignore[return-value]


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


def int_attr(node: ir.Node, name: str, default: int) -> int:
    """An INT attribute of ``node``, or the ONNX default the caller states."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()
