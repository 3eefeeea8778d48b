"""Small float models for the quantization tests, built with modelpress's GraphBuilder."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from modelpress.ir.build import GraphBuilder

FLOAT = ir.DataType.FLOAT


def _conv_weights(rng: np.random.Generator, c_out: int, c_in: int, k: int = 3) -> np.ndarray:
    return (rng.standard_normal((c_out, c_in, k, k)) * (2 / (c_in * k * k)) ** 0.5).astype(np.float32)


def conv_relu(opset: int = 17) -> ir.Model:
    """x[N,3,8,8] -> Conv(4, 3x3, bias) -> Relu -> y (a quantized graph output)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=opset)
    x = b.input("x", FLOAT, ["N", 3, 8, 8])
    conv = b.op(
        "Conv",
        x,
        b.const(_conv_weights(rng, 4, 3), "w"),
        b.const(rng.standard_normal(4) * 0.1, "b"),
        pads=[1, 1, 1, 1],
    )
    y = b.op("Relu", conv)
    y.name = "y"
    return b.build([y])


def small_cnn(seed: int = 0) -> ir.Model:
    """A residual CNN whose output is a Conv+Relu (so the output has its own scale).

    x[N,3,16,16] -> Conv1+Relu (a) -> Conv2 -> Add(a) -> Relu -> MaxPool 2x2 -> Conv3+Relu -> y[N,8,8,8]
    """
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("x", FLOAT, ["N", 3, 16, 16])
    bias = lambda n, name: b.const(rng.standard_normal(n) * 0.1, name)  # noqa: E731
    a = b.op(
        "Relu", b.op("Conv", x, b.const(_conv_weights(rng, 8, 3), "w1"), bias(8, "b1"), pads=[1, 1, 1, 1])
    )
    h = b.op("Conv", a, b.const(_conv_weights(rng, 8, 8), "w2"), bias(8, "b2"), pads=[1, 1, 1, 1])
    h = b.op("Relu", b.op("Add", h, a))
    h = b.op("MaxPool", h, kernel_shape=[2, 2], strides=[2, 2])
    y = b.op(
        "Relu", b.op("Conv", h, b.const(_conv_weights(rng, 8, 8), "w3"), bias(8, "b3"), pads=[1, 1, 1, 1])
    )
    y.name = "y"
    return b.build([y])


def classifier(seed: int = 0) -> ir.Model:
    """x[N,3,8,8] -> Conv+Relu -> GlobalAveragePool -> Flatten -> Gemm(transB) -> logits, plus a MatMul head."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("x", FLOAT, ["N", 3, 8, 8])
    h = b.op(
        "Relu",
        b.op(
            "Conv", x, b.const(_conv_weights(rng, 16, 3), "w1"), b.const(rng.standard_normal(16) * 0.1, "b1")
        ),
    )
    h = b.op("Flatten", b.op("GlobalAveragePool", h), axis=1)
    logits = b.op(
        "Gemm",
        h,
        b.const(rng.standard_normal((10, 16)).astype(np.float32), "fc_w"),
        b.const(rng.standard_normal(10) * 0.1, "fc_b"),
        transB=1,
    )
    logits.name = "logits"
    embedding = b.op("MatMul", h, b.const(rng.standard_normal((16, 4)).astype(np.float32), "proj_w"))
    embedding.name = "embedding"
    return b.build([logits, embedding])


def samples(model: ir.Model, count: int = 8, batch: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Calibration feeds: ``count`` batches of ``batch`` standard-normal inputs."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for value in model.graph.inputs:
            shape = [batch if not isinstance(d, int) else d for d in value.shape]
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
        feeds.append(feed)
    return feeds


def mlp(seed: int = 0, opset: int = 17) -> ir.Model:
    """x[N,16] -> MatMul(16x32) -> Add(bias) -> Relu -> Gemm(transB, 32->8, bias) -> y."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=opset)
    x = b.input("x", FLOAT, ["N", 16])
    h = b.op("MatMul", x, b.const(rng.standard_normal((16, 32)).astype(np.float32) * 0.25, "w1"))
    h = b.op("Relu", b.op("Add", h, b.const(rng.standard_normal(32).astype(np.float32) * 0.1, "b1")))
    y = b.op(
        "Gemm",
        h,
        b.const(rng.standard_normal((8, 32)).astype(np.float32) * 0.2, "w2"),
        b.const(rng.standard_normal(8).astype(np.float32) * 0.1, "b2"),
        transB=1,
    )
    y.name = "y"
    return b.build([y])


def attention_block(seed: int = 0) -> ir.Model:
    """A bert-like block: x[N,8,16] -> q,k,v MatMuls -> q @ k^T -> Softmax -> @ v -> out proj ->
    Add(x) -> LayerNormalization -> y (MatMuls between activations, a Softmax, a LayerNorm)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("x", FLOAT, ["N", 8, 16])
    w = lambda name: b.const(rng.standard_normal((16, 16)).astype(np.float32) * 0.25, name)  # noqa: E731
    q, k, v = (b.op("MatMul", x, w(name)) for name in ("wq", "wk", "wv"))
    scores = b.op("MatMul", q, b.op("Transpose", k, perm=[0, 2, 1]))
    probs = b.op("Softmax", b.op("Mul", scores, b.const(np.float32(0.25), "inv_sqrt_d")), axis=-1)
    h = b.op("Add", b.op("MatMul", b.op("MatMul", probs, v), w("wo")), x)
    y = b.op(
        "LayerNormalization",
        h,
        b.const(np.ones(16, np.float32), "gamma"),
        b.const(np.zeros(16, np.float32), "beta"),
        axis=-1,
    )
    y.name = "y"
    return b.build([y])


def qkv_block(seed: int = 0, opset: int = 17, biases: tuple[bool, ...] = (True, True, True)) -> ir.Model:
    """x[N,4,16] -> three MatMuls reading x (16->16, 16->16, 16->8), each + Add(bias) when
    ``biases`` says so -> outputs q, k, v (a transformer's projections, for packing)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=opset)
    x = b.input("x", FLOAT, ["N", 4, 16])
    outputs = []
    for name, width, has_bias in zip("qkv", (16, 16, 8), biases, strict=True):
        y = b.op("MatMul", x, b.const(rng.standard_normal((16, width)).astype(np.float32) * 0.25, f"w{name}"))
        if has_bias:
            y = b.op("Add", y, b.const(rng.standard_normal(width).astype(np.float32) * 0.1, f"b{name}"))
        y.name = name
        outputs.append(y)
    return b.build(outputs)


def embedding_encoder(seed: int = 0) -> ir.Model:
    """ids, other_ids, positions [N,S] int64 -> Gather(E[50,16], ids) + Gather(E, other_ids) +
    Gather(P[8,16], positions) -> h -> MatMul(16x8) -> y (outputs h and y; E is shared)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    ids = b.input("ids", ir.DataType.INT64, ["N", "S"])
    other = b.input("other_ids", ir.DataType.INT64, ["N", "S"])
    positions = b.input("positions", ir.DataType.INT64, ["N", "S"])
    table = rng.standard_normal((50, 16)).astype(np.float32)
    table[:10] *= 0.01  # small rows: a per-tensor scale would flatten them
    words = b.const(table, "word_embeddings")
    h = b.op("Add", b.op("Gather", words, ids), b.op("Gather", words, other))
    h = b.op(
        "Add", h, b.op("Gather", b.const(rng.standard_normal((8, 16)).astype(np.float32), "pos"), positions)
    )
    h.name = "h"
    y = b.op("MatMul", h, b.const(rng.standard_normal((16, 8)).astype(np.float32) * 0.25, "w"))
    y.name = "y"
    return b.build([h, y])
