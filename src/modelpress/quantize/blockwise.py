"""Block-wise 4-bit quantization math: levels, scales, zero points and onnxruntime's packing.

Blocks are ``block_size`` consecutive elements along K (a MatMul weight's rows: one
block is one column's slice) or along H (an embedding row's slice); the last block may be
short. Per block, with ``lo``/``hi`` its min/max:

* symmetric: ``scale = m / -8`` where ``m`` is whichever of ``lo``, ``hi`` has the larger
  magnitude (so ``m`` itself maps exactly to level -8, the one 4-bit level without a positive
  twin); zero point 8 (MatMulNBits' implicit one) or 0 (signed int4);
* asymmetric: ``lo' = min(lo, 0)``, ``hi' = max(hi, 0)``, ``scale = (hi' - lo') / 15``,
  ``zero_point = round(-lo' / scale)`` clamped to ``[0, 15]`` (0 is exact);

and ``q = clamp(round(w / scale) + zero_point)``; ``w ~ (q - zero_point) * scale``; a block of
zeros gets scale 0 (and dequantizes to 0). The rounding details follow onnxruntime's own
quantizer (``onnxruntime.quantization.MatMulNBitsQuantizer``) bit for bit, so that models
from either tool hold identical weights (``tests/quantize/test_int4.py`` compares them):

* MatMul weights (MLAS ``MlasQuantizeBlockwise``): ``w * (1 / scale)`` in float32 and C's
  ``roundf`` (half away from zero); in the "ort" format the zero point is added before
  rounding (``roundf(w / scale + zp)``, in float32); the "qdq" symmetric format adds none
  (``roundf(w / scale)``, signed levels);
* Gather tables (its numpy ``quantize_ndarray``): ``w / scale`` and round-half-to-even.

Packing: two 4-bit values per byte, the first in the low nibble. MatMulNBits stores ``B`` as
``[N, ceil(K / block_size), block_size / 2]`` bytes (each column's blocks contiguous, the
nibbles past K of a short last block zero), scales ``[N, blocks]`` and zero points
``[N, ceil(blocks / 2)]`` bytes (an odd count padded with 8). GatherBlockQuantized and
DequantizeLinear take int4/uint4 tensors of the weight's own shape.
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np

__all__ = [
    "BlockQuantized",
    "dequantize_blocks",
    "pack_int4",
    "quantize_blocks",
    "round_levels",
    "to_matmul_nbits",
]


@dataclasses.dataclass(frozen=True)
class BlockQuantized:
    """One tensor quantized to 4-bit levels, block-wise along ``axis``.

    Attributes:
        levels: The 4-bit values, unpacked, with the weight's shape: int8 in ``[-8, 7]``
            (signed, zero point 0) or uint8 in ``[0, 15]``.
        scales: float32, the weight's shape with ``axis`` divided into blocks (rounded up).
        zero_points: uint8 levels of the scales' shape (asymmetric or MatMulNBits' implicit
            8), None for signed levels.
        axis: The blocked axis.
        block_size: Elements per block along ``axis``.
        symmetric: Whether the scheme was symmetric (``zero_points`` may still be all 8s).
    """

    levels: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    axis: int
    block_size: int
    symmetric: bool


def quantize_blocks(
    weight: np.ndarray, axis: int, block_size: int, *, symmetric: bool, style: str
) -> BlockQuantized:
    """Quantize ``weight`` to 4-bit levels in blocks along ``axis`` (module docstring).

    Args:
        weight: A float array.
        axis: The blocked axis.
        block_size: Elements per block.
        symmetric: Zero-point-free blocks (the block's extreme maps to -8).
        style: The rounding of onnxruntime's quantizer to reproduce: ``nbits`` (MatMulNBits:
            levels ``[0, 15]``, zero point 8 when symmetric), ``qdq`` (blocked
            DequantizeLinear of a MatMul weight: signed levels when symmetric) or ``numpy``
            (GatherBlockQuantized tables: signed levels when symmetric).
    """
    weight = np.moveaxis(np.asarray(weight, np.float32), axis, -1)
    length = weight.shape[-1]
    blocks = -(-length // block_size)
    padded = np.zeros((*weight.shape[:-1], blocks * block_size), np.float32)
    padded[..., :length] = weight
    valid = (np.arange(blocks * block_size) < length).reshape(blocks, block_size)
    grouped = padded.reshape(*weight.shape[:-1], blocks, block_size)
    low = np.where(valid, grouped, np.inf).min(axis=-1)
    high = np.where(valid, grouped, -np.inf).max(axis=-1)
    if symmetric:
        extreme = np.where(np.abs(high) > np.abs(low), high, low).astype(np.float32)
        scales = (extreme / np.float32(-8)).astype(np.float32)
        zero_points = np.full(scales.shape, 8 if style == "nbits" else 0, np.float32)
    else:
        low, high = np.minimum(low, 0).astype(np.float32), np.maximum(high, 0).astype(np.float32)
        scales = ((high - low) / np.float32(15)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (-low / scales).astype(np.float32)
        rounding = _round_half_even if style == "numpy" else _round_half_away
        zero_points = np.where(scales != 0, np.clip(rounding(ratio), 0, 15), 8 if style == "numpy" else 0)
        zero_points = zero_points.astype(np.float32)
    levels = _levels(grouped, scales, zero_points, symmetric=symmetric, style=style)
    levels = levels.reshape(padded.shape)[..., :length]
    signed = symmetric and style != "nbits"
    levels = np.moveaxis(levels.astype(np.int8 if signed else np.uint8), -1, axis)
    return BlockQuantized(
        levels=levels,
        scales=np.moveaxis(scales, -1, axis).copy(),
        zero_points=None if signed else np.moveaxis(zero_points.astype(np.uint8), -1, axis).copy(),
        axis=axis,
        block_size=block_size,
        symmetric=symmetric,
    )


def _levels(
    grouped: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, *, symmetric: bool, style: str
) -> np.ndarray:
    """Levels of ``grouped`` ([..., blocks, block_size]) in onnxruntime's exact arithmetic."""
    scale, zero_point = scales[..., None], zero_points[..., None]
    if style == "numpy":  # data / scale (+ zp), round half to even: quantize_ndarray
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (grouped / scale).astype(np.float32)
        if symmetric:
            return np.where(scale == 0, 0, np.clip(_round_half_even(ratio), -8, 7))
        shifted = (ratio + zero_point).astype(np.float32)
        return np.where(scale == 0, 8, np.clip(_round_half_even(shifted), 0, 15))
    with np.errstate(divide="ignore"):
        reciprocal = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    product = (grouped * reciprocal).astype(np.float32)
    if symmetric and style == "qdq":  # MLAS QDQ: roundf(w * (1 / scale)), signed
        return typing.cast(np.ndarray, np.clip(_round_half_away(product), -8, 7))
    return typing.cast(
        np.ndarray, np.clip(_round_half_away((product + zero_point).astype(np.float32)), 0, 15)
    )


def round_levels(
    row: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, *, symmetric: bool, style: str
) -> tuple[np.ndarray, np.ndarray]:
    """Levels and dequantized values of one weight row ``[N]`` with per-column block parameters.

    The same arithmetic as ``quantize_blocks`` (``zero_point`` is ignored for signed levels).
    """
    levels = _levels(row[:, None], scale, zero_point, symmetric=symmetric, style=style)[:, 0]
    signed = symmetric and style != "nbits"
    offset = np.float32(0) if signed else zero_point.astype(np.float32)
    return levels, ((levels.astype(np.float32) - offset) * scale).astype(np.float32)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C ``roundf`` of float32 values (exact in float64, so ``+ 0.5`` cannot round up)."""
    x64 = x.astype(np.float64)
    return np.sign(x64) * np.floor(np.abs(x64) + 0.5)


def _round_half_even(x: np.ndarray) -> np.ndarray:
    return np.round(x.astype(np.float64))


def dequantize_blocks(quantized: BlockQuantized) -> np.ndarray:
    """``(levels - zero_point) * scale`` per block: the float weight the model computes with."""

    def repeat(a: np.ndarray) -> np.ndarray:
        return np.repeat(a, quantized.block_size, axis=quantized.axis)

    length = quantized.levels.shape[quantized.axis]
    index = np.arange(length)
    scales = np.take(repeat(quantized.scales), index, axis=quantized.axis)
    levels = quantized.levels.astype(np.float32)
    if quantized.zero_points is not None:
        levels -= np.take(repeat(quantized.zero_points), index, axis=quantized.axis).astype(np.float32)
    return typing.cast(np.ndarray, (levels * scales).astype(np.float32))


def pack_int4(levels: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte, the first in the low nibble (ONNX int4/uint4 layout)."""
    flat = levels.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def to_matmul_nbits(quantized: BlockQuantized) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' ``(B, scales, zero_points)`` from ``nbits``-style levels of a ``[K, N]`` weight.

    ``zero_points`` is None for symmetric weights (MatMulNBits then assumes 8 everywhere).
    """
    assert quantized.axis == 0 and quantized.zero_points is not None, "needs nbits-style levels"
    rows, columns = quantized.levels.shape
    block = quantized.block_size
    blocks = quantized.scales.shape[0]
    padded = np.zeros((blocks * block, columns), np.uint8)
    padded[:rows] = quantized.levels  # nibbles past the last row stay 0, as onnxruntime writes them
    by_column = padded.T.reshape(columns, blocks, block)
    packed = (by_column[..., 0::2] | (by_column[..., 1::2] << 4)).astype(np.uint8)
    scales = np.ascontiguousarray(quantized.scales.T)
    if quantized.symmetric:
        return packed, scales, None
    zero_points = quantized.zero_points.T
    if blocks % 2:
        zero_points = np.concatenate([zero_points, np.full((columns, 1), 8, np.uint8)], axis=1)
    return packed, scales, (zero_points[:, 0::2] | (zero_points[:, 1::2] << 4)).astype(np.uint8)
