"""Small graphs for the compression tests: Conv + Gemm + MatMul, a shared weight, a tiny head."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from modelpress.ir.build import GraphBuilder


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv_w": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),  # 1152 values
        "conv_b": rng.standard_normal(16).astype(np.float32),
        "fc_w": rng.standard_normal((64, 256)).astype(np.float32),  # Gemm B, transB=1: 16384 values
        "shared_w": rng.standard_normal((64, 64)).astype(np.float32),  # used by two MatMuls
        "head_w": rng.standard_normal((64, 10)).astype(np.float32),  # 640 values: below min_elements
    }


def cnn(seed: int = 0, *, fp16_matmul: bool = False) -> ir.Model:
    """x[batch,8,4,4] -> Conv -> Relu -> Flatten -> Gemm -> MatMul(shared) x2 -> MatMul(head)."""
    w = weights(seed)
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, ["batch", 8, 4, 4])
    y = b.op(
        "Relu",
        b.op("Conv", x, b.const(w["conv_w"], "conv_w"), b.const(w["conv_b"], "conv_b"), pads=[1, 1, 1, 1]),
    )
    y = b.op("Flatten", y)
    y = b.op("Gemm", y, b.const(w["fc_w"], "fc_w"), transB=1)
    shared = b.const(w["shared_w"], "shared_w")
    y = b.op("Relu", b.op("MatMul", y, shared))
    y = b.op("MatMul", y, shared)
    if fp16_matmul:
        y = b.op(
            "Cast",
            b.op(
                "MatMul",
                b.op("Cast", y, to=ir.DataType.FLOAT16),
                b.const(w["head_w"].astype(np.float16), "head_w"),
            ),
            to=ir.DataType.FLOAT,
        )
    else:
        y = b.op("MatMul", y, b.const(w["head_w"], "head_w"))
    return b.build([y])
