"""The exact, invertible scrambling of one weight tensor (pure numpy, used by ``scramble-weights``).

A tensor ``W`` of ``N`` elements is stored as a flat tensor ``T`` of ``N`` elements with

    W.flat = (T.reshape(-1, L) * inverse_scale).reshape(-1)[index]      (exactly, bit for bit)

``index`` (int32, or int64 past 2**31 elements) and ``inverse_scale`` (``L`` factors, see
``period``) live in the operator library; only ``T`` stays in the model. Two encodings,
chosen by the tensor's entropy:

* *permutation* (most weights): ``T = W.flat[p] * s`` for a random permutation ``p`` and
  random factors ``s = ±2**k``, ``k`` in -2..2, repeating every ``L`` elements of ``T``;
  ``index = argsort(p)``. Multiplying by a power of two and back is exact unless it under-
  or overflows; a column of ``T`` where that happens gets ``s = ±1``.
* *table* (at most N/2 distinct values, e.g. LayerNorm's ones and zeros, a mask): ``T`` holds
  each distinct value once at a random position, every other element is a random decoy of the
  tensor's scale; ``index`` points each element at its value. A tensor of zeros therefore
  leaves no run of zero bytes behind, which a permutation alone would.

Integers and booleans get no scale (``inverse_scale`` is None). The draw is repeated (up to
``tries`` times) until ``|corr(T, W.flat)|`` is at most ``max_correlation``; a constant ``W``
has no correlation with anything.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Scrambled", "can_scramble", "correlation", "period", "scramble", "unscramble"]

_EXPONENTS = np.array([-2, -1, 0, 1, 2])
_MIN_PERIOD, _MAX_PERIOD = 16, 256


@dataclasses.dataclass(frozen=True)
class Scrambled:
    """A scrambled tensor: what the model stores and what the library needs to undo it.

    Attributes:
        stored: The flat tensor kept in the model (the original dtype, N elements).
        index: Where each original element is found in ``stored`` (N entries).
        inverse_scale: Factors (powers of two) to multiply ``stored`` by first, one per
            element of a period that repeats along ``stored``; None for integers and booleans.
        shape: The original shape.
    """

    stored: np.ndarray
    index: np.ndarray
    inverse_scale: np.ndarray | None
    shape: tuple[int, ...]


def can_scramble(array: np.ndarray) -> bool:
    """Whether ``array``'s dtype is one numpy and onnxruntime both compute with (not bfloat16/float8)."""
    return array.dtype.kind in "fiub" and array.size > 0


def unscramble(scrambled: Scrambled) -> np.ndarray:
    """The original tensor, as the library's Mul/Gather/Reshape compute it."""
    flat = scrambled.stored
    if scrambled.inverse_scale is not None:
        flat = (flat.reshape(-1, scrambled.inverse_scale.size) * scrambled.inverse_scale).reshape(-1)
    original: np.ndarray = flat[scrambled.index].reshape(scrambled.shape)
    return original


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-size tensors, flattened, over finite pairs; 0 if one is constant."""
    x = a.astype(np.float64).reshape(-1)
    y = b.astype(np.float64).reshape(-1)
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() < 2:
        return 0.0
    x, y = x[finite] - x[finite].mean(), y[finite] - y[finite].mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 and np.isfinite(denominator) else 0.0


def scramble(
    array: np.ndarray, rng: np.random.Generator, *, max_correlation: float = 0.05, tries: int = 64
) -> Scrambled:
    """Scramble ``array`` (see the module docstring); the best of ``tries`` draws by correlation."""
    flat = np.ascontiguousarray(array).reshape(-1)
    # Distinct bit patterns, not values: -0.0 and 0.0 (and NaN payloads) must come back as they were.
    keys = flat.view(_bits(flat.dtype)) if flat.dtype.kind == "f" else flat
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    values = unique_keys.view(flat.dtype) if flat.dtype.kind == "f" else unique_keys
    best: Scrambled | None = None
    best_corr = np.inf
    for _ in range(tries):
        if 2 * len(values) <= flat.size:
            stored, index = _table(flat, values, inverse.reshape(-1), rng)
        else:
            order = rng.permutation(flat.size)
            stored, index = flat[order], np.argsort(order)
        stored, inverse_scale = _scaled(stored, rng)
        candidate = Scrambled(
            stored, index.astype(_index_dtype(flat.size)), inverse_scale, tuple(array.shape)
        )
        corr = abs(correlation(stored, flat))
        if corr < best_corr:
            best, best_corr = candidate, corr
        if corr <= max_correlation:
            break
    assert best is not None
    return best


def _table(
    flat: np.ndarray, values: np.ndarray, inverse: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Decoys everywhere, each distinct value once at a random position."""
    positions = rng.choice(flat.size, size=len(values), replace=False)
    if flat.dtype.kind == "f":
        finite = flat[np.isfinite(flat)].astype(np.float64)
        spread = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        limit = float(np.finfo(flat.dtype).max) / 8
        stored = np.clip(rng.standard_normal(flat.size) * min(spread, limit / 8), -limit, limit).astype(
            flat.dtype
        )
    elif flat.dtype.kind == "b":
        stored = rng.integers(0, 2, flat.size).astype(flat.dtype)
    else:
        info = np.iinfo(flat.dtype)
        low = max(int(values.min()) - 1000, info.min)
        high = min(int(values.max()) + 1000, info.max)
        stored = rng.integers(low, high, flat.size, endpoint=True).astype(flat.dtype)
    stored[positions] = values
    return stored, positions[inverse]


def period(size: int) -> int:
    """Length of the repeating factor pattern: a divisor of ``size`` in 16..256, else ``size``.

    A short pattern keeps the library small (one index per element, the factors once per
    period); weight sizes are products of channel counts and kernel sizes, so nearly all have
    such a divisor.
    """
    for length in range(min(size, _MAX_PERIOD), _MIN_PERIOD - 1, -1):
        if size % length == 0:
            return length
    return size


def _scaled(stored: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """``stored * s`` with random ``s = ±2**k`` repeating every ``period`` elements, exact on the way back.

    A column (residue modulo the period) where some element would under- or overflow gets
    ``s = ±1`` instead.
    """
    if stored.dtype.kind != "f":
        return stored, None
    length = period(stored.size)
    signs = rng.choice(np.array([-1.0, 1.0]), length)
    factors = (signs * np.exp2(rng.choice(_EXPONENTS, length))).astype(stored.dtype)
    grid = stored.reshape(-1, length)
    bits = _bits(stored.dtype)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        inverse_scale = (1 / factors).astype(stored.dtype)
        inexact = ((grid * factors * inverse_scale).view(bits) != grid.view(bits)).any(axis=0)
    factors[inexact] = signs[inexact]
    inverse_scale[inexact] = signs[inexact]
    return (grid * factors).reshape(-1), inverse_scale


def _bits(dtype: np.dtype) -> type:
    return {2: np.uint16, 4: np.uint32, 8: np.uint64}[dtype.itemsize]


def _index_dtype(size: int) -> type:
    return np.int32 if size < 2**31 else np.int64
