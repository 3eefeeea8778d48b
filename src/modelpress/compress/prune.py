"""Magnitude pruning (Deep Compression, stage 1), unstructured and per layer, post-training.

Han et al. 2015/2016 remove the connections whose weights are smallest in magnitude, then
retrain the rest; this slice prunes once and does not retrain (no fine-tuning, no data), so
the loss it causes is reported, not recovered. Per eligible weight (``_weights.find_weights``:
Conv/ConvTranspose W, Gemm B, constant MatMul inputs, float32/float16) the
``round(sparsity * elements)`` values of smallest ``|w|`` become exact zeros: an exact count
per layer, ties broken by flat index (a stable sort), so the result is deterministic. Weights
under ``min_elements`` values are skipped (first convolutions and classifier heads are small
and sensitive; pruning them saves nothing). The model keeps its dense layout: the zeros pay
off once the ``.mpz`` container stores only the kept values (``compress``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import onnx_ir as ir

from modelpress.compress._weights import find_weights
from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.runtime.compare import Comparison, compare_models

__all__ = ["DEFAULT_MIN_ELEMENTS", "LayerPrune", "PruneReport", "prune_file", "prune_model"]

logger = logging.getLogger(__name__)

DEFAULT_MIN_ELEMENTS = 1024
# Seeds of the random inputs a pruned model is compared on (as optimize's check; also
# structured.prune_channels_file).
ERROR_SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class LayerPrune:
    """What pruning did to one weight.

    Attributes:
        node: First node using the weight.
        op_type: Its op type.
        tensor: The initializer's name.
        elements: Number of values.
        sparsity_before: Fraction of exact zeros before pruning.
        sparsity_after: Fraction of exact zeros after (equals ``sparsity_before`` when skipped).
        skipped: Why the weight was left alone ("" when pruned).
    """

    node: str
    op_type: str
    tensor: str
    elements: int
    sparsity_before: float
    sparsity_after: float
    skipped: str = ""


@dataclasses.dataclass
class PruneReport:
    """Per-layer result of ``prune_model``; ``prune_file`` adds the output error and paths.

    Attributes:
        sparsity: The requested fraction per layer.
        min_elements: Weights with fewer values were skipped.
        layers: One entry per eligible weight, in node order.
        comparison: Output error of the pruned model against the original on random inputs
            (onnxruntime, optimizations off); None from ``prune_model``. Reported, never
            checked: pruning without fine-tuning is lossy by design.
        output_path: Where the pruned model was written (``prune_file`` only).
        seconds: Wall time of ``prune_file``.
    """

    sparsity: float
    min_elements: int
    layers: list[LayerPrune] = dataclasses.field(default_factory=list)
    comparison: Comparison | None = None
    output_path: Path | None = None
    seconds: float = 0.0

    @property
    def pruned_elements(self) -> int:
        """Values set to zero by pruning (over all layers)."""
        return sum(
            round((layer.sparsity_after - layer.sparsity_before) * layer.elements) for layer in self.layers
        )

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-serializable data."""
        return {
            "sparsity": self.sparsity,
            "min_elements": self.min_elements,
            "pruned_elements": self.pruned_elements,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            **outcome_json(self),
        }


class FileReport(Protocol):
    """What a pruning report records about its file run: the error check, the file, the time."""

    comparison: Comparison | None
    output_path: Path | None
    seconds: float


_Report = TypeVar("_Report", bound=FileReport)


def outcome_json(report: FileReport) -> dict[str, Any]:
    """The error check, output file and time of ``report``, as JSON (shared by the pruning reports)."""
    comparison = report.comparison
    return {
        "max_abs_error": None if comparison is None else comparison.max_abs,
        "max_rel_error": None if comparison is None else comparison.max_rel,
        "errors": None if comparison is None else comparison.to_json(),
        "output_path": None if report.output_path is None else str(report.output_path),
        "seconds": report.seconds,
    }


def prune_on_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    transform: collections.abc.Callable[[ir.Model], _Report],
    dim_values: collections.abc.Mapping[str, int] | None,
) -> _Report:
    """Load ``src``, ``transform`` it, compare with ``src`` on random inputs, save to ``dst``.

    The error is measured on onnxruntime with optimizations off (seeds ``ERROR_SEEDS``) and
    reported, not checked: pruning is lossy. ``dst`` is written atomically; ``src`` is untouched.
    """
    start = time.perf_counter()
    model = io.load(src)
    report = transform(model)
    report.comparison = compare_models(Path(src), model, seeds=ERROR_SEEDS, dim_values=dim_values)
    report.output_path = io.save(model, dst)
    report.seconds = time.perf_counter() - start
    return report


def check_sparsity(sparsity: float) -> None:
    """Raise ``UsageError`` unless ``0 <= sparsity < 1``."""
    if not (isinstance(sparsity, int | float) and 0.0 <= sparsity < 1.0):
        raise UsageError(f"sparsity {sparsity!r} is out of range; give a fraction in [0, 1), e.g. 0.5")


def check_min_elements(min_elements: int) -> None:
    """Raise ``UsageError`` unless ``min_elements >= 1``."""
    if not (isinstance(min_elements, int) and min_elements >= 1):
        raise UsageError(f"min_elements {min_elements!r} must be an integer >= 1")


def prune_array(array: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of ``array`` whose ``round(sparsity * size)`` smallest-magnitude values are zero.

    Ties are broken by flat index (stable sort): the same input always gives the same zeros.
    """
    flat = np.array(array, copy=True).reshape(-1)
    count = min(flat.size, round(sparsity * flat.size))
    if count:
        order = np.argsort(np.abs(flat.astype(np.float32)), kind="stable")
        flat[order[:count]] = 0
    return flat.reshape(array.shape)


def prune_model(model: ir.Model, sparsity: float, *, min_elements: int = DEFAULT_MIN_ELEMENTS) -> PruneReport:
    """Zero the smallest-magnitude ``sparsity`` fraction of every eligible weight, in place.

    Args:
        model: The model; its weight initializers are replaced by pruned copies.
        sparsity: Fraction of each weight's values to zero, in [0, 1).
        min_elements: Weights with fewer values are left alone (the default 1024 spares the
            first convolution and small heads).

    Returns:
        One ``LayerPrune`` per eligible weight (a weight shared by several nodes is pruned once).

    Raises:
        UsageError: ``sparsity`` or ``min_elements`` is out of range.
    """
    check_sparsity(sparsity)
    check_min_elements(min_elements)
    report = PruneReport(sparsity, min_elements)
    for use in find_weights(model):
        tensor = use.value.const_value
        assert tensor is not None  # find_weights returns initializers with a value
        array = tensor.numpy()
        before = _zero_fraction(array)
        skipped = ""
        if array.size < min_elements:
            skipped = f"{array.size} < min_elements {min_elements}"
        elif sparsity > 0:
            # Existing zeros have the smallest magnitude: they count toward the target.
            array = prune_array(array, sparsity)
            use.value.const_value = ir.Tensor(array, name=tensor.name, doc_string=tensor.doc_string)
        after = _zero_fraction(array)
        name = use.value.name or "<unnamed>"
        report.layers.append(LayerPrune(use.node, use.op_type, name, int(array.size), before, after, skipped))
        logger.debug("prune %s (%s): sparsity %.3f -> %.3f %s", name, use.op_type, before, after, skipped)
    logger.info("pruned %d values in %d weights", report.pruned_elements, len(report.layers))
    return report


def prune_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    sparsity: float,
    *,
    min_elements: int = DEFAULT_MIN_ELEMENTS,
    dim_values: collections.abc.Mapping[str, int] | None = None,
) -> PruneReport:
    """Prune the model at ``src`` and write it to ``dst`` atomically; ``src`` is never modified.

    The pruned model's outputs are compared with the original's on random inputs (seeds 0-2,
    onnxruntime with optimizations off); the error is reported, not checked.

    Args:
        src: Input ``.onnx`` model.
        dst: Output ``.onnx`` path (external data as ``io.save`` decides).
        sparsity: Fraction of each eligible weight to zero, in [0, 1).
        min_elements: Weights with fewer values are skipped.
        dim_values: Sizes of dynamic dims for the random inputs (default 2 each).

    Raises:
        UsageError: an option is out of range, or random inputs cannot be made.
        ModelLoadError: ``src`` is not a valid ONNX model.
        ModelSaveError: ``dst`` could not be written (nothing is left there).
    """
    check_sparsity(sparsity)
    check_min_elements(min_elements)
    return prune_on_file(
        src, dst, lambda model: prune_model(model, sparsity, min_elements=min_elements), dim_values
    )


def _zero_fraction(array: np.ndarray) -> float:
    return float(np.count_nonzero(array == 0)) / array.size if array.size else 0.0
