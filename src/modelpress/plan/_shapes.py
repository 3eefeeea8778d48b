"""Concrete shapes for every value of a model, dynamic dims bound to sizes.

The model is cloned (tensors are shared, not copied), its graph inputs get concrete shapes,
every node output's recorded shape is cleared (so that stale symbolic shapes written by the
exporter cannot win over the bound ones), and onnx_ir's ``ShapeInferencePass`` (ONNX shape
inference with data propagation, non-strict, so one failing node does not lose the rest)
fills them in again. A value whose shape still has a symbolic or missing dim afterwards is
reported by the cost model as unknown, never treated as empty.
"""

from __future__ import annotations

import collections.abc
import dataclasses

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from modelpress.errors import UsageError
from modelpress.runtime.feeds import DEFAULT_DIM

__all__ = ["BoundDims", "bind_and_infer", "static_shape"]


@dataclasses.dataclass(frozen=True)
class BoundDims:
    """How dynamic dims of the graph inputs were sized.

    Attributes:
        sizes: Size given to each named dynamic dim that occurs in a graph input.
        batch: The batch size: the size of the leading dim of the graph inputs, or None when
            no graph input has a dynamic leading dim (the model's batch is static).
        fallback: Size of every dynamic dim not named in ``sizes``.
    """

    sizes: dict[str, int]
    batch: int | None
    fallback: int


def _check_sizes(dims: collections.abc.Mapping[str, int]) -> None:
    for name, size in dims.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UsageError(f"dim '{name}' bound to {size!r}; give a size >= 1")


def bind_and_infer(
    model: ir.Model, dims: collections.abc.Mapping[str, int] | None = None, *, batch: int | None = None
) -> tuple[ir.Model, BoundDims]:
    """Clone ``model``, bind its dynamic input dims and infer every shape.

    Args:
        model: The model; it is not modified.
        dims: Sizes by dim name (``{"sequence": 128}``); ``"*"`` sizes every other dynamic
            dim. Unbound dims get ``runtime.feeds.DEFAULT_DIM``, as random feeds do.
        batch: Size of the leading dim of every graph input whose leading dim is dynamic,
            unless ``dims`` names that dim explicitly.

    Returns:
        The inferred clone, and how the dims were bound.

    Raises:
        UsageError: a size is not a positive int.
    """
    bound = dict(dims or {})
    _check_sizes(bound)
    if batch is not None:
        _check_sizes({"batch": batch})
    fallback = bound.pop("*", DEFAULT_DIM)
    clone = model.clone()
    graph = clone.graph
    used: dict[str, int] = {}
    leading: set[int] = set()
    for value in graph.inputs:
        if value.name in graph.initializers or value.shape is None:
            continue
        concrete = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int) and dim >= 0:
                concrete.append(dim)
                if axis == 0:
                    leading.add(dim)
                continue
            name = None if isinstance(dim, int) else dim.value
            if name is not None and name in bound:
                size = bound[name]
            elif axis == 0 and batch is not None:
                size = batch
            else:
                size = fallback
            if name is not None:
                used[name] = size
            concrete.append(size)
        value.shape = ir.Shape(concrete)
    for node in graph:
        for output in node.outputs:
            output.shape = None
    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(clone)
    dynamic_batch = _leading_dynamic_size(model, bound, batch, fallback)
    return clone, BoundDims(used, dynamic_batch, fallback)


def _leading_dynamic_size(
    model: ir.Model, bound: dict[str, int], batch: int | None, fallback: int
) -> int | None:
    """The size bound to the first dynamic leading dim of the graph inputs, if any."""
    for value in model.graph.inputs:
        if value.name in model.graph.initializers or value.shape is None or len(value.shape) == 0:
            continue
        dim = value.shape[0]
        if isinstance(dim, int) and dim >= 0:
            continue
        name = None if isinstance(dim, int) else dim.value
        if name is not None and name in bound:
            return bound[name]
        return batch if batch is not None else fallback
    return None


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of ``value`` as ints, or None when its rank or any dim is unknown."""
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(value.const_value.shape.numpy())
    if value.shape is None:
        return None
    dims = []
    for dim in value.shape:
        if not isinstance(dim, int) or dim < 0:
            return None
        dims.append(dim)
    return tuple(dims)
