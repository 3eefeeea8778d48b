"""Entropy coding of the ``.mpz`` streams (Deep Compression, stage 3) and sparse positions.

Han et al. 2016 (§4) Huffman-code the codebook indices and the sparse-position gaps. We do not
write a Huffman coder: DEFLATE (RFC 1951, in every Python through ``zlib``) *is* canonical
Huffman coding of its input symbols, and with the ``Z_HUFFMAN_ONLY`` strategy it is nothing
else (no LZ77 matches): one dynamic Huffman table per block, fitted to that block's byte
frequencies. That is the paper's coder, battle-tested, in C, with bounded decoding. Each
stream is also tried with DEFLATE's default strategy (LZ77 + Huffman), which wins when the
indices repeat in runs (e.g. rows of pruned weights), and the smaller result is kept; the
stream records which (both decode with the same inflater: the method is for the report).

Sparse positions follow the paper's relative indexing (§2, Figure 2): each kept value stores
the gap to the previous one in one byte; a gap over 255 is bridged with filler entries. Here a
filler is the byte 0 (a gap of 0 never occurs otherwise) meaning "advance 255, no value";
trailing fillers also cover the zeros after the last kept value, so that the gap stream alone
bounds the tensor's size (a hostile header cannot declare a huge tensor backed by no data).
"""

from __future__ import annotations

import zlib

import numpy as np

from modelpress.errors import CompressionError

__all__ = [
    "MAX_DEFLATE_RATIO",
    "can_inflate_to",
    "decode_gaps",
    "deflate_best",
    "encode_gaps",
    "gap_stream_can_cover",
    "inflate",
]

# DEFLATE cannot expand less than 1 bit per 258-byte match plus block overhead: 1032:1 is its
# ceiling. Declared decoded sizes above this (plus slack for tiny streams) are refused unread.
MAX_DEFLATE_RATIO = 1032
_SLACK_BYTES = 1024
_FILLER_STEP = 255
# Raw DEFLATE (no zlib header or checksum: the container's SHA-256 covers everything).
_WINDOW_BITS = -15


def deflate_best(data: bytes | memoryview) -> tuple[bytes, str]:
    """DEFLATE ``data`` twice, Huffman-only and default strategy; the smaller wins.

    Returns:
        (compressed bytes, "huffman" or "deflate").
    """
    candidates = []
    for method, strategy in (("huffman", zlib.Z_HUFFMAN_ONLY), ("deflate", zlib.Z_DEFAULT_STRATEGY)):
        compressor = zlib.compressobj(9, zlib.DEFLATED, _WINDOW_BITS, 9, strategy)
        candidates.append((compressor.compress(data) + compressor.flush(), method))
    return min(candidates, key=lambda item: len(item[0]))


def can_inflate_to(compressed_bytes: int, decoded_bytes: int) -> bool:
    """Whether ``compressed_bytes`` of DEFLATE can possibly decode to ``decoded_bytes``."""
    return 0 <= decoded_bytes <= MAX_DEFLATE_RATIO * compressed_bytes + _SLACK_BYTES


def inflate(data: bytes | memoryview, decoded_bytes: int, where: str) -> bytes:
    """Decode one raw DEFLATE stream that must yield exactly ``decoded_bytes`` bytes.

    Never allocates more than ``decoded_bytes`` (plus zlib's small state), whatever the input.

    Raises:
        CompressionError: the stream is corrupt, shorter or longer than declared, or followed
            by bytes that are not part of it.
    """
    if not can_inflate_to(len(data), decoded_bytes):
        raise CompressionError(
            f"{where}: declares {decoded_bytes} decoded bytes from {len(data)} stored bytes, beyond "
            f"DEFLATE's {MAX_DEFLATE_RATIO}:1 limit: the header is corrupt or hostile"
        )
    inflater = zlib.decompressobj(_WINDOW_BITS)
    try:
        # max_length 0 means "no limit" to zlib: ask for one byte when none is expected.
        out = inflater.decompress(data, max(decoded_bytes, 1))
        complete = inflater.eof and not inflater.unconsumed_tail and not inflater.unused_data
    except zlib.error as e:
        raise CompressionError(f"{where}: the compressed stream is corrupt ({e}); the file is damaged") from e
    if len(out) != decoded_bytes or not complete:
        raise CompressionError(
            f"{where}: the compressed stream does not decode to the declared {decoded_bytes} bytes "
            f"(got {len(out)}{'' if complete else ' and it does not end there'}); the file is damaged"
        )
    return out


def encode_gaps(positions: np.ndarray, size: int) -> np.ndarray:
    """The uint8 gap stream of ascending flat ``positions`` in a tensor of ``size`` elements.

    Entry ``i`` is ``positions[i] - positions[i-1]`` (the first counts from -1), when it fits
    in 1..255; longer gaps are preceded by filler zeros, each advancing 255; fillers after the
    last position leave fewer than 255 elements uncovered.
    """
    gaps = np.diff(positions.astype(np.int64), prepend=-1)
    fillers = (gaps - 1) // _FILLER_STEP
    last = int(positions[-1]) if positions.size else -1
    trailing = (size - 1 - last) // _FILLER_STEP
    ends = np.cumsum(fillers + 1)
    stream = np.zeros(int(ends[-1]) + trailing if ends.size else trailing, dtype=np.uint8)
    stream[ends - 1] = gaps - fillers * _FILLER_STEP
    return stream


def decode_gaps(stream: np.ndarray, size: int, count: int, where: str) -> np.ndarray:
    """Inverse of ``encode_gaps``: int64 ascending positions, each checked to lie in ``[0, size)``.

    Raises:
        CompressionError: the stream holds other than ``count`` positions, runs past the
            tensor's end, or leaves 255 or more of its elements uncovered.
    """
    steps = np.where(stream == 0, _FILLER_STEP, stream).astype(np.int64)
    reached = np.cumsum(steps)
    kept = stream != 0
    positions: np.ndarray = reached[kept] - 1
    covered = int(reached[-1]) if reached.size else 0
    if positions.size != count or not 0 <= size - covered < _FILLER_STEP:
        raise CompressionError(
            f"{where}: the position stream holds {positions.size} positions covering {covered} elements; "
            f"the header declares {count} values in {size} elements: the file is corrupt"
        )
    return positions


def gap_stream_can_cover(stream_bytes: int, size: int) -> bool:
    """Whether a decoded gap stream of ``stream_bytes`` entries can describe ``size`` elements."""
    return 0 <= size < _FILLER_STEP * (stream_bytes + 1)
