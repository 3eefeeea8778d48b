"""``add_initializer``: typed, shaped initializers from arrays or tensors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.ir.build import GraphBuilder, add_initializer


def _graph() -> ir.Graph:
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [2])
    return b.build([b.op("Relu", x)]).graph


def test_an_array_becomes_a_typed_shaped_initializer():
    graph = _graph()
    value = add_initializer(graph, "w", np.arange(6, dtype=np.int8).reshape(2, 3))
    assert graph.initializers["w"] is value and value.name == "w"
    assert value.dtype == ir.DataType.INT8 and value.shape == ir.Shape([2, 3])
    np.testing.assert_array_equal(value.const_value.numpy(), np.arange(6).reshape(2, 3))


def test_a_tensor_keeps_its_own_dtype_and_shape():
    graph = _graph()
    tensor = ir.tensor(np.ones((4,), np.float16), name="h")
    value = add_initializer(graph, "h", tensor)
    assert value.const_value is tensor and value.dtype == ir.DataType.FLOAT16 and value.shape == ir.Shape([4])


def test_a_taken_name_is_refused():
    graph = _graph()
    add_initializer(graph, "w", np.zeros(1, np.float32))
    with pytest.raises(ValueError):
        add_initializer(graph, "w", np.zeros(1, np.float32))
