"""Replace every node and value name by a meaningless symbol; drop doc strings and metadata.

Before -> after (names are what exporters write: module paths, parameter names)::

    conv1.weight = <initializer>                 t1c = <initializer>
    /layer1/conv1/Conv(image, conv1.weight)      n7(image, t1c) -> t3a
      -> /layer1/conv1/Conv_output_0
    doc_string "pytorch stack trace ..."         (none)
    metadata_props {"training_run": "..."}       (none)

What is renamed: every node, every node output, every initializer, in the main graph, in
If/Loop/Scan bodies (their inputs and outputs too: they bind by position) and in model-local
functions; the graph names. Symbols are a letter (``n`` for nodes, ``t`` for values) and a
base-36 number; the numbers are a random permutation (``numpy.random.default_rng(seed)``)
so they do not even give the topological order away, and none equals an original name.
Cleared: the doc strings of the model, graphs, functions, nodes, values and attributes; the
``metadata_props`` of all of them; the names of tensors inside attributes (Constant values).

Kept by default: the model's interface, i.e. the names of the main graph's inputs and outputs
(callers feed and fetch by name; an initializer that is also listed as a graph input is part
of the interface too, since a caller may override it). ``rename_interface=True`` renames
those as well: the model then no longer runs with the original feed names. Also kept: op
types and domains (``anonymize-op-types`` renames those of opaque operators, which live in an
operator library), attribute names, the producer name and version, and the opset imports.

The function of the model is untouched (same nodes, same tensors), so outputs are bitwise
equal. Not idempotent by design: every run draws new symbols.
"""

from __future__ import annotations

import collections.abc
import logging

import numpy as np
import onnx_ir as ir

from modelpress.passes.base import ModelpressPass

__all__ = ["AnonymizeNamesPass", "original_names"]

logger = logging.getLogger(__name__)

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _scopes(model: ir.Model) -> list[ir.Graph | ir.Function]:
    """The main graph, every subgraph and every model-local function (and their subgraphs)."""
    scopes: list[ir.Graph | ir.Function] = list(model.graphs())
    for function in model.functions.values():
        scopes.append(function)
        scopes.extend(function.subgraphs())
    return scopes


def _values(scope: ir.Graph | ir.Function) -> collections.abc.Iterator[ir.Value]:
    yield from scope.inputs
    if isinstance(scope, ir.Graph):
        yield from scope.initializers.values()
    for node in scope:
        yield from node.outputs


def original_names(model: ir.Model) -> set[str]:
    """Every node, value and graph name in ``model`` (for leak checks after anonymizing)."""
    names: set[str] = set()
    for scope in _scopes(model):
        names.update(v.name for v in _values(scope) if v.name)
        names.update(node.name for node in scope if node.name)
        if isinstance(scope, ir.Graph) and scope.name:
            names.add(scope.name)
    return names


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = _DIGITS[digit] + digits
        if not number:
            return digits


class AnonymizeNamesPass(ModelpressPass):
    """Rename nodes and values to random meaningless symbols, and drop doc strings and metadata.

    Args:
        seed: Seed of the symbol assignment; the same seed gives the same model.
        rename_interface: Also rename the main graph's inputs and outputs (the model then
            needs new feed names; off by default).
    """

    name = "anonymize-names"
    summary = "replace node and value names by meaningless symbols; drop doc strings and metadata"

    def __init__(self, seed: int, *, rename_interface: bool = False) -> None:
        self.seed = seed
        self.rename_interface = rename_interface

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, rename_interface={self.rename_interface})"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Rename, then clear; ``changed`` says whether any name or text was replaced."""
        kept = set() if self.rename_interface else {*model.graph.inputs, *model.graph.outputs}
        # Unnamed values stay unnamed: an empty output name means "optional output omitted".
        named = (v for scope in _scopes(model) for v in _values(scope) if v.name and v not in kept)
        values = list(dict.fromkeys(named))
        nodes = [node for scope in _scopes(model) for node in scope]
        taken = original_names(model)
        symbols = self._symbols(len(values) + len(nodes), taken)
        # Initializers are renamed in their graph's table too: free every name first (under a
        # prefix no original name has), so no symbol collides with a name still to be replaced.
        prefix = "~"
        while any(name.startswith(prefix) for name in taken):
            prefix += "~"
        for value, symbol in zip(values, symbols, strict=False):
            value.name = f"{prefix}{symbol}"
        for value, symbol in zip(values, symbols, strict=False):
            value.name = f"t{symbol}"
        changed = bool(values)
        for node, symbol in zip(nodes, symbols[len(values) :], strict=True):
            changed |= node.name != f"n{symbol}"
            node.name = f"n{symbol}"
        for scope in _scopes(model):
            if isinstance(scope, ir.Graph):
                changed |= scope.name not in (None, "g")
                scope.name = "g"
        changed |= _clear_text(model)
        logger.info("anonymize-names: %d values and %d nodes renamed", len(values), len(nodes))
        return ir.passes.PassResult(model, changed)

    def _symbols(self, count: int, taken: set[str]) -> list[str]:
        """``count`` distinct base-36 numbers in random order; ``t``/``n`` + symbol is never in ``taken``."""
        rng = np.random.default_rng(self.seed)
        numbers = rng.permutation(count + len(taken))  # room to skip every clash with ``taken``
        symbols = [_base36(int(k)) for k in numbers]
        return [s for s in symbols if f"t{s}" not in taken and f"n{s}" not in taken][:count]


def _clear_text(model: ir.Model) -> bool:
    """Drop doc strings, metadata_props and attribute tensor names; True when any was set."""
    owners: list[ir.Model | ir.Graph | ir.Function | ir.Value | ir.Node | ir.Attr] = [model, *_scopes(model)]
    for scope in _scopes(model):
        owners.extend(_values(scope))
        for node in scope:
            owners.append(node)
            owners.extend(node.attributes.values())
    found = False
    for owner in owners:
        if getattr(owner, "doc_string", None):
            owner.doc_string = None
            found = True
        props = getattr(owner, "metadata_props", None)
        if props:
            props.clear()
            found = True
        if isinstance(owner, ir.Attr) and owner.type in (ir.AttributeType.TENSOR, ir.AttributeType.TENSORS):
            tensors = [owner.value] if owner.type == ir.AttributeType.TENSOR else list(owner.value)
            for tensor in tensors:
                if tensor.name:
                    tensor.name = None
                    found = True
    return found
