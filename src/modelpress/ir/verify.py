"""IR invariants checked around passes: the ONNX checker plus graph well-formedness.

``verify`` is what tests run before and after every pass (STYLE.md §4.7). It raises
``InvalidModelError`` naming the first broken invariant:

* every node input is a graph input, an initializer, the output of an earlier node, or (in a
  subgraph of If/Loop/Scan) a value visible from the enclosing graph at that node;
* value names are unique within each graph (unnamed optional outputs excepted);
* every graph output is produced;
* the same holds inside subgraphs and model-local functions;
* the serialized model passes ``onnx.checker`` (``full=True`` adds strict shape inference).
"""

from __future__ import annotations

import onnx_ir as ir

from modelpress.errors import InvalidModelError, ModelLoadError
from modelpress.ir import io

__all__ = ["verify"]


def verify(model: ir.Model, *, full: bool = False) -> None:
    """Raise ``InvalidModelError`` if ``model`` breaks an IR invariant or the ONNX checker.

    Args:
        model: The model to check; it is not modified.
        full: Also run the checker's strict shape inference.

    Raises:
        InvalidModelError: the first broken invariant, naming the graph, node and value.
    """
    _verify_scope(model.graph, f"graph '{model.graph.name or 'main'}'", outer=frozenset())
    for function in model.functions.values():
        _verify_scope(function, f"function '{function.domain}::{function.name}'", outer=frozenset())
    try:
        io.check_model(model, full=full)
    except ModelLoadError as e:
        raise InvalidModelError(str(e)) from e


def _verify_scope(scope: ir.Graph | ir.Function, label: str, outer: frozenset[int]) -> None:
    """Check one graph or function body; ``outer`` holds ids of values visible from outside."""
    initializers = list(scope.initializers.values()) if isinstance(scope, ir.Graph) else []
    defined = {id(v): v for v in [*scope.inputs, *initializers]}  # an input may be initialized
    known = set(outer) | set(defined)
    names: set[str] = set()
    for value in defined.values():
        _claim_name(names, value, label, "a graph input or initializer")
    for node in scope:
        where = f"{label}, node '{node.name or '<unnamed>'}' ({node.op_type})"
        for index, used in enumerate(node.inputs):
            if used is not None and id(used) not in known:
                raise InvalidModelError(
                    f"{where}: input {index} '{used.name}' is used before it is produced, or is "
                    "produced by no node of this graph or an enclosing one; reorder the nodes "
                    "topologically or reconnect the input"
                )
        for attr in node.attributes.values():
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.GRAPH:
                _verify_scope(attr.value, f"{where}, subgraph '{attr.name}'", frozenset(known))
            elif attr.type == ir.AttributeType.GRAPHS:
                for graph in attr.value:
                    _verify_scope(graph, f"{where}, subgraph '{attr.name}'", frozenset(known))
        for out in node.outputs:
            _claim_name(names, out, where, "an output")
            known.add(id(out))
    for out in scope.outputs:
        if id(out) not in known:
            raise InvalidModelError(
                f"{label}: output '{out.name}' is not produced by any node or input; connect it "
                "to a value of the graph"
            )


def _claim_name(names: set[str], value: ir.Value, where: str, role: str) -> None:
    # Omitted optional outputs have an empty name and may repeat.
    if not value.name:
        return
    if value.name in names:
        raise InvalidModelError(
            f"{where}: value name '{value.name}' ({role}) is defined twice; rename one of them "
            "(ONNX requires unique value names in a graph)"
        )
    names.add(value.name)
