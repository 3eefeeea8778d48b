"""GPTQ for 4-bit block-wise weights: round each row, push its error onto the rows not yet rounded.

Round-to-nearest (``blockwise.quantize_blocks``) minimizes the error of each weight alone. What
matters is the error of the layer's output ``X @ W`` on real inputs ``X``: GPTQ (Frantar et
al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers") minimizes ``||X W - X Q||^2`` column-block by column-block with the inputs'
second moment ``H = X^T X / n`` (``K x K``, from calibration data):

for each row ``k`` of ``W [K, N]`` (an input feature), in order::

    q_k  = round(w_k)                                 (its block's scale and zero point)
    e_k  = (w_k - q_k) / U[k, k]                      (U: upper Cholesky factor of H^-1)
    w_j -= U[k, j] * e_k   for every later row j      (the optimal compensation)

with ``H`` damped by 1 % of its mean diagonal (``H + 0.01 * mean(diag H) * I``, the paper's
default) and rows of dead inputs (``H[k, k] = 0``) set to zero. Updates are applied lazily in
batches of 128 rows (the paper's "lazy batch" trick: exact, fewer passes over ``W``). A block's
scale and zero point come from the block's *updated* weights when its first row is reached
(the paper's grouping), with the same formulas and rounding as round-to-nearest, so the result
is stored in exactly the same format (MatMulNBits or blocked DequantizeLinear); only the
levels differ.

Memory: ``H`` is accumulated per distinct MatMul input while the calibration data streams
through the float model (``collect_hessians``): one ``K x K`` float64 matrix per input,
whatever the number of samples. Every MatMul sees inputs from the *float* model (not the
partly quantized one): one calibration pass instead of one per layer.
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir

from modelpress.errors import CalibrationError
from modelpress.quantize.blockwise import BlockQuantized, quantize_blocks, round_levels
from modelpress.quantize.calibrate import _session_with_outputs, _values_by_name
from modelpress.runtime.session import run_session

__all__ = ["DAMPING", "collect_hessians", "gptq_quantize", "inverse_factor"]

DAMPING = 0.01  # fraction of the mean diagonal added to H (GPTQ's percdamp)
_LAZY_ROWS = 128
_FLUSH_ROWS = 1024  # rows buffered per tensor before they are folded into X^T X
Feeds = collections.abc.Mapping[str, np.ndarray]


def collect_hessians(
    model: ir.Model,
    samples: collections.abc.Iterable[Feeds],
    names: collections.abc.Sequence[str],
    *,
    on_batch: collections.abc.Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """``H = X^T X / n`` of each tensor in ``names`` over the samples (``X``: its rows of the last axis).

    Raises:
        CalibrationError: no sample, an unknown tensor, or NaN/Inf in an observed tensor.
    """
    inputs = {v.name for v in model.graph.inputs}
    fetched = [name for name in names if name not in inputs]
    values = _values_by_name(model.graph, set(fetched))
    session = _session_with_outputs(model, [values[name] for name in fetched])
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = dict.fromkeys(names, 0)
    pending: dict[str, list[np.ndarray]] = {name: [] for name in names}

    def flush(name: str) -> None:  # one X^T X per ~1024 rows: per-sample products are slow
        if pending[name]:
            flat = np.concatenate(pending[name])
            product = flat.T @ flat
            sums[name] = product if name not in sums else np.add(sums[name], product, out=sums[name])
            pending[name].clear()

    for batch, feeds in enumerate(samples):
        outputs = run_session(session, feeds, fetched) if fetched else {}
        for name in names:
            array = np.asarray(feeds[name] if name in inputs else outputs[name], np.float64)
            flat = array.reshape(-1, array.shape[-1])
            if not np.isfinite(flat).all():
                raise CalibrationError(f"tensor '{name}' holds NaN/Inf on calibration batch {batch}")
            pending[name].append(flat)
            rows[name] += len(flat)
            if sum(len(part) for part in pending[name]) >= _FLUSH_ROWS:
                flush(name)
        if on_batch is not None:
            on_batch(len(next(iter(feeds.values()))) if feeds else 0)
    for name in names:
        flush(name)
    if not sums:
        raise CalibrationError("no calibration samples were given; GPTQ needs at least one sample")
    return {name: sums[name] / max(rows[name], 1) for name in names}


def inverse_factor(hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(dead inputs, U)`` with ``U`` upper triangular and ``U^T U = (H + damping)^-1``.

    The factor depends on the layer input only: compute it once for MatMuls sharing an input.
    """
    hessian = np.array(hessian, np.float64)
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    hessian[np.diag_indices(len(hessian))] += DAMPING * np.mean(np.diag(hessian))
    return dead, np.linalg.cholesky(np.linalg.inv(hessian)).T


def gptq_quantize(
    weight: np.ndarray,
    hessian: np.ndarray | tuple[np.ndarray, np.ndarray],
    block_size: int,
    *,
    symmetric: bool,
    style: str,
) -> BlockQuantized:
    """GPTQ levels of a ``[K, N]`` weight, blocks of ``block_size`` rows (module docstring).

    Args:
        weight: float32 ``[K, N]`` (rows: input features).
        hessian: ``X^T X / n`` of the layer's input, ``[K, K]``, or its ``inverse_factor``.
        block_size: Rows per block (one scale per block and column).
        symmetric: Zero-point-free blocks.
        style: ``nbits`` or ``qdq`` (see ``blockwise.quantize_blocks``).
    """
    work = np.array(weight, np.float64)
    rows, columns = work.shape
    dead, upper = hessian if isinstance(hessian, tuple) else inverse_factor(hessian)
    work[dead] = 0.0
    levels = np.zeros((rows, columns), np.int16)
    blocks = -(-rows // block_size)
    scales = np.zeros((blocks, columns), np.float32)
    zero_points = np.zeros((blocks, columns), np.float32)
    for start in range(0, rows, _LAZY_ROWS):
        end = min(start + _LAZY_ROWS, rows)
        errors = np.zeros((end - start, columns))
        for k in range(start, end):
            if k % block_size == 0:
                first = quantize_blocks(
                    work[k : k + block_size].astype(np.float32),
                    0,
                    block_size,
                    symmetric=symmetric,
                    style=style,
                )
                scales[k // block_size] = first.scales[0]
                if first.zero_points is not None:
                    zero_points[k // block_size] = first.zero_points[0]
            block = k // block_size
            row = work[k].astype(np.float32)
            level, dequantized = round_levels(
                row, scales[block], zero_points[block], symmetric=symmetric, style=style
            )
            levels[k] = level
            error = (work[k] - dequantized) / upper[k, k]
            work[k:end] -= np.outer(upper[k, k:end], error)
            errors[k - start] = error
        work[end:] -= upper[start:end, end:].T @ errors
    signed = symmetric and style != "nbits"
    return BlockQuantized(
        levels=levels.astype(np.int8 if signed else np.uint8),
        scales=scales,
        zero_points=None if signed else zero_points.astype(np.uint8),
        axis=0,
        block_size=block_size,
        symmetric=symmetric,
    )
