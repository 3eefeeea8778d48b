"""Conversion of trained models to ONNX: PyTorch (legacy TorchScript exporter) and scikit-learn (skl2onnx).

``convert_file`` resolves the source (``module:factory`` or a saved file, pickles only when
trusted), exports it at opset 17 with a dynamic batch, verifies the ONNX model on onnxruntime
against the source framework on seeded example inputs, and writes it atomically. torch,
scikit-learn and skl2onnx are optional extras, imported only when a source needs them.
"""

from __future__ import annotations

from modelpress.convert.source import InputSpec, Source, load_source, parse_input_spec
from modelpress.convert.workflow import (
    DEFAULT_RTOL,
    PROBABILITY_ATOL,
    ConversionReport,
    convert_file,
    convert_source,
)

__all__ = [
    "DEFAULT_RTOL",
    "PROBABILITY_ATOL",
    "ConversionReport",
    "InputSpec",
    "Source",
    "convert_file",
    "convert_source",
    "load_source",
    "parse_input_spec",
]
