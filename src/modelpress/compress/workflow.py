"""Deep Compression end to end: prune, share weights, Huffman-code, measure (``.mpz``).

Han et al. 2016 chain three stages: magnitude pruning (``prune.py``), weight sharing by
k-means (``sharing.py``) and Huffman coding (``_coding.py``), with retraining after the first
two. This is the post-training slice: no fine-tuning and no data, so the accuracy the stages
cost is measured and reported (output error on random inputs here; top-1 on a held-out split
in the tests), not recovered. The weights section is coded tensor by tensor into the ``.mpz``
container (``mpz.py``), which is then decoded again exactly as ``load_compressed`` will, and
the decoded model is run against the original on onnxruntime (optimizations off).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import onnx_ir as ir

from modelpress.compress import mpz
from modelpress.compress._encode import TensorRecord, encode_container
from modelpress.compress._weights import find_weights
from modelpress.compress.prune import (
    DEFAULT_MIN_ELEMENTS,
    PruneReport,
    check_min_elements,
    check_sparsity,
    prune_model,
)
from modelpress.compress.sharing import (
    DEFAULT_CONV_BITS,
    DEFAULT_EMBEDDING_BITS,
    DEFAULT_FC_BITS,
    SharedWeights,
    share_weights,
)
from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.runtime.compare import Comparison, compare_models

__all__ = ["CompressReport", "TensorRecord", "compress_file", "compress_model"]

logger = logging.getLogger(__name__)

_SEEDS = (0, 1, 2)


@dataclasses.dataclass
class CompressReport:
    """What ``compress_model`` / ``compress_file`` stored and what it costs.

    Attributes:
        sparsity: Pruning fraction per eligible weight.
        conv_bits: Codebook bits of Conv/ConvTranspose weights.
        fc_bits: Codebook bits of Gemm/MatMul weights.
        min_elements: Smaller weights were neither pruned nor shared (stored raw).
        original_bytes: The input model's size: its files (``compress_file``, external data
            included) or its serialized graph + weights (``compress_model``).
        compressed_bytes: Size of the ``.mpz``.
        tensors: How each tensor of the weights section was stored, in layout order.
        prune: The pruning report.
        comparison: Output error of the decoded ``.mpz`` against the original, random inputs.
        encode_seconds: Time to prune, share and code.
        decode_seconds: Time ``load_compressed``'s decoding took on the result.
        output_path: Where the ``.mpz`` was written (``compress_file`` only).
    """

    sparsity: float
    conv_bits: int
    fc_bits: int
    min_elements: int
    original_bytes: int = 0
    compressed_bytes: int = 0
    tensors: list[TensorRecord] = dataclasses.field(default_factory=list)
    prune: PruneReport | None = None
    comparison: Comparison | None = None
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    output_path: Path | None = None

    @property
    def ratio(self) -> float:
        """``original_bytes / compressed_bytes`` (how many times smaller)."""
        return self.original_bytes / self.compressed_bytes if self.compressed_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-serializable data."""
        tensors = [dataclasses.asdict(t) | {"bits_per_weight": t.bits_per_weight} for t in self.tensors]
        return {
            "sparsity": self.sparsity,
            "conv_bits": self.conv_bits,
            "fc_bits": self.fc_bits,
            "min_elements": self.min_elements,
            "original_bytes": self.original_bytes,
            "compressed_bytes": self.compressed_bytes,
            "ratio": self.ratio,
            "tensors": tensors,
            "max_abs_error": None if self.comparison is None else self.comparison.max_abs,
            "max_rel_error": None if self.comparison is None else self.comparison.max_rel,
            "errors": None if self.comparison is None else self.comparison.to_json(),
            "encode_seconds": self.encode_seconds,
            "decode_seconds": self.decode_seconds,
            "output_path": None if self.output_path is None else str(self.output_path),
        }


def check_bits(bits: int, what: str) -> None:
    """Raise ``UsageError`` unless ``bits`` is an integer in 1..8 (one byte per index)."""
    if not (isinstance(bits, int) and 1 <= bits <= 8):
        raise UsageError(
            f"{what} {bits!r} is out of range; give 1 to 8 (the paper used 8 for Conv, 5 for FC)"
        )


def compress_model(
    model: ir.Model,
    *,
    sparsity: float = 0.0,
    conv_bits: int = DEFAULT_CONV_BITS,
    fc_bits: int = DEFAULT_FC_BITS,
    embedding_bits: int = DEFAULT_EMBEDDING_BITS,
    min_elements: int = DEFAULT_MIN_ELEMENTS,
    dim_values: collections.abc.Mapping[str, int] | None = None,
    reference: ir.Model | Path | None = None,
) -> tuple[bytes, CompressReport]:
    """Deep-compress ``model`` into ``.mpz`` bytes (post-training: no fine-tuning).

    Every eligible weight (Conv/ConvTranspose W, Gemm B, constant MatMul inputs; float32 or
    float16) of at least ``min_elements`` values is pruned to ``sparsity`` and then shared
    with ``2**bits`` centroids; all other tensors are stored raw. ``model`` is not modified.

    Args:
        model: The model.
        sparsity: Fraction of each eligible weight to prune, in [0, 1) (0 = no pruning; the
            paper pruned 50-90 % with retraining).
        conv_bits: Codebook bits for convolution weights (1-8; the paper: 8).
        fc_bits: Codebook bits for Gemm/MatMul weights (1-8; the paper: 5).
        embedding_bits: Codebook bits for Gather tables (embeddings; 1-8). They are shared,
            never pruned.
        min_elements: Smaller weights are neither pruned nor shared.
        dim_values: Sizes of dynamic dims for the random inputs of the error check.
        reference: What to compare against (default ``model``; a path avoids re-serializing).

    Returns:
        (the ``.mpz`` bytes, the report).

    Raises:
        UsageError: an option is out of range, or random inputs cannot be made for the check.
        ModelSaveError: the graph alone is over protobuf's 2 GiB limit.
    """
    start = time.perf_counter()
    check_sparsity(sparsity)
    check_min_elements(min_elements)
    check_bits(conv_bits, "conv_bits")
    check_bits(fc_bits, "fc_bits")
    check_bits(embedding_bits, "embedding_bits")
    report = CompressReport(sparsity, conv_bits, fc_bits, min_elements)
    work = model.clone()
    report.prune = prune_model(work, sparsity, min_elements=min_elements)
    shared: dict[str, tuple[SharedWeights, str]] = {}
    ops: dict[str, str] = {}
    for use in find_weights(work, embeddings=True):
        tensor = use.value.const_value
        assert tensor is not None  # find_weights returns initializers with a value
        ops[use.value.name or ""] = use.op_type
        array = tensor.numpy()
        if array.size < min_elements:
            continue
        bits = conv_bits if use.is_conv else embedding_bits if use.is_embedding else fc_bits
        sharing = share_weights(array, bits)
        use.value.const_value = ir.Tensor(sharing.decode(), name=tensor.name, doc_string=tensor.doc_string)
        shared[use.value.name or ""] = (sharing, use.op_type)
        logger.debug("shared %s: %d iterations", use.value.name, sharing.iterations)
    graph, weights = io.to_split_bytes(work)
    data, report.tensors = encode_container(graph, weights, shared, ops)
    report.original_bytes = len(graph) + len(weights)
    report.compressed_bytes = len(data)
    report.encode_seconds = time.perf_counter() - start
    decode_start = time.perf_counter()
    decoded_graph, decoded_weights, _ = mpz.decode_container(data)
    report.decode_seconds = time.perf_counter() - decode_start
    candidate = io.join_split_bytes(decoded_graph, decoded_weights)
    report.comparison = compare_models(reference or model, candidate, seeds=_SEEDS, dim_values=dim_values)
    logger.info("compressed %d -> %d bytes (%.1fx)", report.original_bytes, len(data), report.ratio)
    return data, report


def compress_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    sparsity: float = 0.0,
    conv_bits: int = DEFAULT_CONV_BITS,
    fc_bits: int = DEFAULT_FC_BITS,
    embedding_bits: int = DEFAULT_EMBEDDING_BITS,
    min_elements: int = DEFAULT_MIN_ELEMENTS,
    dim_values: collections.abc.Mapping[str, int] | None = None,
) -> CompressReport:
    """Deep-compress the ``.onnx`` model at ``src`` into an ``.mpz`` file at ``dst``, atomically.

    Options as ``compress_model``; ``src`` is never modified, and nothing is written at
    ``dst`` when anything fails.

    Raises:
        UsageError: an option is out of range, or random inputs cannot be made for the check.
        ModelLoadError: ``src`` is not a valid ONNX model.
        ModelSaveError: ``dst`` could not be written.
    """
    for bits, what in ((conv_bits, "conv_bits"), (fc_bits, "fc_bits"), (embedding_bits, "embedding_bits")):
        check_bits(bits, what)  # before the (possibly long) load
    check_sparsity(sparsity)
    check_min_elements(min_elements)
    source = Path(src)
    model = io.load(source)
    data, report = compress_model(
        model,
        sparsity=sparsity,
        conv_bits=conv_bits,
        fc_bits=fc_bits,
        embedding_bits=embedding_bits,
        min_elements=min_elements,
        dim_values=dim_values,
        reference=source,
    )
    report.original_bytes = _model_file_bytes(source, model)
    dest = Path(dst)
    mpz.write_atomic(dest, data)
    report.output_path = dest
    return report


def _model_file_bytes(path: Path, model: ir.Model) -> int:
    """Bytes of the model file plus every distinct external-data file its tensors read."""
    data_files = {
        Path(value.const_value.path).resolve()
        for graph in model.graphs()
        for value in graph.initializers.values()
        if isinstance(value.const_value, ir.ExternalTensor)
    }
    return path.stat().st_size + sum(f.stat().st_size for f in data_files)
