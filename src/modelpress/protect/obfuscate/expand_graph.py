"""Graph expansion: decoy operators and fake edges that change no result and cost no time.

Before -> after (issue 4, step 3; ``f`` are opaque operators from ``compress-subgraphs``)::

    a = f1(x, W1)                    a, e = f1(x, W1)              e: an inner value of f1 exposed
    b = f2(a, W2)                    d = f9(a, D)                  f9: a decoy, D random "weights"
    y = f3(b, W3)                    b = f2(a, W2, d, x)           d, x: inputs f2 ignores
                                     y = f3(b, W3, e)              e: an input f3 ignores

Three kinds of noise, each drawn with ``numpy.random.default_rng(seed)``:

* *decoys* (``decoys`` per opaque node, rounded up): a new opaque operator taking a real
  activation and a random initializer shaped like a weight, whose body decodes that
  initializer the way ``scramble-weights`` decodes real ones; its output feeds a later real
  operator as an ignored input. The body depends on constants only, so onnxruntime folds it
  away at session creation (``ORT_ENABLE_BASIC`` and up);
* *fake outputs* (probability ``fake_outputs`` per operator): an intermediate value of the
  function is also returned, and a later operator takes it as an ignored input;
* *fake inputs* (probability ``fake_inputs`` per operator): an earlier value (an activation,
  a graph input or another operator's weights) is passed in and ignored.

An ignored input is a function input no node of the body uses: after onnxruntime inlines the
function it is simply gone. Every new edge goes from an earlier to a later node of the
topological order, so the graph stays acyclic. Outputs are bitwise equal; the transport mode
(``restore``) removes the decoys again. Not idempotent: every run adds more noise.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx_ir as ir

from modelpress.passes.base import ModelpressPass

__all__ = ["ExpandGraphPass"]

logger = logging.getLogger(__name__)


class ExpandGraphPass(ModelpressPass):
    """Add decoy operators, fake outputs and ignored inputs to the opaque operators.

    Args:
        seed: Seed of every random choice.
        decoys: Decoy operators per opaque operator.
        fake_outputs: Probability that an operator returns one inner value more.
        fake_inputs: Probability that an operator takes one ignored input more.
    """

    name = "expand-graph"
    summary = "add decoy operators, fake outputs and ignored inputs"

    def __init__(
        self, seed: int, *, decoys: float = 0.25, fake_outputs: float = 0.3, fake_inputs: float = 0.5
    ) -> None:
        self.seed = seed
        self.decoys = decoys
        self.fake_outputs = fake_outputs
        self.fake_inputs = fake_inputs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Add the noise; ``changed`` when any edge or node was added."""
        rng = np.random.default_rng(self.seed)
        model.graph.sort()
        calls = [node for node in model.graph if node.op_identifier() in model.functions]
        if len(calls) < 2:
            return ir.passes.PassResult(model, False)
        added = 0
        for _ in range(math.ceil(self.decoys * len(calls))):
            target = int(rng.integers(1, len(calls)))
            added += self._add_decoy(model, calls, target, rng)
        for position, node in enumerate(calls[:-1]):
            if rng.random() < self.fake_outputs:
                consumer = calls[int(rng.integers(position + 1, len(calls)))]
                added += _expose_inner_value(model, node, consumer, rng)
        for position, node in enumerate(calls[1:], start=1):
            if rng.random() < self.fake_inputs:
                added += _add_ignored_input(model, node, _available(model, calls[:position], rng))
        model.graph.sort()
        logger.info("expand-graph: %d decoy nodes and fake edges added", added)
        return ir.passes.PassResult(model, bool(added))

    def _add_decoy(self, model: ir.Model, calls: list[ir.Node], target: int, rng: np.random.Generator) -> int:
        """A decoy before ``calls[target]`` reading an earlier activation; its output is ignored."""
        consumer = calls[target]
        source = _available(model, calls[:target], rng, initializers=False)
        if source is None:
            return 0
        size = int(rng.choice([16, 32, 64, 128, 256]))
        weights = ir.Value(
            name=f"decoy{len(model.functions)}_w",
            type=ir.TensorType(ir.DataType.FLOAT),
            shape=ir.Shape([size]),
        )
        weights.const_value = ir.tensor(rng.standard_normal(size).astype(np.float32), name=weights.name)
        model.graph.register_initializer(weights)
        function = _decoy_function(
            f"decoy{len(model.functions)}", consumer.domain, size, model.graph.opset_imports, rng
        )
        model.functions[function.identifier()] = function
        decoy = ir.node(
            function.name, [source, weights], domain=function.domain, name=f"{function.name}_call"
        )
        decoy.outputs[0].name = f"{function.name}_out"
        model.graph.insert_before(consumer, decoy)
        return 1 + _add_ignored_input(model, consumer, decoy.outputs[0])


def _decoy_function(
    name: str, domain: str, size: int, opsets: dict[str, int], rng: np.random.Generator
) -> ir.Function:
    """``f(a, w) = Relu(Gather(w * s, i))``: looks like a weight decode; ignores ``a``."""
    activation, weights = ir.Value(name=f"{name}_in0"), ir.Value(name=f"{name}_in1")
    scale = ir.node(
        "Constant", [], attributes={"value": ir.tensor(np.exp2(rng.integers(-2, 3, size)).astype(np.float32))}
    )
    index = ir.node("Constant", [], attributes={"value": ir.tensor(rng.permutation(size).astype(np.int32))})
    scaled = ir.node("Mul", [weights, scale.outputs[0]])
    gathered = ir.node("Gather", [scaled.outputs[0], index.outputs[0]], attributes={"axis": 0})
    relu = ir.node("Relu", [gathered.outputs[0]])
    for k, node in enumerate((scale, index, scaled, gathered, relu)):
        node.name, node.outputs[0].name = f"{name}_n{k}", f"{name}_v{k}"
    body = ir.Graph(
        [activation, weights],
        [relu.outputs[0]],
        nodes=[scale, index, scaled, gathered, relu],
        opset_imports=dict(opsets),
        name=name,
    )
    return ir.Function(domain, name, graph=body, attributes=[])


def _available(
    model: ir.Model, earlier: list[ir.Node], rng: np.random.Generator, *, initializers: bool = True
) -> ir.Value | None:
    """A random value available after ``earlier``: a graph input, an output of ``earlier``, a weight."""
    values = [v for v in model.graph.inputs if v.type is not None]
    values += [v for node in earlier for v in node.outputs if v.name]
    if initializers:
        values += list(model.graph.initializers.values())
    return values[int(rng.integers(len(values)))] if values else None


def _add_ignored_input(model: ir.Model, node: ir.Node, value: ir.Value | None) -> int:
    if value is None or value in node.inputs:
        return 0
    function = model.functions[node.op_identifier()]
    node.resize_inputs(len(node.inputs) + 1)
    node.replace_input_with(len(node.inputs) - 1, value)
    function.inputs.append(ir.Value(name=f"{function.name}_in{len(function.inputs)}"))
    return 1


def _expose_inner_value(model: ir.Model, node: ir.Node, consumer: ir.Node, rng: np.random.Generator) -> int:
    """Return one more inner value of ``node``'s function and pass it to ``consumer``, which ignores it."""
    function = model.functions[node.op_identifier()]
    inner = [
        v
        for n in function
        for v in n.outputs
        if v.name and v not in function.outputs and n.op_type != "Constant"
    ]
    if not inner:
        return 0
    value = inner[int(rng.integers(len(inner)))]
    function.outputs.append(value)
    node.resize_outputs(len(node.outputs) + 1)
    exposed = node.outputs[-1]
    exposed.name = f"{node.name}_out{len(node.outputs) - 1}"
    return 1 + _add_ignored_input(model, consumer, exposed)
