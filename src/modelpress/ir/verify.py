"""IR invariants checked around passes: the ONNX checker plus graph well-formedness.

``verify`` is what tests run before and after every pass (STYLE.md §4.7). It raises
``InvalidModelError`` naming the first broken invariant:

* every node input is a graph input, an initializer, or the output of an earlier node
  (topological order, no dangling uses);
* value names are unique within the main graph;
* every graph output is produced;
* the serialized model passes ``onnx.checker`` (``full=True`` adds strict shape inference).
"""

from __future__ import annotations

import onnx_ir as ir

from modelpress.errors import InvalidModelError, ModelLoadError
from modelpress.ir import io

__all__ = ["verify"]


def verify(model: ir.Model, *, full: bool = False) -> None:
    """Raise ``InvalidModelError`` if ``model`` breaks an IR invariant or the ONNX checker."""
    graph = model.graph
    known: set[int] = {id(v) for v in graph.inputs} | {id(v) for v in graph.initializers.values()}
    names: set[str] = set()
    for value in [*graph.inputs, *graph.initializers.values()]:
        if value.name in names and value.name not in graph.initializers:
            raise InvalidModelError(f"value name '{value.name}' is defined twice")
        names.add(value.name or "")
    for node in graph:
        for index, value in enumerate(node.inputs):
            if value is not None and id(value) not in known and not _is_outer_scope(value, graph):
                raise InvalidModelError(
                    f"node '{node.name}' ({node.op_type}) input {index} '{value.name}' is used before "
                    "it is produced, or is produced by no node of this graph"
                )
        for out in node.outputs:
            if out.name in names:
                raise InvalidModelError(f"value name '{out.name}' (output of '{node.name}') is defined twice")
            names.add(out.name or "")
            known.add(id(out))
    for out in graph.outputs:
        if id(out) not in known:
            raise InvalidModelError(f"graph output '{out.name}' is not produced by any node or input")
    try:
        io.check_model(model, full=full)
    except ModelLoadError as e:
        raise InvalidModelError(str(e)) from e


def _is_outer_scope(value: ir.Value, graph: ir.Graph) -> bool:
    producer = value.producer()
    return producer is not None and producer.graph is not graph
