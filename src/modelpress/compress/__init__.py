"""Deep Compression (Han et al. 2016): prune, share weights, Huffman-code, into ``.mpz``.

``prune`` zeroes the smallest weights of each layer (``structured`` instead removes whole
hidden channels, so the network shrinks); ``sharing`` clusters each layer's
weights into a small codebook; ``mpz`` stores codebook indices and sparse positions
entropy-coded (DEFLATE's Huffman coding) in the ``.mpz`` container, which ``load_compressed``
decodes in memory for onnxruntime. These ONNX-side stages do not retrain: their accuracy cost
is reported. ``finetune.deep_compress_module`` does the paper's retraining on a torch model
(prune + retrain, share + fine-tune the centroids) before export; ``compress_model`` then
stores its weights exactly (``retrain.retrain_and_compress``: from a torch source and data to
the ``.mpz``). ``distill`` trains a small student on a teacher's soft targets (Hinton et al.
2015). torch is imported only when those functions run.
"""

from __future__ import annotations

from modelpress.compress.distill import DistillReport, distill, distill_to_onnx
from modelpress.compress.finetune import FinetuneReport, deep_compress_module
from modelpress.compress.mpz import decompress_file, is_compressed, load_compressed, load_compressed_model
from modelpress.compress.prune import LayerPrune, PruneReport, prune_file, prune_model
from modelpress.compress.retrain import retrain_and_compress
from modelpress.compress.sharing import SharedWeights, share_weights
from modelpress.compress.structured import GroupPrune, StructuredReport, prune_channels, prune_channels_file
from modelpress.compress.workflow import CompressReport, TensorRecord, compress_file, compress_model

__all__ = [
    "CompressReport",
    "DistillReport",
    "FinetuneReport",
    "GroupPrune",
    "LayerPrune",
    "PruneReport",
    "SharedWeights",
    "StructuredReport",
    "TensorRecord",
    "compress_file",
    "compress_model",
    "decompress_file",
    "deep_compress_module",
    "distill",
    "distill_to_onnx",
    "is_compressed",
    "load_compressed",
    "load_compressed_model",
    "prune_channels",
    "prune_channels_file",
    "prune_file",
    "prune_model",
    "retrain_and_compress",
    "share_weights",
]
