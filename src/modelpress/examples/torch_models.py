"""Small PyTorch models with seeded random weights, exported to ONNX as real exporters write them.

The real-model test tier and the benchmarks need graphs the way ``torch.onnx.export`` emits
them, not hand-built ones: Conv+BatchNormalization pairs (when the exporter does not fold
them), shape arithmetic around embeddings and attention, decomposed GELU, Linear layers as
MatMul+Add or Gemm. Three architectures cover the common shapes of deployed models:

* ``resnet_like``: basic residual blocks (Conv+BN+ReLU, residual Add, stride-2 downsample
  through a 1x1 Conv+BN), global average pool, Linear head;
* ``mobilenetv2_like``: inverted residual blocks (1x1 expand Conv+BN+ReLU6, depthwise 3x3
  Conv+BN+ReLU6, 1x1 project Conv+BN, residual Add when shapes allow);
* ``bert_like``: token + position embeddings, two post-norm encoder layers (Q/K/V Linear,
  scaled dot-product softmax attention with an additive mask, LayerNorm, GELU FFN).

These three are small (64x64 images, hidden 128) so that the test tier can export, optimize
and obfuscate every ``ZOO`` entry quickly. ``LARGE_ZOO`` holds full-size models for the
benchmarks only: ``mobilenetv2``, torchvision's MobileNetV2 architecture (width 1.0, 224x224
images, 3.5 M parameters). Nothing iterates over it: ``export_zoo`` exports its entries only
when named in ``models=``.

Weights are random but deterministic per seed, and BatchNorm layers carry non-trivial
affine parameters and running statistics (a few forward passes in train mode on random data),
so that folding a BatchNorm really changes the Conv weights.

Export uses the legacy TorchScript exporter (``dynamo=False``), which is still present in
torch 2.13: its ``do_constant_folding`` switch gives the two graphs users actually ship,
with BatchNorms and weight Transposes left in (off) or folded away by the exporter (on).

torch is an optional extra: it is imported inside the functions only.
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
import typing
import warnings
from pathlib import Path

if typing.TYPE_CHECKING:
    import torch

__all__ = [
    "LARGE_ZOO",
    "ZOO",
    "ZooEntry",
    "bert_like",
    "example_inputs",
    "export_onnx",
    "export_zoo",
    "mobilenetv2",
    "mobilenetv2_like",
    "resnet_like",
    "variant_name",
]

# Opset of the exports: 17 has LayerNormalization, and GELU is still decomposed (Erf).
OPSET = 17


class ZooEntry(typing.NamedTuple):
    """A zoo model: its builder and the example inputs used to export it.

    Attributes:
        build: ``build(seed) -> torch.nn.Module`` in eval mode.
        inputs: Input name -> (example shape, dtype name: ``float32`` or ``int64``).
        outputs: Output names, in order.
        dynamic_dims: Input/output name -> {axis: symbolic dim name} when exported with a
            dynamic batch. The test tier and benchmarks bind these names.
    """

    build: collections.abc.Callable[[int], torch.nn.Module]
    inputs: dict[str, tuple[tuple[int, ...], str]]
    outputs: tuple[str, ...]
    dynamic_dims: dict[str, dict[int, str]]


@contextlib.contextmanager
def _seeded(seed: int) -> collections.abc.Iterator[None]:
    """Seed torch's CPU generator for the block and restore the caller's state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _calibrate_batchnorms(module: torch.nn.Module, make_input: collections.abc.Callable[[], tuple]) -> None:
    """Give every BatchNorm random affine params and running stats from train-mode passes.

    Default BatchNorms (weight 1, bias 0, mean 0, var 1) fold into a Conv as a no-op, which
    would hide a broken fold; real running statistics make the fold change the weights.
    """
    import torch

    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            with torch.no_grad():
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.normal_(0.0, 0.1)
            layer.momentum = 0.5  # converge the running stats in a few passes
    module.train()
    with torch.no_grad():
        for _ in range(4):
            module(*make_input())
    module.eval()


def resnet_like(seed: int = 0) -> torch.nn.Module:
    """A small ResNet: stride-2 stem, three stages of two basic blocks (16/32/64 channels).

    Input ``image`` [N, 3, 64, 64]; output ``logits`` [N, 10].
    """
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + identity)

    class ResNetLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            widths = [(16, 16, 1), (16, 32, 2), (32, 64, 2)]
            blocks = []
            for c_in, c_out, stride in widths:
                blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            self.blocks = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            h = self.pool(self.blocks(self.stem(image)))
            return self.fc(torch.flatten(h, 1))

    with _seeded(seed):
        model = ResNetLike()
        _calibrate_batchnorms(model, lambda: (torch.randn(4, 3, 64, 64),))
    return model


def _mobilenet_layers() -> tuple[collections.abc.Callable[..., list[torch.nn.Module]], type[torch.nn.Module]]:
    """MobileNetV2's building blocks, shared by ``mobilenetv2_like`` and ``mobilenetv2``.

    Returns ``conv_bn(c_in, c_out, kernel, stride, groups, relu6)``, the layers of a
    Conv (no bias, "same" padding) + BatchNorm (+ ReLU6), and ``InvertedResidual(c_in, c_out,
    stride, expand)``: 1x1 expand Conv+BN+ReLU6 (absent when ``expand`` is 1, as in
    MobileNetV2's first block), depthwise 3x3 Conv+BN+ReLU6, 1x1 linear-bottleneck Conv+BN,
    and a residual Add when the stride is 1 and the channel count unchanged.
    """
    from torch import nn

    def conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int, relu6: bool) -> list[nn.Module]:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        return [*layers, nn.ReLU6()] if relu6 else layers

    class InvertedResidual(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = c_in * expand
            self.use_residual = stride == 1 and c_in == c_out
            self.body = nn.Sequential(
                *(conv_bn(c_in, hidden, 1, 1, 1, relu6=True) if expand != 1 else []),  # expand
                *conv_bn(hidden, hidden, 3, stride, hidden, relu6=True),  # depthwise
                *conv_bn(hidden, c_out, 1, 1, 1, relu6=False),  # linear bottleneck
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return x + y if self.use_residual else y

    return conv_bn, InvertedResidual


def mobilenetv2_like(seed: int = 0) -> torch.nn.Module:
    """A small MobileNetV2: stride-2 stem, five inverted residual blocks, 1x1 head conv.

    Input ``image`` [N, 3, 64, 64]; output ``logits`` [N, 10].
    """
    import torch
    from torch import nn

    conv_bn, InvertedResidual = _mobilenet_layers()

    class MobileNetV2Like(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(*conv_bn(3, 16, 3, 2, 1, relu6=True))
            config = [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2), (32, 32, 1)]
            self.blocks = nn.Sequential(*(InvertedResidual(i, o, s, expand=4) for i, o, s in config))
            self.head = nn.Sequential(*conv_bn(32, 128, 1, 1, 1, relu6=True))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, 10))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            h = self.pool(self.head(self.blocks(self.stem(image))))
            return self.classifier(torch.flatten(h, 1))

    with _seeded(seed):
        model = MobileNetV2Like()
        _calibrate_batchnorms(model, lambda: (torch.randn(4, 3, 64, 64),))
    return model


def mobilenetv2(seed: int = 0, num_classes: int = 1000) -> torch.nn.Module:
    """The full MobileNetV2: torchvision's ``mobilenet_v2`` architecture at width 1.0.

    Stride-2 stem (3 -> 32 channels), 17 inverted residual blocks in seven stages
    (expand ratio t, channels c, repeats n, first stride s), 1x1 head conv to 1280, global
    average pool, Dropout + Linear: 3,504,872 parameters at 1000 classes, like torchvision's.
    Weights use PyTorch's default init (not torchvision's); the BatchNorm statistics come
    from two 224x224 random images, to keep the build fast.

    Input ``image`` [N, 3, 224, 224]; output ``logits`` [N, num_classes].
    """
    import torch
    from torch import nn

    conv_bn, InvertedResidual = _mobilenet_layers()
    config = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(*conv_bn(3, 32, 3, 2, 1, relu6=True))
            blocks, c_in = [], 32
            for t, c, n, s in config:
                for i in range(n):
                    blocks.append(InvertedResidual(c_in, c, s if i == 0 else 1, expand=t))
                    c_in = c
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Sequential(*conv_bn(c_in, 1280, 1, 1, 1, relu6=True))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            h = self.pool(self.head(self.blocks(self.stem(image))))
            return self.classifier(torch.flatten(h, 1))

    with _seeded(seed):
        model = MobileNetV2()
        _calibrate_batchnorms(model, lambda: (torch.randn(2, 3, 224, 224),))
    return model


def bert_like(
    seed: int = 0, *, vocab: int = 1000, hidden: int = 128, heads: int = 4, layers: int = 2
) -> torch.nn.Module:
    """A small BERT encoder: embeddings, ``layers`` post-norm encoder layers, GELU FFN.

    Inputs ``input_ids`` int64 [batch, sequence] and ``attention_mask`` int64 [batch,
    sequence] (non-zero = attend); output ``last_hidden_state`` [batch, sequence, hidden].
    The mask becomes an additive -10000 bias where it is zero (BERT's convention), so any
    integer mask, random feeds included, gives finite outputs.
    """
    import torch
    from torch import nn

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)
            self.output = nn.Linear(hidden, hidden)

        def split_heads(self, x: torch.Tensor) -> torch.Tensor:
            batch, seq, _ = x.shape
            return x.view(batch, seq, heads, hidden // heads).transpose(1, 2)

        def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
            q, k, v = (self.split_heads(f(x)) for f in (self.query, self.key, self.value))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (hidden // heads) ** 0.5 + mask_bias
            context = torch.matmul(torch.softmax(scores, dim=-1), v)
            batch, _, seq, _ = context.shape
            return self.output(context.transpose(1, 2).reshape(batch, seq, hidden))

    class EncoderLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = SelfAttention()
            self.norm1 = nn.LayerNorm(hidden)
            self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
            self.norm2 = nn.LayerNorm(hidden)

        def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
            x = self.norm1(x + self.attention(x, mask_bias))
            return self.norm2(x + self.ffn(x))

    class BertLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(vocab, hidden)
            self.position_embeddings = nn.Embedding(512, hidden)
            self.norm = nn.LayerNorm(hidden)
            self.layers = nn.ModuleList(EncoderLayer() for _ in range(layers))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], dtype=torch.int64).unsqueeze(0)
            x = self.norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
            mask_bias = (attention_mask == 0).to(torch.float32)[:, None, None, :] * -10000.0
            for layer in self.layers:
                x = layer(x, mask_bias)
            return x

    with _seeded(seed):
        model = BertLike()
        for norm in model.modules():  # non-trivial LayerNorm affine params, like a trained model
            if isinstance(norm, nn.LayerNorm):
                with torch.no_grad():
                    norm.weight.uniform_(0.5, 1.5)
                    norm.bias.normal_(0.0, 0.1)
    return model.eval()


_IMAGE = {"image": ((1, 3, 64, 64), "float32")}
_IMAGE_224 = {"image": ((1, 3, 224, 224), "float32")}
_BATCH = {0: "batch"}
_TOKENS = {0: "batch", 1: "sequence"}

ZOO: dict[str, ZooEntry] = {
    "resnet_like": ZooEntry(resnet_like, _IMAGE, ("logits",), {"image": _BATCH, "logits": _BATCH}),
    "mobilenetv2_like": ZooEntry(mobilenetv2_like, _IMAGE, ("logits",), {"image": _BATCH, "logits": _BATCH}),
    "bert_like": ZooEntry(
        bert_like,
        {"input_ids": ((2, 16), "int64"), "attention_mask": ((2, 16), "int64")},
        ("last_hidden_state",),
        {"input_ids": _TOKENS, "attention_mask": _TOKENS, "last_hidden_state": _TOKENS},
    ),
}

# Full-size models for the benchmarks, kept out of ZOO: the test tier iterates over ZOO.
LARGE_ZOO: dict[str, ZooEntry] = {
    "mobilenetv2": ZooEntry(mobilenetv2, _IMAGE_224, ("logits",), {"image": _BATCH, "logits": _BATCH}),
}


def example_inputs(entry: ZooEntry, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic example tensors for ``entry``'s inputs, in order (ints in ``[0, 10)``)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for shape, dtype in entry.inputs.values():
        if dtype == "int64":
            tensors.append(torch.randint(0, 10, shape, generator=generator, dtype=torch.int64))
        else:
            tensors.append(torch.randn(shape, generator=generator))
    return tuple(tensors)


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    *,
    constant_folding: bool,
    dynamic_batch: bool = True,
    input_names: collections.abc.Sequence[str] | None = None,
    output_names: collections.abc.Sequence[str] | None = None,
    dynamic_dims: collections.abc.Mapping[str, collections.abc.Mapping[int, str]] | None = None,
) -> Path:
    """Export ``module`` with the legacy TorchScript exporter at opset 17.

    Args:
        module: The model, in eval mode.
        example_inputs: Inputs traced through the model.
        path: Destination ``.onnx`` file (written directly by torch).
        constant_folding: The exporter's ``do_constant_folding``: on folds BatchNorms into
            Convs and weight Transposes into initializers; off leaves them in the graph.
        dynamic_batch: Export symbolic dims (``dynamic_dims``, or axis 0 named ``batch`` on
            every input and output); off gives static shapes from ``example_inputs``.
        input_names: Graph input names (default ``input_0``, ``input_1``, ...).
        output_names: Graph output names (default ``output_0``, ...).
        dynamic_dims: Name -> {axis: dim name}; default batch on axis 0 of every name.

    Returns:
        The path written.
    """
    import torch

    input_names = list(input_names or [f"input_{i}" for i in range(len(example_inputs))])
    output_names = list(output_names or ["output_0"])
    dynamic_axes = None
    if dynamic_batch:
        default = {name: {0: "batch"} for name in [*input_names, *output_names]}
        dynamic_axes = {k: dict(v) for k, v in (dynamic_dims or default).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The legacy exporter warns that it is deprecated and about traced shape arithmetic.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            dynamo=False,
            do_constant_folding=constant_folding,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    return path


def variant_name(model: str, constant_folding: bool) -> str:
    """File stem of a zoo export: ``resnet_like-fold`` or ``resnet_like-nofold``."""
    return f"{model}-{'fold' if constant_folding else 'nofold'}"


def export_zoo(
    folder: str | os.PathLike,
    *,
    models: collections.abc.Iterable[str] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Export every zoo model with constant folding on and off into ``folder``.

    Files that already exist are kept (a cache: the weights are deterministic per seed, so
    delete the folder after changing a model).

    Args:
        folder: Destination folder, created if needed.
        models: Names to export, from ``ZOO`` or ``LARGE_ZOO`` (default: all of ``ZOO``).
        seed: Weight seed.

    Returns:
        Variant name (see ``variant_name``) -> path of its ``.onnx`` file.

    Raises:
        KeyError: A name in neither ``ZOO`` nor ``LARGE_ZOO``.
    """
    folder = Path(folder)
    paths: dict[str, Path] = {}
    known = {**ZOO, **LARGE_ZOO}
    for name in models or ZOO:
        if name not in known:
            raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(known)}")
        entry = known[name]
        module = None
        for folding in (False, True):
            variant = variant_name(name, folding)
            path = folder / f"{variant}.onnx"
            if not path.exists():
                module = module or entry.build(seed)
                # Export into a temporary name, then rename: an interrupted export is no cache hit.
                partial = path.with_suffix(".partial.onnx")
                export_onnx(
                    module,
                    example_inputs(entry, seed),
                    partial,
                    constant_folding=folding,
                    input_names=list(entry.inputs),
                    output_names=list(entry.outputs),
                    dynamic_dims=entry.dynamic_dims,
                )
                os.replace(partial, path)
            paths[variant] = path
    return paths
