"""Embedding tables (Gather data) are weight-shared with their own bits and never pruned."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from modelpress.compress import compress_model, load_compressed
from modelpress.ir.build import GraphBuilder


def _embedding_model() -> tuple[ir.Model, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((500, 16)).astype(np.float32)  # 8000 values
    weight = rng.standard_normal((16, 128)).astype(np.float32)  # 2048 values
    b = GraphBuilder()
    ids = b.input("ids", ir.DataType.INT64, ["batch", 4])
    y = b.op("MatMul", b.op("Gather", b.const(table, "table"), ids), b.const(weight, "weight"))
    return b.build([y]), table, weight


def test_gather_tables_are_shared_with_embedding_bits_and_never_pruned():
    model, table, _ = _embedding_model()
    data, report = compress_model(model, sparsity=0.5, fc_bits=3, embedding_bits=4, dim_values={"batch": 1})
    _, arrays = load_compressed(data)
    assert np.count_nonzero(arrays["table"]) == table.size  # no entry pruned
    assert len(np.unique(arrays["table"])) <= 2**4
    assert 0 < np.abs(arrays["table"] - table).max() < np.abs(table).max() / 4
    assert np.mean(arrays["weight"] == 0) == 0.5  # the MatMul weight is pruned...
    assert len(np.unique(arrays["weight"][arrays["weight"] != 0])) <= 2**3  # ...and shared at fc_bits
    records = {r.name: r for r in report.tensors}
    assert records["table"].op_type == "Gather" and records["table"].bits == 4
    assert records["weight"].op_type == "MatMul" and records["weight"].bits == 3
    assert {layer.tensor for layer in report.prune.layers} == {"weight"}  # pruning never saw the table


def test_embedding_bits_8_is_the_default():
    model, _, _ = _embedding_model()
    _, report = compress_model(model, dim_values={"batch": 1})
    assert {r.name: r.bits for r in report.tensors}["table"] == 8
