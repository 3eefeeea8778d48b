"""The bundled example CNN, built with onnx_ir (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from modelpress.ir.build import GraphBuilder

__all__ = ["build_example_cnn"]


def _conv_bn_relu(
    b: GraphBuilder, rng: np.random.Generator, x: ir.Value, c_in: int, c_out: int, name: str
) -> ir.Value:
    w = b.const(
        rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32) * (2 / (9 * c_in)) ** 0.5, f"{name}.w"
    )
    y = b.op("Conv", x, w, pads=[1, 1, 1, 1])
    y = _batchnorm(b, rng, y, c_out, f"{name}.bn")
    return b.op("Relu", y)  # type: ignore[return-value]


def _batchnorm(b: GraphBuilder, rng: np.random.Generator, x: ir.Value, c: int, name: str) -> ir.Value:
    return b.op(  # type: ignore[return-value]
        "BatchNormalization",
        x,
        b.const(rng.uniform(0.5, 1.5, c).astype(np.float32), f"{name}.scale"),
        b.const(rng.standard_normal(c).astype(np.float32) * 0.1, f"{name}.bias"),
        b.const(rng.standard_normal(c).astype(np.float32) * 0.1, f"{name}.mean"),
        b.const(rng.uniform(0.5, 2.0, c).astype(np.float32), f"{name}.var"),
        epsilon=1e-5,
    )


def build_example_cnn(seed: int = 0) -> ir.Model:
    """A small residual CNN as an exporter without optimizations would write it.

    It has what ``modelpress optimize`` removes or rewrites: Conv+BatchNorm pairs, a
    Caffe-style BatchNorm + Scale (Mul, Add) after a residual Add (no producer to fold into:
    the BN becomes Mul+Add and the four ops fold into one Mul and one Add), an Identity and an
    inference Dropout, shape arithmetic computed at run time, a Slice crop after an
    activation (moved ahead of it), and a MatMul+Add classifier head.
    """
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("image", ir.DataType.FLOAT, [1, 3, 32, 32])
    h = _conv_bn_relu(b, rng, x, 3, 16, "stem")
    r = _conv_bn_relu(b, rng, h, 16, 16, "block1.a")
    r = b.op("Identity", r)
    h = b.op("Add", h, r)
    h = _batchnorm(b, rng, h, 16, "block1.post_bn")  # standalone BN: no Conv right before it
    h = b.op("Mul", h, b.const(rng.uniform(0.5, 1.5, (16, 1, 1)).astype(np.float32), "block1.scale.w"))
    h = b.op("Add", h, b.const(rng.standard_normal((16, 1, 1)).astype(np.float32) * 0.1, "block1.scale.b"))
    h = b.op("Relu", h)
    h = b.op(
        "Slice",
        h,
        b.const(np.array([2, 2], np.int64)),
        b.const(np.array([30, 30], np.int64)),
        b.const(np.array([2, 3], np.int64)),
    )  # center crop 28x28, after the activation
    h = _conv_bn_relu(b, rng, h, 16, 32, "block2")
    h = b.op("GlobalAveragePool", h)
    shape = b.op("Shape", h)
    batch = b.op("Gather", shape, b.const(np.array([0], np.int64)), axis=0)
    flat_shape = b.op("Concat", batch, b.const(np.array([-1], np.int64)), axis=0)
    h = b.op("Reshape", h, flat_shape)
    h = b.op("Dropout", h)
    w = b.const(rng.standard_normal((32, 10)).astype(np.float32) * 0.2, "head.w")
    logits = b.op(
        "Add", b.op("MatMul", h, w), b.const(rng.standard_normal(10).astype(np.float32) * 0.1, "head.b")
    )
    probs = b.op("Softmax", logits, axis=-1)
    probs.name = "probabilities"
    return b.build([probs])
