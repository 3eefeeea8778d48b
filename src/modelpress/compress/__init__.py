"""Deep Compression (Han et al. 2016), post-training: prune, share weights, Huffman-code.

``prune`` zeroes the smallest weights of each layer; ``sharing`` clusters each layer's
weights into a small codebook; ``mpz`` stores codebook indices and sparse positions
entropy-coded (DEFLATE's Huffman coding) in the ``.mpz`` container, which ``load_compressed``
decodes in memory for onnxruntime. No stage fine-tunes: their accuracy cost is reported.
"""

from __future__ import annotations

from modelpress.compress.mpz import decompress_file, is_compressed, load_compressed, load_compressed_model
from modelpress.compress.prune import LayerPrune, PruneReport, prune_file, prune_model
from modelpress.compress.sharing import SharedWeights, share_weights
from modelpress.compress.workflow import CompressReport, TensorRecord, compress_file, compress_model

__all__ = [
    "CompressReport",
    "LayerPrune",
    "PruneReport",
    "SharedWeights",
    "TensorRecord",
    "compress_file",
    "compress_model",
    "decompress_file",
    "is_compressed",
    "load_compressed",
    "load_compressed_model",
    "prune_file",
    "prune_model",
    "share_weights",
]
