"""Deep Compression with retraining, on a torch classifier: prune + retrain, share + fine-tune.

The post-training stages (``prune.py``, ``sharing.py``) cannot recover what they cost; Han et
al. (2015 "Learning both Weights and Connections", 2016 "Deep Compression" §2-3) retrain after
each. Their procedure, and this module's, on every eligible weight of an ``nn.Module``:

1. Pruning: zero the smallest-magnitude ``sparsity`` fraction (``prune.prune_array``, the
   rule the ONNX side uses), keep the mask, and retrain the whole network with the mask
   re-applied after every optimizer step (gradients of pruned weights are zeroed as well), so
   pruned connections stay exact zeros while the survivors compensate.
2. Trained quantization: cluster the kept values into ``2**bits`` centroids
   (``sharing.share_weights``), replace each weight by its centroid, and retrain only the
   centroids: the gradient of each shared weight is summed over its cluster,
   ``dL/dC_k = sum_{i: I_i = k} dL/dW_i`` (the paper's Eq. 3), the centroid takes an optimizer
   step, and ``W = C[I]`` is written back (zeros stay zeros, indices never change).

Eligible weights are those of ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` (``conv_bits``) and
``Linear`` (``fc_bits``) with at least ``min_elements`` values: what ``_weights.find_weights``
finds in the exported ONNX (Conv/ConvTranspose W, Gemm B / MatMul), with the same threshold,
so ``compress_model(..., sparsity=0)`` on the export finds exactly the weights trained here.
They leave with at most ``2**bits`` distinct non-zero values, and ``share_weights`` then keeps
those values as its codebook, so the ``.mpz`` stores the fine-tuned weights bit for bit.

What differs from the paper: the optimizer is Adam for both phases (the paper used SGD with the
original schedule, lr / 10 for retraining); Adam's per-centroid step size does not depend on how
many weights a cluster sums, which plain SGD on summed gradients does. The shared phase trains
the centroids only: biases and the small skipped layers stay as the pruning phase left them,
so this phase changes nothing but the codebooks (the paper does not say). Pruning is one shot,
not iterative, and the loss is plain cross-entropy (no dropout adjustment, no weight decay).
Accuracy is measured on the training data the phases use; held-out accuracy is the caller's.

Limits: weights must be float32 (train in float32, cast afterwards). A BatchNorm after a
convolution is folded into its weights by an ONNX export with constant folding, which scales
each output channel and so multiplies the distinct values: export with ``constant_folding=
False`` (or fold BatchNorm in torch before calling this) to keep the codebooks exact.

torch is an optional dependency: it is imported inside the functions only.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import time
import typing
from typing import Any

import numpy as np

from modelpress.compress.prune import DEFAULT_MIN_ELEMENTS, check_min_elements, check_sparsity, prune_array
from modelpress.compress.sharing import DEFAULT_CONV_BITS, DEFAULT_FC_BITS, share_weights
from modelpress.compress.workflow import check_bits
from modelpress.errors import UsageError

if typing.TYPE_CHECKING:
    import torch

__all__ = ["EpochProgress", "FinetuneLayer", "FinetunePhase", "FinetuneReport", "deep_compress_module"]

logger = logging.getLogger(__name__)

# Accuracy is measured in batches of this many samples (memory, not results, depends on it).
_EVAL_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class EpochProgress:
    """One finished epoch, as passed to the ``progress`` callback.

    Attributes:
        phase: ``prune`` (retraining the pruned network) or ``share`` (fine-tuning centroids).
        epoch: 1-based epoch number within the phase.
        epochs: Epochs in the phase.
        loss: Mean training cross-entropy over the epoch's batches.
        accuracy: Top-1 over the epoch's batches, as they were trained (a running figure).
    """

    phase: str
    epoch: int
    epochs: int
    loss: float
    accuracy: float


@dataclasses.dataclass(frozen=True)
class FinetuneLayer:
    """One eligible weight at the end.

    Attributes:
        name: The parameter's name in ``module.named_parameters()`` (e.g. ``features.3.weight``).
        kind: ``conv`` or ``fc`` (which bits it got).
        elements: Number of values.
        sparsity: Fraction of exact zeros.
        bits: Codebook bits (None when skipped).
        distinct_values: Distinct non-zero values (at most ``2**bits`` unless skipped).
        skipped: Why it was left alone ("" when compressed).
    """

    name: str
    kind: str
    elements: int
    sparsity: float
    bits: int | None
    distinct_values: int
    skipped: str = ""


@dataclasses.dataclass(frozen=True)
class FinetunePhase:
    """Training-data top-1 around one phase.

    Attributes:
        name: ``prune`` or ``share``.
        epochs: Retraining epochs run.
        accuracy_start: Before the phase changed the weights.
        accuracy_compressed: Right after pruning / sharing, before retraining.
        accuracy_end: After retraining.
        seconds: Wall time of the phase (compression, retraining and the three measurements).
    """

    name: str
    epochs: int
    accuracy_start: float
    accuracy_compressed: float
    accuracy_end: float
    seconds: float


@dataclasses.dataclass
class FinetuneReport:
    """What ``deep_compress_module`` did.

    Attributes:
        sparsity: Pruning fraction per eligible weight.
        conv_bits: Codebook bits of convolution weights.
        fc_bits: Codebook bits of Linear weights.
        min_elements: Smaller weights were left alone.
        layers: One entry per eligible weight, in ``named_modules`` order.
        phases: The ``prune`` phase, then the ``share`` phase.
        seconds: Wall time in all.
    """

    sparsity: float
    conv_bits: int
    fc_bits: int
    min_elements: int
    layers: list[FinetuneLayer] = dataclasses.field(default_factory=list)
    phases: list[FinetunePhase] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-serializable data."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Layer:
    """An eligible weight and its compression state (mask, then codebook) while training."""

    name: str
    kind: str
    weight: torch.Tensor  # the Parameter itself
    bits: int
    skipped: str
    pruned: torch.Tensor | None = None  # bool, True where pruned
    positions: torch.Tensor | None = None  # int64 flat positions of the shared (non-zero) values
    indices: torch.Tensor | None = None  # int64 cluster of each shared value
    centroids: torch.Tensor | None = None  # float32 leaf, requires grad


class _Data(typing.NamedTuple):
    inputs: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    generator: torch.Generator


def deep_compress_module(
    module: torch.nn.Module,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    sparsity: float,
    conv_bits: int = DEFAULT_CONV_BITS,
    fc_bits: int = DEFAULT_FC_BITS,
    prune_epochs: int = 8,
    share_epochs: int = 4,
    lr: float = 1e-3,
    batch_size: int = 64,
    min_elements: int = DEFAULT_MIN_ELEMENTS,
    seed: int = 0,
    progress: collections.abc.Callable[[EpochProgress], None] | None = None,
) -> FinetuneReport:
    """Prune, retrain, share weights and fine-tune the centroids of ``module``, in place.

    Args:
        module: A float32 classifier whose output is logits ``[N, classes]``; its eligible
            weights (module docstring) are pruned and shared. Its train/eval mode is restored.
        inputs: Training inputs, ``[N, ...]``, fed to ``module`` as one tensor per batch.
        labels: Integer class of each input, ``[N]``.
        sparsity: Fraction of each eligible weight to prune, in [0, 1) (0: no pruning and no
            pruning retraining; the paper pruned 50-90 %).
        conv_bits: Codebook bits of convolution weights (1-8; the paper: 8).
        fc_bits: Codebook bits of Linear weights (1-8; the paper: 5).
        prune_epochs: Retraining epochs after pruning (all parameters, masks kept).
        share_epochs: Epochs fine-tuning the centroids (nothing else changes).
        lr: Adam's learning rate, both phases.
        batch_size: Samples per optimizer step.
        min_elements: Weights with fewer values are left alone (as ``prune_model``'s).
        seed: Seeds the batch order and torch's global RNG (dropout), restored afterwards: the
            same seed gives the same weights with the same torch build and thread count (CPU
            kernels split their sums by thread, so a different count rounds differently).
        progress: Called after every epoch.

    Returns:
        Per-layer results and training-data top-1 around each phase.

    Raises:
        UsageError: an option is out of range, the data do not match, or an eligible weight
            is not float32.
    """
    import torch

    start = time.perf_counter()
    check_sparsity(sparsity)
    check_bits(conv_bits, "conv_bits")
    check_bits(fc_bits, "fc_bits")
    check_min_elements(min_elements)
    check_training(prune_epochs, share_epochs, batch_size, lr)
    layers = _find_layers(module, conv_bits, fc_bits, min_elements)
    active = [layer for layer in layers if not layer.skipped]
    report = FinetuneReport(sparsity, conv_bits, fc_bits, min_elements)
    was_training = module.training
    device = next(module.parameters()).device if active else torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        data = _Data(*_tensors(inputs, labels, device), batch_size, torch.Generator().manual_seed(seed))
        # Nothing to compress, nothing to retrain: the module is left as it is.
        epochs = prune_epochs if sparsity > 0 and active else 0
        report.phases.append(_prune_phase(module, active, data, sparsity, epochs, lr, progress))
        epochs = share_epochs if active else 0
        report.phases.append(_share_phase(module, active, data, epochs, lr, progress))
    module.train(was_training)
    report.layers = [_layer_result(layer) for layer in layers]
    report.seconds = time.perf_counter() - start
    logger.info("deep-compressed %d weights in %.1f s", len(active), report.seconds)
    return report


def check_training(prune_epochs: int, share_epochs: int, batch_size: int, lr: float) -> None:
    """Raise ``UsageError`` unless epochs >= 0, batch_size >= 1 and lr > 0."""
    for value, what, least in ((prune_epochs, "prune_epochs", 0), (share_epochs, "share_epochs", 0)):
        if not (isinstance(value, int) and value >= least):
            raise UsageError(f"{what} {value!r} must be an integer >= {least}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise UsageError(f"batch_size {batch_size!r} must be an integer >= 1")
    if not (isinstance(lr, int | float) and lr > 0):
        raise UsageError(f"lr {lr!r} must be a positive number, e.g. 1e-3")


def _tensors(
    inputs: np.ndarray, labels: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The data as torch tensors on ``device`` (float32 inputs, int64 labels), checked."""
    import torch

    if len(inputs) == 0 or len(inputs) != len(labels):
        raise UsageError(f"need as many labels as inputs, at least one: got {len(inputs)} and {len(labels)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"labels must be integer classes, got dtype {labels.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(device)
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).to(device)
    return x, y


def _find_layers(module: torch.nn.Module, conv_bits: int, fc_bits: int, min_elements: int) -> list[_Layer]:
    """Every Conv/ConvTranspose/Linear weight once (a tied weight under its first module)."""
    import torch
    from torch import nn

    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    layers: list[_Layer] = []
    seen: set[int] = set()
    for name, sub in module.named_modules():
        if not isinstance(sub, (*conv_types, nn.Linear)) or id(sub.weight) in seen:
            continue
        seen.add(id(sub.weight))
        kind, bits = ("conv", conv_bits) if isinstance(sub, conv_types) else ("fc", fc_bits)
        weight_name = f"{name}.weight" if name else "weight"
        skipped = ""
        if sub.weight.numel() < min_elements:
            skipped = f"{sub.weight.numel()} < min_elements {min_elements}"
        elif sub.weight.dtype != torch.float32:
            raise UsageError(
                f"weight {weight_name} is {sub.weight.dtype}; deep_compress_module trains float32 "
                "weights: call module.float() first and cast after compressing"
            )
        layers.append(_Layer(weight_name, kind, sub.weight, bits, skipped))
    return layers


def _prune_phase(
    module: torch.nn.Module,
    layers: list[_Layer],
    data: _Data,
    sparsity: float,
    epochs: int,
    lr: float,
    progress: collections.abc.Callable[[EpochProgress], None] | None,
) -> FinetunePhase:
    """Prune every layer to ``sparsity`` and retrain everything with the masks held."""
    import torch

    start = time.perf_counter()
    accuracy_start = _accuracy(module, data)
    if sparsity > 0:
        with torch.no_grad():
            for layer in layers:
                pruned = prune_array(layer.weight.detach().cpu().numpy(), sparsity) == 0
                layer.pruned = torch.from_numpy(pruned).to(layer.weight.device)
                layer.weight.masked_fill_(layer.pruned, 0.0)  # +0.0, never -0.0
    accuracy_compressed = _accuracy(module, data)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    def update() -> None:
        for layer in layers:
            if layer.pruned is not None and layer.weight.grad is not None:
                layer.weight.grad.masked_fill_(layer.pruned, 0.0)
        optimizer.step()
        with torch.no_grad():
            for layer in layers:
                if layer.pruned is not None:
                    # Adam moves a weight whose gradient is zero only through its moments
                    # (which stay zero here); re-masking makes "stays zero" exact regardless.
                    layer.weight.masked_fill_(layer.pruned, 0.0)

    _run_epochs(module, data, "prune", epochs, update, progress)
    accuracy_end = _accuracy(module, data)
    seconds = time.perf_counter() - start
    return FinetunePhase("prune", epochs, accuracy_start, accuracy_compressed, accuracy_end, seconds)


def _share_phase(
    module: torch.nn.Module,
    layers: list[_Layer],
    data: _Data,
    epochs: int,
    lr: float,
    progress: collections.abc.Callable[[EpochProgress], None] | None,
) -> FinetunePhase:
    """Share every layer's kept values, then train the centroids on summed cluster gradients."""
    import torch

    start = time.perf_counter()
    accuracy_start = _accuracy(module, data)
    for layer in layers:
        sharing = share_weights(layer.weight.detach().cpu().numpy(), layer.bits)
        device = layer.weight.device
        layer.positions = torch.from_numpy(sharing.positions).to(device)
        layer.indices = torch.from_numpy(sharing.indices.astype(np.int64)).to(device)
        layer.centroids = torch.from_numpy(sharing.codebook.copy()).to(device).requires_grad_()
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(sharing.decode()))
    accuracy_compressed = _accuracy(module, data)
    centroids = [layer.centroids for layer in layers if layer.centroids is not None]
    if not centroids:  # torch's optimizers refuse an empty parameter list
        seconds = time.perf_counter() - start
        return FinetunePhase("share", 0, accuracy_start, accuracy_compressed, accuracy_compressed, seconds)
    optimizer = torch.optim.Adam(centroids, lr=lr)

    def update() -> None:
        for layer in layers:
            assert layer.centroids is not None and layer.indices is not None and layer.positions is not None
            grad = layer.weight.grad
            if grad is None:  # the layer took no part in this forward pass
                layer.centroids.grad = None
                continue
            # Eq. 3 of the paper: a centroid's gradient is the sum over the weights sharing it.
            cluster_grad = torch.zeros_like(layer.centroids)
            layer.centroids.grad = cluster_grad.index_add_(
                0, layer.indices, grad.reshape(-1)[layer.positions]
            )
        optimizer.step()
        with torch.no_grad():
            for layer in layers:
                assert layer.centroids is not None and layer.indices is not None
                layer.weight.view(-1)[layer.positions] = layer.centroids[layer.indices]

    # Only the shared weights need gradients (to be summed into the centroids).
    trainable = {id(layer.weight) for layer in layers}
    frozen = [p for p in module.parameters() if p.requires_grad and id(p) not in trainable]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        _run_epochs(module, data, "share", epochs, update, progress)
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
    accuracy_end = _accuracy(module, data)
    seconds = time.perf_counter() - start
    return FinetunePhase("share", epochs, accuracy_start, accuracy_compressed, accuracy_end, seconds)


def _run_epochs(
    module: torch.nn.Module,
    data: _Data,
    phase: str,
    epochs: int,
    update: collections.abc.Callable[[], None],
    progress: collections.abc.Callable[[EpochProgress], None] | None,
) -> None:
    """Train ``epochs`` epochs of shuffled mini-batches; ``update`` applies each step's gradients."""
    import torch

    module.train()
    count = len(data.inputs)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(count, generator=data.generator).to(data.inputs.device)
        loss_sum, correct = 0.0, 0
        for begin in range(0, count, data.batch_size):
            batch = order[begin : begin + data.batch_size]
            module.zero_grad(set_to_none=True)
            logits = module(data.inputs[batch])
            loss = torch.nn.functional.cross_entropy(logits, data.labels[batch])
            torch.autograd.backward(loss)
            update()
            loss_sum += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(dim=1) == data.labels[batch]).sum())
        logger.debug("%s epoch %d/%d: loss %.4f", phase, epoch, epochs, loss_sum / count)
        if progress is not None:
            progress(EpochProgress(phase, epoch, epochs, loss_sum / count, correct / count))


def _accuracy(module: torch.nn.Module, data: _Data) -> float:
    """Top-1 of ``module`` (eval mode) on the training data."""
    import torch

    module.eval()
    correct = 0
    with torch.no_grad():
        for begin in range(0, len(data.inputs), _EVAL_BATCH):
            logits = module(data.inputs[begin : begin + _EVAL_BATCH])
            correct += int((logits.argmax(dim=1) == data.labels[begin : begin + _EVAL_BATCH]).sum())
    return correct / len(data.inputs)


def _layer_result(layer: _Layer) -> FinetuneLayer:
    """The layer's final sparsity and distinct values (checked against its codebook size)."""
    weight = layer.weight.detach().cpu().numpy().reshape(-1)
    kept = weight[weight != 0]
    sparsity = 1 - kept.size / weight.size if weight.size else 0.0
    bits = None if layer.skipped else layer.bits
    distinct = int(np.unique(kept).size)
    assert layer.skipped or distinct <= 2**layer.bits, (layer.name, distinct)  # W = C[I] by construction
    return FinetuneLayer(layer.name, layer.kind, int(weight.size), sparsity, bits, distinct, layer.skipped)
