"""A small graph builder on onnx_ir for examples and tests, and ``add_initializer`` for passes.

onnx_ir builds graphs from ``ir.node`` and ``ir.Value`` objects; this wrapper only removes the
bookkeeping (collecting nodes and initializers, naming values, creating the model), so a test
graph reads like the math::

    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [1, 3, 8, 8])
    y = b.op("Relu", b.op("Conv", x, b.const(w, "w")))
    model = b.build([y])
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

__all__ = ["GraphBuilder", "add_initializer"]


def add_initializer(graph: ir.Graph, name: str, data: np.ndarray | ir.TensorProtocol) -> ir.Value:
    """Register ``data`` (an array or a tensor) as initializer ``name`` of ``graph``, typed and shaped.

    The caller picks a free name (``register_initializer`` refuses a taken one).
    """
    tensor = ir.tensor(data, name=name) if isinstance(data, np.ndarray) else data
    shape = ir.Shape(tensor.shape.numpy())  # a tensor's shape is static
    value = ir.Value(name=name, const_value=tensor, type=ir.TensorType(tensor.dtype), shape=shape)
    graph.register_initializer(value)
    return value


class GraphBuilder:
    """Collects inputs, initializers and nodes, then builds an ``ir.Model``.

    Args:
        opset: The default-domain opset version of the model.
        ir_version: The model's IR version.
    """

    def __init__(self, opset: int = 17, ir_version: int = 8) -> None:
        self.opset = opset
        self.ir_version = ir_version
        self.inputs: list[ir.Value] = []
        self.initializers: list[ir.Value] = []
        self.nodes: list[ir.Node] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def input(
        self, name: str, dtype: ir.DataType, shape: collections.abc.Sequence[int | str | None]
    ) -> ir.Value:
        """Declare a graph input (string dims are symbolic)."""
        value = ir.val(name, dtype, ir.Shape(list(shape)))
        self.inputs.append(value)
        return value

    def const(
        self, array: np.ndarray | float | int | collections.abc.Sequence[object], name: str | None = None
    ) -> ir.Value:
        """Add an initializer holding ``array`` (python scalars become float32/int64 arrays)."""
        arr = np.asarray(array)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = name or self._name("const")
        value = ir.Value(
            name=name,
            const_value=ir.tensor(arr, name=name),
            type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
            shape=ir.Shape(arr.shape),
        )
        self.initializers.append(value)
        return value

    def op(
        self,
        op_type: str,
        *inputs: ir.Value | None,
        outputs: int = 1,
        domain: str = "",
        **attributes: object,
    ) -> ir.Value | tuple[ir.Value, ...]:
        """Append a node; returns its output value (or a tuple when ``outputs > 1``)."""
        node = ir.node(
            op_type,
            list(inputs),
            attributes=attributes,  # type: ignore[arg-type]  # values are checked by ir.node at runtime
            domain=domain,
            num_outputs=outputs,
            name=self._name(op_type),
        )
        for i, out in enumerate(node.outputs):
            out.name = f"{node.name}_out{i}" if outputs > 1 else f"{node.name}_out"
        self.nodes.append(node)
        return node.outputs[0] if outputs == 1 else tuple(node.outputs)

    def build(
        self, outputs: collections.abc.Sequence[ir.Value], *, opsets: dict[str, int] | None = None
    ) -> ir.Model:
        """Create the model whose graph outputs are ``outputs``."""
        graph = ir.Graph(
            self.inputs,
            list(outputs),
            nodes=self.nodes,
            initializers=self.initializers,
            opset_imports={"": self.opset, **(opsets or {})},
            name="modelpress_graph",
        )
        model = ir.Model(graph, ir_version=self.ir_version, producer_name="modelpress")
        # Give every value its type and shape (graph outputs must have one; rules read shapes).
        common_passes.ShapeInferencePass()(model)
        return model
