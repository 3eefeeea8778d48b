"""What a quantization run reports, and how its output error is measured.

The report holds sizes, what was quantized, the kernels onnxruntime picked and the output
error of the quantized model against the float one.

Error measures per output, over every evaluation sample (streamed, one batch at a time):

* ``max_abs``: the largest ``|quantized - float|``;
* ``max_rel``: ``max_abs`` over the largest ``|float|`` of that output (as in
  ``runtime.compare``: relative to the output's scale, not element-wise);
* ``top1_agreement``: for classifier-shaped outputs (float, rank 2, at least 2 columns), the
  fraction of rows whose argmax is the same in both models.

The float model runs at ``ORT_DISABLE_ALL`` (the reference), the quantized one at
``ORT_ENABLE_ALL``: that is where onnxruntime fuses the Q/DQ pattern into integer kernels,
so the error reported is the error of the model as deployed.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import tempfile
import typing
from pathlib import Path

import numpy as np
import onnx_ir as ir

from modelpress.ir.stats import op_histogram
from modelpress.runtime.session import create_session, run_session

__all__ = ["OutputError", "QuantizeReport", "measure_errors", "runtime_ops"]

ModelLike = ir.Model | bytes | str | os.PathLike[str]
# Substrings of the quantized kernels' names in onnxruntime's optimized graph.
_KERNEL_KEYS = ("QLinear", "QGemm", "Integer", "NhwcMaxPool", "DynamicQuantize", "NBits", "BlockQuantized")


@dataclasses.dataclass
class OutputError:
    """The error of one output of the quantized model over the evaluation samples."""

    name: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    top1_agreement: float | None = None
    reference_scale: float = 0.0  # largest |float output|
    _agree: int = 0
    _rows: int = 0

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Fold one batch of outputs in."""
        reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
        if reference.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(candidate - reference))))
            self.reference_scale = max(self.reference_scale, float(np.max(np.abs(reference))))
        self.max_rel = self.max_abs / self.reference_scale if self.reference_scale else 0.0
        if reference.ndim == 2 and reference.shape[1] >= 2:
            self._agree += int(np.sum(reference.argmax(axis=1) == candidate.argmax(axis=1)))
            self._rows += reference.shape[0]
            self.top1_agreement = self._agree / self._rows

    def to_json(self) -> dict[str, object]:
        """The public fields."""
        return {
            "output": self.name,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "top1_agreement": self.top1_agreement,
            "reference_scale": self.reference_scale,
        }


@dataclasses.dataclass
class QuantizeReport:
    """Everything a quantize run did and measured (``to_json`` is what ``--json`` prints)."""

    mode: str
    spec: dict[str, object]
    op_counts: dict[str, dict[str, int]]
    skipped: dict[str, str]
    inserted: dict[str, int]
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    weight_bytes_before: int
    weight_bytes_after: int
    calibration_samples: int = 0
    calibration_seconds: float = 0.0
    seconds: float = 0.0
    runtime_ops: dict[str, int] | None = None
    errors: list[OutputError] = dataclasses.field(default_factory=list)
    eval_samples: int = 0
    eval_data: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    file_bytes_before: int | None = None
    file_bytes_after: int | None = None
    input_path: str | None = None
    output_path: str | None = None
    # quantize.accuracy.AccuracyReport / quantize.bias_correction.BiasCorrectionReport, when run
    accuracy: typing.Any = None
    bias_correction: typing.Any = None

    @property
    def integer_kernels(self) -> dict[str, int]:
        """The integer ops in onnxruntime's optimized graph (QLinearConv, QGemm, ...)."""
        return {op: n for op, n in (self.runtime_ops or {}).items() if any(key in op for key in _KERNEL_KEYS)}

    def to_json(self) -> dict[str, object]:
        """A JSON-serializable summary."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "errors"}
        data["errors"] = [e.to_json() for e in self.errors]
        data["integer_kernels"] = self.integer_kernels
        data["seconds"] = round(self.seconds, 4)
        data["calibration_seconds"] = round(self.calibration_seconds, 4)
        for key in ("accuracy", "bias_correction"):
            data[key] = None if data[key] is None else data[key].to_json()
        return data


def measure_errors(
    reference: ModelLike,
    candidate: ModelLike,
    samples: collections.abc.Iterable[collections.abc.Mapping[str, np.ndarray]],
    *,
    on_batch: collections.abc.Callable[[int], None] | None = None,
) -> tuple[list[OutputError], int]:
    """Stream ``samples`` through both models; return per-output errors and the sample count."""
    reference_session = create_session(reference, level="disable")
    candidate_session = create_session(candidate, level="all")
    errors: dict[str, OutputError] = {}
    count = 0
    for feeds in samples:
        expected = run_session(reference_session, feeds)
        found = run_session(candidate_session, feeds)
        for name, value in expected.items():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and name in found:
                errors.setdefault(name, OutputError(name)).update(value, np.asarray(found[name]))
        size = len(next(iter(feeds.values()))) if feeds and np.ndim(next(iter(feeds.values()))) else 1
        count += size
        if on_batch is not None:
            on_batch(size)
    return list(errors.values()), count


def runtime_ops(model: ModelLike) -> dict[str, int]:
    """Op histogram of the graph onnxruntime runs at ``ORT_ENABLE_ALL`` (after its QDQ fusions)."""
    with tempfile.TemporaryDirectory(prefix="modelpress-ort-") as folder:
        path = Path(folder) / "optimized.onnx"
        create_session(model, level="all", optimized_model_path=path)
        # onnxruntime wrote this file itself: trusted, and it uses contrib ops the ONNX
        # checker in io.load does not know, so it is read with onnx_ir directly.
        return op_histogram(ir.load(path))
