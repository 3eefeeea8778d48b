"""A tiny classifier model and its pipeline, shared by the package tests."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from modelpress.ir.build import GraphBuilder
from modelpress.pipeline import Pipeline

W = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
MEAN = [1.0, 2.0, 3.0, 4.0]
STD = [0.5, 1.0, 2.0, 4.0]
LABELS = ["cat", "dog", "fish"]

PIPELINE_YAML = f"""\
version: 1
inputs:
  x:                       # standardize with the training statistics
    - z_score: {{mean: {MEAN}, std: {STD}}}
    - cast: {{dtype: float32}}
outputs:
  logits:
    - softmax
    - top_k: {{k: 2, labels: {LABELS}}}
"""


def classifier() -> ir.Model:
    """``logits = x @ W`` with x float32 [N, 4] and three classes."""
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, ["N", 4])
    logits = b.op("MatMul", x, b.const(W, "w"))
    logits.name = "logits"
    return b.build([logits])


def pipeline() -> Pipeline:
    return Pipeline.from_text(PIPELINE_YAML)
