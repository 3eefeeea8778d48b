"""Op-type anonymization: every opaque operator gets a meaningless type in a meaningless domain.

Before -> after (issue 4, step 4)::

    modelpress.opaque::op3(x, W) -> h          q7fk.x2::b9kx0(x, W) -> h
    modelpress.opaque::decoy17(h, D) -> d      m0c1.s4::p2l5m(h, D) -> d
    value_info h: float[2, 16, 32, 32]         (no type for h)

The issue asks that the nodes of one opaque type be split into several disjoint sets, each
with its own anonymous type. Here every opaque node already has a function of its own (its
decoding constants differ), so the split is the finest one: no two nodes share a type, and
counting types says nothing about repeated blocks. The functions are spread over
``domains`` random domains. The types and shapes of the main graph's inner values are
cleared as well: they would give away every layer's width (onnxruntime infers them again
through the inlined functions). Inputs and outputs of the model keep theirs.

Symbols are lowercase letters and digits, so they never equal an ONNX op type (CamelCase).
Not idempotent by design: every run draws new symbols.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from modelpress.passes.base import ModelpressPass

__all__ = ["AnonymizeOpTypesPass"]

logger = logging.getLogger(__name__)

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_SYMBOL = _LETTERS + "0123456789"


class AnonymizeOpTypesPass(ModelpressPass):
    """Rename every model-local function (type and domain) to random symbols.

    Args:
        seed: Seed of the symbols.
        domains: How many anonymous domains the functions are spread over.
    """

    name = "anonymize-op-types"
    summary = "give every opaque operator its own meaningless type and domain"

    def __init__(self, seed: int, *, domains: int = 3) -> None:
        self.seed = seed
        self.domains = domains

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Rename functions and their calls; clear inner value types of the main graph."""
        if not model.functions:
            return ir.passes.PassResult(model, False)
        rng = np.random.default_rng(self.seed)
        taken = {part for identifier in model.functions for part in identifier[:2]}
        domains = [self._symbol(rng, taken, ".") for _ in range(self.domains)]
        renamed: dict[ir.OperatorIdentifier, ir.Function] = {}
        old_domains = {function.domain for function in model.functions.values()}
        function: ir.Function | None
        for identifier, function in model.functions.items():
            function.name = self._symbol(rng, taken)
            function.domain = domains[int(rng.integers(len(domains)))]
            renamed[identifier] = function
        for node in model.graph:
            function = renamed.get(node.op_identifier())
            if function is not None:
                node.op_type, node.domain = function.name, function.domain
        model.functions.clear()
        model.functions.update({f.identifier(): f for f in renamed.values()})
        for domain in old_domains - set(domains):
            model.opset_imports.pop(domain, None)
        model.opset_imports.update({domain: 1 for domain in domains})
        interface = {*model.graph.inputs, *model.graph.outputs}
        for node in model.graph:
            for value in node.outputs:
                if value not in interface:
                    value.type, value.shape = None, None
        logger.info("anonymize-op-types: %d functions in %d domains", len(renamed), len(domains))
        return ir.passes.PassResult(model, True)

    @staticmethod
    def _symbol(rng: np.random.Generator, taken: set[str], separator: str = "") -> str:
        """A fresh symbol: a letter and 3-5 letters or digits (``separator`` splits domains in two)."""
        while True:
            length = int(rng.integers(4, 7))
            chars = [_LETTERS[int(rng.integers(26))]] + [
                _SYMBOL[int(rng.integers(36))] for _ in range(length - 1)
            ]
            if separator:
                chars.insert(length // 2, separator)
            symbol = "".join(chars)
            if symbol not in taken:
                taken.add(symbol)
                return symbol
