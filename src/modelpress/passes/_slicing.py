"""ONNX ``Slice`` semantics on constants, and which operands of a broadcasting op a Slice hits.

Pure functions used by ``reorder_slices``; nothing here mutates a graph.

``slice_indices`` reproduces the index computation of the ONNX ``Slice`` spec (opset >= 10)
for one axis of size ``dim``: negative ``start``/``end`` get ``dim`` added, then for
``step > 0`` both are clamped to ``[0, dim]``, for ``step < 0`` ``start`` to ``[0, dim-1]``
and ``end`` to ``[-1, dim-1]``; the selected indices are ``range(start, end, step)``. This
covers ``INT64_MAX``/``INT64_MIN`` ends and out-of-range starts (Python ints do not overflow).

``plan_broadcast_slice`` decides, for ``y = f(a, b, ...)`` with numpy broadcasting (operands
right-aligned to the output rank R) and ``Slice(y)`` along output axes A, which operands must
be sliced along which axes so that ``f(a', b', ...) == Slice(y)``. Along an axis ``ax`` of
output size S, an operand whose dim equals S *carries* the axis and takes the same slice; an
operand whose dim is 1 (and S != 1), or that lacks the axis (lower rank), is broadcast and
stays as it is, since broadcasting a size-1 dim against the sliced length L gives L (also for
L = 0). When every operand present has size 1 the Slice keeps or drops that single element:
keeping it needs no slicing at all; dropping it (empty result) is refused.
"""

from __future__ import annotations

import collections.abc
import dataclasses

import numpy as np
import onnx_ir as ir

from modelpress.passes.rules import const_array

__all__ = [
    "BroadcastPlan",
    "SliceAxis",
    "plan_broadcast_slice",
    "read_slice",
    "slice_constant",
    "slice_indices",
]


@dataclasses.dataclass(frozen=True)
class SliceAxis:
    """One axis of a Slice: ``axis`` normalized to ``[0, rank)``, the raw start/end/step."""

    axis: int
    start: int
    end: int
    step: int


@dataclasses.dataclass(frozen=True)
class BroadcastPlan:
    """Which operands of a broadcasting op to slice, along which output axes.

    Attributes:
        rank: The output rank R the axes refer to.
        carrier: The one non-constant operand that gets a ``Slice`` node, or None.
        carrier_axes: The output axes the carrier is sliced along.
        constants: ``(operand, axes)`` for each constant operand sliced offline.
    """

    rank: int
    carrier: ir.Value | None
    carrier_axes: tuple[SliceAxis, ...]
    constants: tuple[tuple[ir.Value, tuple[SliceAxis, ...]], ...]


def slice_indices(start: int, end: int, step: int, dim: int) -> np.ndarray:
    """The indices ONNX ``Slice`` selects along one axis of size ``dim``."""
    if dim == 0:
        return np.zeros(0, dtype=np.int64)
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return np.arange(start, end, step, dtype=np.int64)


def slice_constant(array: np.ndarray, axes: tuple[SliceAxis, ...], rank: int) -> np.ndarray:
    """Apply ``axes`` (output axes of rank ``rank``) to ``array``, right-aligned as broadcasting does."""
    for item in axes:
        k = item.axis - (rank - array.ndim)
        array = np.take(array, slice_indices(item.start, item.end, item.step, array.shape[k]), axis=k)
    return np.ascontiguousarray(array)


def read_slice(node: ir.Node, rank: int) -> list[SliceAxis] | str:
    """The constant parameters of Slice ``node`` on data of rank ``rank``, or why they are unusable."""
    inputs = [*node.inputs, None, None][:5]
    starts, ends = const_array(inputs[1]), const_array(inputs[2])
    if starts is None or ends is None:
        return "Slice starts/ends are not constant"
    count = starts.size
    axes = np.arange(count) if inputs[3] is None else const_array(inputs[3])
    steps = np.ones(count, dtype=np.int64) if inputs[4] is None else const_array(inputs[4])
    if axes is None or steps is None:
        return "Slice axes/steps are not constant"
    if not (ends.size == axes.size == steps.size == count):
        return "Slice starts/ends/axes/steps differ in length"
    result = []
    for axis, start, end, step in zip(
        axes.reshape(-1).tolist(),
        starts.reshape(-1).tolist(),
        ends.reshape(-1).tolist(),
        steps.reshape(-1).tolist(),
        strict=True,
    ):
        if not -rank <= axis < rank or step == 0:
            return f"Slice axis {axis} out of range for rank {rank}, or step 0"
        result.append(SliceAxis(axis % rank, int(start), int(end), int(step)))
    if len({item.axis for item in result}) != len(result):
        return "Slice axes repeat"
    return result


def _carriers_on_axis(
    column: collections.abc.Sequence[tuple[ir.Value, object]], item: SliceAxis
) -> list[ir.Value] | str:
    """The operands that must take the slice along ``item.axis`` (``column``: operand, dim)."""
    big = {d for _, d in column if isinstance(d, int) and d != 1}
    symbolic = [v for v, d in column if not isinstance(d, int)]
    if len(big) > 1:
        return f"operands disagree on the size of axis {item.axis}: {sorted(big)}"
    if big:
        if symbolic:
            # The symbolic dim is 1 (broadcast) or equal: we cannot tell which, so neither
            # leaving it nor slicing it is known to be right.
            return f"cannot tell whether '{symbolic[0].name}' broadcasts along axis {item.axis}"
        size = big.pop()
        return [v for v, d in column if d == size]
    if len(symbolic) > 1:
        return f"'{symbolic[0].name}' and '{symbolic[1].name}' both have symbolic dims on axis {item.axis}"
    if symbolic:
        return symbolic
    if slice_indices(item.start, item.end, item.step, 1).size == 1:
        return []  # every operand has size 1 and the Slice keeps that element: nothing to do
    return f"the Slice selects no element along axis {item.axis}"


def plan_broadcast_slice(slice_node: ir.Node, operands: list[ir.Value]) -> BroadcastPlan | str:
    """Plan slicing ``operands`` of a broadcasting op instead of its output; a reason if refused.

    Refused: an operand of unknown rank, non-constant Slice parameters, dims whose broadcast
    role cannot be decided statically, all operands constant (fold-constants' job), or more
    than one distinct non-constant operand to slice (the move would duplicate the Slice).
    """
    distinct = list({id(v): v for v in operands}.values())  # Mul(x, x) slices x once
    shapes: dict[int, tuple[int | ir.SymbolicDim, ...]] = {}
    constant_ids = set()
    for value in distinct:
        array = const_array(value)
        if array is not None:
            shapes[id(value)] = array.shape
            constant_ids.add(id(value))
        elif value.shape is None:
            return f"rank of operand '{value.name}' is unknown"
        else:
            shapes[id(value)] = tuple(value.shape)
    if len(constant_ids) == len(distinct):
        return "every operand is constant (left to fold-constants)"
    rank = max(len(s) for s in shapes.values())
    axes = read_slice(slice_node, rank)
    if isinstance(axes, str):
        return axes
    carried: dict[int, list[SliceAxis]] = {id(v): [] for v in distinct}
    for item in axes:
        column = []
        for value in distinct:
            shape = shapes[id(value)]
            k = item.axis - (rank - len(shape))
            if k >= 0:
                column.append((value, shape[k]))
        carriers = _carriers_on_axis(column, item)
        if isinstance(carriers, str):
            return carriers
        for value in carriers:
            carried[id(value)].append(item)
    moving = [v for v in distinct if id(v) not in constant_ids and carried[id(v)]]
    if len(moving) > 1:
        names = ", ".join(f"'{v.name}'" for v in moving)
        return f"non-constant operands {names} would each need a Slice"
    constants = tuple(
        (v, tuple(carried[id(v)])) for v in distinct if id(v) in constant_ids and carried[id(v)]
    )
    carrier = moving[0] if moving else None
    return BroadcastPlan(rank, carrier, tuple(carried[id(carrier)]) if carrier else (), constants)
