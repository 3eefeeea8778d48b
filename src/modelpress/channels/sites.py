"""The constants of a channel group: whether they can be rewritten, and rewriting them.

A site can be rewritten when its tensor is a float constant with C entries along its axis
(or, for a broadcast operand, one entry or none), and, for a weight, no other node uses it.

An initializer that only the site's node uses is given its new tensor under its own name (so
the transformed model names its weights exactly as the original did). A constant that other
nodes share, or a Constant node's output, gets a private copy named after it (``b`` ->
``b_1``); the original is dropped once nothing uses it.
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir

from modelpress.channels.ops import Kind, Site, constant_array, where
from modelpress.passes._rewriting import unique_names

__all__ = ["Transform", "rewrite_sites", "site_problem"]

Transform = collections.abc.Callable[[np.ndarray, Site], np.ndarray]


def rewrite_sites(graph: ir.Graph, sites: collections.abc.Sequence[Site], transform: Transform) -> int:
    """Replace each site's tensor ``t`` by ``transform(t, site)``, rounded to ``t``'s dtype.

    Sites are rewritten in order, each reading the tensor as the previous ones left it (a
    Conv inside one group is both consumer and producer of the same weights).

    Returns:
        How many tensors changed (a transform that leaves the bytes alone writes nothing).
    """
    changed = 0
    for site in sites:
        value = site.node.inputs[site.index]
        old = constant_array(value)
        assert value is not None and old is not None, "sites are checked before they are rewritten"
        new = np.array(transform(old, site), dtype=old.dtype, order="C")  # keeps 0-d arrays 0-d
        if new.shape == old.shape and new.tobytes() == old.tobytes():
            continue
        _write(graph, site, value, new)
        changed += 1
    return changed


def _write(graph: ir.Graph, site: Site, value: ir.Value, array: np.ndarray) -> None:
    if value.is_initializer() and len(value.uses()) == 1 and not value.is_graph_output():
        value.const_value = ir.tensor(array, name=value.name)
        value.shape = ir.Shape(array.shape)
        return
    name = unique_names(graph, [value.name or f"{site.node.name}_constant"])[0]
    copy = ir.Value(
        name=name,
        const_value=ir.tensor(array, name=name),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        shape=ir.Shape(array.shape),
    )
    graph.register_initializer(copy)
    site.node.replace_input_with(site.index, copy)
    if value.uses() or value.is_graph_output():
        return
    if value.is_initializer():
        graph.initializers.pop(value.name)  # type: ignore[arg-type]
    elif (constant := value.producer()) is not None and constant.graph is graph:
        graph.remove(constant, safe=True)


def site_problem(site: Site, channels: int) -> str | None:
    """Why ``site`` cannot be rewritten for ``channels`` channels, or None."""
    value = site.node.inputs[site.index]
    name = value.name if value is not None else None
    label = f"input {site.index} '{name}' of {where(site.node)}"
    array = constant_array(value)
    if value is None or array is None or array.dtype.kind != "f":
        return f"{label} is not a constant float tensor"
    if site.kind is Kind.WEIGHT and (len(value.uses()) != 1 or value.is_graph_output()):
        return f"{label} is a weight shared with another node"
    size = array.shape[site.axis] if -array.ndim <= site.axis < array.ndim else 1
    if size != channels and not (site.kind is Kind.BROADCAST and size == 1):
        return f"{label} has {size} entries along axis {site.axis}, not {channels}"
    return None
