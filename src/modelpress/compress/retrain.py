"""Deep Compression with retraining, from a torch source to an ``.mpz`` file (``compress --retrain``).

``retrain_and_compress`` chains what exists elsewhere, so the CLI stays thin:

1. Resolve the source as ``modelpress convert`` does (``convert.source.load_source``:
   ``package.module:factory`` or a saved ``.pt``; an ``.onnx`` source is refused, since
   retraining needs the torch module).
2. Read labelled training data with the accuracy-aware mode's reader
   (``quantize.data.EvalData``: a folder of ``.npz`` files holding the input array and
   ``labels``), checked against the example input (given, or taken from the first file).
3. Fold each BatchNorm that follows a Conv/Linear into it (``torch.fx``), then prune + retrain
   and share + fine-tune the centroids (``finetune.deep_compress_module``).
4. Export to ONNX and verify the export against torch on onnxruntime, through convert's own
   code path (``convert.convert_source``), into a temporary folder.
5. Check that every retrained weight of the export still has at most ``2**bits`` distinct
   non-zero values, then ``compress_model(..., sparsity=0)`` (pruning already happened in
   torch; sharing keeps those values as the codebook, so the ``.mpz`` stores the fine-tuned
   weights bit for bit) and write the ``.mpz`` atomically. Nothing is written on failure.

Why step 3: convert's exporter folds constants, and the legacy exporter then folds a
BatchNorm after a convolution into its weights, scaling every output channel by its own
factor: a 256-value codebook becomes up to 256 x channels values and the export no longer
holds the fine-tuned codebooks. Folding in torch first trains the weights the export stores.
The folded network retrains without BatchNorm (as the paper's AlexNet/VGG had none). A module
torch.fx cannot trace keeps its BatchNorm, and step 5 then explains what to do.

Limits: one input tensor (``forward(x)``), float32, logits ``[N, classes]`` out (what
``deep_compress_module`` trains); the whole training set is held in memory.

torch is an optional dependency: it is imported inside the functions only.
"""

from __future__ import annotations

import collections.abc
import logging
import os
import tempfile
import typing
from pathlib import Path

import numpy as np
import onnx_ir as ir

from modelpress.compress import mpz
from modelpress.compress._torch_io import (
    one_float_input,
    read_npz_data,
    refuse_onnx,
    specs_from_data,
    torch_source,
)
from modelpress.compress._weights import find_weights
from modelpress.compress.finetune import EpochProgress, FinetuneReport, check_training, deep_compress_module
from modelpress.compress.prune import DEFAULT_MIN_ELEMENTS, check_min_elements, check_sparsity
from modelpress.compress.sharing import DEFAULT_CONV_BITS, DEFAULT_EMBEDDING_BITS, DEFAULT_FC_BITS
from modelpress.compress.workflow import CompressReport, check_bits, compress_model
from modelpress.convert import InputSpec, Source, convert_source, parse_input_spec
from modelpress.errors import PreconditionError
from modelpress.ir import io

if typing.TYPE_CHECKING:
    import torch

__all__ = ["retrain_and_compress", "specs_from_data"]

logger = logging.getLogger(__name__)


def retrain_and_compress(
    source: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    example_inputs: collections.abc.Sequence[str | InputSpec] = (),
    sparsity: float = 0.8,
    conv_bits: int = DEFAULT_CONV_BITS,
    fc_bits: int = DEFAULT_FC_BITS,
    prune_epochs: int = 8,
    share_epochs: int = 4,
    lr: float = 1e-3,
    trust_pickle: bool = False,
    progress: collections.abc.Callable[[EpochProgress], None] | None = None,
    embedding_bits: int = DEFAULT_EMBEDDING_BITS,
    min_elements: int = DEFAULT_MIN_ELEMENTS,
) -> tuple[CompressReport, FinetuneReport]:
    """Retrain the torch classifier ``source`` with Deep Compression and write it to ``dst`` (``.mpz``).

    Args:
        source: ``package.module:factory`` or a saved module (``.pt``/``.pth``), as
            ``convert_file`` takes it; not ``.onnx``.
        dst: Destination ``.mpz``; written only when every step succeeded.
        data_dir: Folder of ``.npz`` files, each with the input array and ``labels`` (integer
            class per sample), read by ``quantize.data.EvalData``.
        example_inputs: One ``NAME=1x1x8x8`` spec (float32) naming the graph input; default:
            the single non-label array of the first ``.npz``, its first axis the batch.
        sparsity: Fraction of each eligible weight pruned before retraining, in [0, 1).
        conv_bits: Codebook bits of convolution weights (1-8).
        fc_bits: Codebook bits of Linear weights (1-8).
        prune_epochs: Retraining epochs after pruning.
        share_epochs: Epochs fine-tuning the centroids.
        lr: Adam's learning rate, both phases.
        trust_pickle: Allow unpickling a saved ``.pt`` source (it runs code from the file).
        progress: Called after every training epoch.
        embedding_bits: Codebook bits of Gather tables (shared post-training, not retrained).
        min_elements: Weights with fewer values are neither retrained-compressed nor shared.

    Returns:
        The compress report (``output_path`` set; ``original_bytes`` is the verified fp32
        export's file size) and the retraining report.

    Raises:
        UsageError: an option is out of range, the source is ONNX or not a torch module, or
            the example input does not fit retraining (one float32 tensor).
        CalibrationError: the data folder is missing, empty, unlabelled, or does not fit.
        ConversionError, NumericMismatchError: the export failed, or differs from torch.
        PreconditionError: the export changed the retrained weights (a BatchNorm folded in).
        ModelSaveError: ``dst`` could not be written.
    """
    _check_options(sparsity, conv_bits, fc_bits, embedding_bits, min_elements, prune_epochs, share_epochs, lr)
    refuse_onnx(source, "retraining")
    folder = Path(data_dir)
    specs = [s if isinstance(s, InputSpec) else parse_input_spec(s) for s in example_inputs]
    spec = one_float_input(specs or specs_from_data(folder), "retraining")
    src = torch_source(source, "retraining", trust_pickle=trust_pickle)
    inputs, labels = read_npz_data(folder, spec, labels=True)
    logger.info("read %d labelled training samples from %s", len(inputs), folder)
    module, fold_note = _fold_batchnorm(src.obj)
    finetune = deep_compress_module(
        module,
        inputs,
        labels,
        sparsity=sparsity,
        conv_bits=conv_bits,
        fc_bits=fc_bits,
        prune_epochs=prune_epochs,
        share_epochs=share_epochs,
        lr=lr,
        min_elements=min_elements,
        progress=progress,
    )
    with tempfile.TemporaryDirectory(prefix="modelpress-retrain-") as tmp:
        exported = _export_verified(Source("torch", module, src.description), spec, Path(tmp))
        model = io.load(exported)
        _check_codebooks(model, conv_bits, fc_bits, min_elements, fold_note)
        data, report = compress_model(
            model,
            sparsity=0.0,  # pruned (and retrained) in torch already
            conv_bits=conv_bits,
            fc_bits=fc_bits,
            embedding_bits=embedding_bits,
            min_elements=min_elements,
            reference=exported,
        )
        report.original_bytes = exported.stat().st_size
    dest = Path(dst)
    mpz.write_atomic(dest, data)
    report.output_path = dest
    return report, finetune


def _check_options(
    sparsity: float,
    conv_bits: int,
    fc_bits: int,
    embedding_bits: int,
    min_elements: int,
    prune_epochs: int,
    share_epochs: int,
    lr: float,
) -> None:
    """Every option checked before the (possibly slow) source and data are loaded."""
    check_sparsity(sparsity)
    for bits, what in ((conv_bits, "conv_bits"), (fc_bits, "fc_bits"), (embedding_bits, "embedding_bits")):
        check_bits(bits, what)
    check_min_elements(min_elements)
    check_training(prune_epochs, share_epochs, 1, lr)


def _fold_batchnorm(module: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """``module`` with each BatchNorm after a Conv/Linear folded in (torch.fx), and why not if not."""
    from torch import nn
    from torch.fx.experimental.optimization import fuse

    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if not any(isinstance(sub, norms) for sub in module.modules()):
        return module, ""
    try:
        return fuse(module.eval()), ""
    except Exception as e:  # symbolic tracing of user code fails in many ways
        logger.info("BatchNorm not folded: torch.fx cannot trace the module: %s", e)
        return (
            module,
            f"torch.fx could not trace the module to fold its BatchNorm first ({type(e).__name__}: {e}). ",
        )


def _export_verified(src: Source, spec: InputSpec, folder: Path) -> Path:
    """Export ``src`` into ``folder``, verified against torch (``convert_source``, as ``convert``)."""
    report = convert_source(src, folder / "retrained.onnx", example_inputs=[spec])
    logger.info("export verified against torch: %d output checks", len(report.checks))
    return Path(report.output_path)


def _check_codebooks(model: ir.Model, conv_bits: int, fc_bits: int, min_elements: int, note: str) -> None:
    """Raise ``PreconditionError`` if the export changed a retrained weight's codebook."""
    for use in find_weights(model):
        tensor = use.value.const_value
        assert tensor is not None  # find_weights returns initializers with a value
        array = tensor.numpy()
        if array.size < min_elements:
            continue
        bits = conv_bits if use.is_conv else fc_bits
        distinct = int(np.unique(array[array != 0]).size)
        if distinct > 2**bits:
            raise PreconditionError(
                f"weight '{use.value.name}' of {use.op_type} node '{use.node}' has {distinct} distinct "
                f"non-zero values in the exported ONNX, more than its 2**{bits} = {2**bits} retrained "
                "centroids: the export changed the fine-tuned weights (the exporter folds a "
                f"BatchNormalization that follows a convolution into its weights). {note}Fold BatchNorm "
                "into the Conv/Linear in the factory (torch.nn.utils.fusion.fuse_conv_bn_eval) and retrain"
            )
