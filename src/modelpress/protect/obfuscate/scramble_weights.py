"""Weight scrambling: store each weight transformed, and undo it inside the opaque operator.

Before -> after (issue 4, step 5; ``_scramble`` has the math)::

    W = <initializer [16,3,3,3]>              W = <initializer [432]: W.flat[p] * s>
    y = f3(x, W)                              y = f3(x, W)
    f3(i0, i1): ... Conv(i0, i1) ...          f3(i0, i1): t = Mul(i1, Constant(1/s))  (*)
                                                          u = Gather(t, Constant(argsort(p)))
                                                          w = Reshape(u, Constant([16,3,3,3]))
                                                          ... Conv(i0, w) ...

(*) When the factors repeat with a period ``L < N``, ``i1`` is reshaped to ``[N/L, L]`` for the
Mul and back to ``[N]``: the library then holds ``L`` factors instead of ``N``.

Each weight gets its own random permutation (or value table) and power-of-two factors, drawn
from ``numpy.random.default_rng(seed)``, redrawn until ``|corr(stored, original)| <= 0.05``.
The inverse (``Constant`` nodes) lives in the function, that is in the operator library, so
the model file alone holds neither the weights nor their shapes. Decoding is exact: outputs
are bitwise equal. At ``ORT_ENABLE_ALL``, onnxruntime folds ``Mul``/``Gather``/``Reshape``
of constants when it creates the session, so decoding costs nothing per run.

Which weights: every initializer of the main graph whose only users are calls of model-local
functions (after ``compress-subgraphs``: all of them), whose dtype numpy computes with. An
initializer that is also a graph input or output is part of the interface and left alone.
Run once; a second run would scramble the scrambled weights again (not idempotent by design).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from modelpress.passes.base import ModelpressPass
from modelpress.protect.obfuscate._scramble import Scrambled, can_scramble, scramble

__all__ = ["ScrambleWeightsPass"]

logger = logging.getLogger(__name__)


class ScrambleWeightsPass(ModelpressPass):
    """Store every weight of an opaque operator scrambled; decode it inside the operator.

    Args:
        seed: Seed of the permutations and factors; the same seed gives the same model.
        max_correlation: The largest ``|corr(stored, original)|`` accepted for a draw.
    """

    name = "scramble-weights"
    summary = "store weights permuted and scaled; the inverse goes into the opaque operator"

    def __init__(self, seed: int, *, max_correlation: float = 0.05) -> None:
        self.seed = seed
        self.max_correlation = max_correlation

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Scramble each eligible initializer and patch the functions that take it."""
        rng = np.random.default_rng(self.seed)
        calls = _single_calls(model)
        scrambled = skipped = 0
        for value in list(model.graph.initializers.values()):
            uses = value.uses()
            tensor = value.const_value
            eligible = (
                uses
                and tensor is not None
                and not value.is_graph_input()
                and not value.is_graph_output()
                and all(user in calls for user, _ in uses)
            )
            array = tensor.numpy() if eligible else None  # type: ignore[union-attr]
            if array is None or not can_scramble(array):
                skipped += 1
                continue
            result = scramble(array, rng, max_correlation=self.max_correlation)
            value.const_value = ir.tensor(result.stored, name=value.name)
            value.shape = ir.Shape(result.stored.shape)
            for user, index in uses:
                _decode_in_function(calls[user], index, result)
            scrambled += 1
        logger.info("scramble-weights: %d weights scrambled, %d left as they were", scrambled, skipped)
        return ir.passes.PassResult(model, bool(scrambled))


def _single_calls(model: ir.Model) -> dict[ir.Node, ir.Function]:
    """Main-graph nodes calling a model-local function that no other node calls."""
    calls: dict[ir.Node, ir.Function] = {}
    counts: dict[ir.OperatorIdentifier, int] = {}
    for node in model.graph:
        identifier = node.op_identifier()
        counts[identifier] = counts.get(identifier, 0) + 1
        if identifier in model.functions:
            calls[node] = model.functions[identifier]
    return {node: f for node, f in calls.items() if counts[node.op_identifier()] == 1}


def _decode_in_function(function: ir.Function, index: int, scrambled: Scrambled) -> None:
    """Prepend Mul/Gather/Reshape decoding function input ``index`` and use their result."""
    formal = function.inputs[index]
    users = list(formal.uses())
    formal.shape = ir.Shape(scrambled.stored.shape)
    nodes: list[ir.Node] = []

    def constant(array: np.ndarray, role: str) -> ir.Value:
        node = ir.node("Constant", [], attributes={"value": ir.tensor(array)}, name=f"{formal.name}_{role}")
        node.outputs[0].name = f"{formal.name}_{role}"
        nodes.append(node)
        return node.outputs[0]

    flat = formal
    if scrambled.inverse_scale is not None:
        size, length = scrambled.stored.size, scrambled.inverse_scale.size
        if length != size:  # the factors repeat every ``length`` elements: Mul row by row
            rows = constant(np.array([size // length, length], dtype=np.int64), "rows")
            nodes.append(ir.node("Reshape", [flat, rows], name=f"{formal.name}_rows"))
            flat = nodes[-1].outputs[0]
        scale = constant(scrambled.inverse_scale, "scale")
        nodes.append(ir.node("Mul", [flat, scale], name=f"{formal.name}_unscale"))
        flat = nodes[-1].outputs[0]
        if length != size:
            back = constant(np.array([size], dtype=np.int64), "flat")
            nodes.append(ir.node("Reshape", [flat, back], name=f"{formal.name}_flat"))
            flat = nodes[-1].outputs[0]
    positions = constant(scrambled.index, "index")
    nodes.append(ir.node("Gather", [flat, positions], attributes={"axis": 0}, name=f"{formal.name}_gather"))
    decoded = nodes[-1].outputs[0]
    if len(scrambled.shape) != 1:
        shape = constant(np.array(scrambled.shape, dtype=np.int64), "shape")
        nodes.append(ir.node("Reshape", [decoded, shape], name=f"{formal.name}_reshape"))
        decoded = nodes[-1].outputs[0]
    decoded.name = f"{formal.name}_decoded"
    decoded.type = formal.type
    decoded.shape = ir.Shape(scrambled.shape)
    body = list(function)
    if body:
        function.insert_before(body[0], nodes)
    else:
        function.extend(nodes)
    for user, position in users:
        user.replace_input_with(position, decoded)
    for position, output in enumerate(function.outputs):
        if output is formal:
            function.outputs[position] = decoded
