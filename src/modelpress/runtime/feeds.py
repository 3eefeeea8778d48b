"""Input feeds for a model: random ones of every ONNX dtype, with dynamic dims bound.

Random feeds are deterministic per seed. Floating inputs are standard normal; integer inputs
are drawn from ``[0, int_high)`` so that they are valid indices into small embedding tables
and valid shape values; booleans are fair coins; strings are short words.
"""

from __future__ import annotations

import collections.abc
import math

import numpy as np
import onnx_ir as ir

from modelpress.errors import UsageError

__all__ = ["DEFAULT_DIM", "MAX_FEED_ELEMENTS", "input_specs", "random_feeds"]

# Size given to a dynamic dimension the caller did not bind. 2 rather than 1, so that
# a broadcasting mistake along a batch axis cannot hide behind size-1 broadcasting.
DEFAULT_DIM = 2
# One random input larger than this (2**28 elements, 1 GiB of fp32) is a mistake, not a test:
# a model declaring absurd static dims, or a dynamic dim bound far too large.
MAX_FEED_ELEMENTS = 2**28
# ml_dtypes integer types (numpy kind "V"), drawn as integers rather than floats.
_SMALL_INT_NAMES = ("int2", "uint2", "int4", "uint4")


def input_specs(
    model: ir.Model, dim_values: collections.abc.Mapping[str, int] | None = None
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The concrete (numpy dtype, shape) of every graph input, dynamic dims bound.

    Args:
        model: The model whose graph inputs are described (initializers are not inputs).
        dim_values: Sizes for symbolic dims by name (e.g. ``{"batch": 8}``); the name
            ``"*"`` sets the size of every other dynamic dim (unnamed ones included).
            Unbound dims get ``DEFAULT_DIM``.

    Raises:
        UsageError: an input is not a tensor (sequence/map/optional) or has no shape, so it
            cannot be made up; a bound size is negative; or an input would be absurdly large.
    """
    bound = dict(dim_values or {})
    for name, size in bound.items():
        if not isinstance(size, int | np.integer) or size < 0:
            raise UsageError(f"dynamic dim '{name}' bound to {size!r}; give a size >= 0")
    fallback = int(bound.pop("*", DEFAULT_DIM))
    specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        if not isinstance(value.type, ir.TensorType) or value.dtype is None:
            raise UsageError(
                f"input '{value.name}' has type {value.type}, not a tensor; random feeds cannot be "
                "generated for it: pass feeds explicitly"
            )
        if value.shape is None:
            raise UsageError(
                f"input '{value.name}' has no shape (unknown rank); random feeds cannot be generated "
                "for it: pass feeds explicitly or give the input a shape"
            )
        dims = []
        for dim in value.shape:
            # Some exporters write -1 for a dynamic dim: treat it as an unnamed one.
            if isinstance(dim, int) and dim >= 0:
                dims.append(dim)
            elif isinstance(dim, int):
                dims.append(fallback)
            else:
                dims.append(int(bound.get(dim.value or "", fallback)))
        if math.prod(dims) > MAX_FEED_ELEMENTS:
            raise UsageError(
                f"input '{value.name}' would have shape {dims} ({math.prod(dims):,} elements), over "
                f"the {MAX_FEED_ELEMENTS:,} cap for a random feed; bind its dynamic dims smaller "
                "or pass feeds explicitly"
            )
        # onnx_ir names every graph input (``val_N``), so the fallback never applies.
        specs[value.name or ""] = (value.dtype.numpy(), tuple(dims))
    return specs


def random_feeds(
    model: ir.Model,
    seed: int = 0,
    *,
    dim_values: collections.abc.Mapping[str, int] | None = None,
    int_high: int = 10,
) -> dict[str, np.ndarray]:
    """Deterministic random inputs for every graph input of ``model``.

    Args:
        model: The model to feed.
        seed: Seed of the generator; the same seed gives the same feeds.
        dim_values: Sizes of dynamic dims (see ``input_specs``).
        int_high: Integer inputs are drawn from ``[0, int_high)`` (clipped to the dtype).

    Raises:
        UsageError: see ``input_specs``.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (dtype, shape) in input_specs(model, dim_values).items():
        feeds[name] = _random_array(rng, np.dtype(dtype), shape, int_high)
    return feeds


def _random_array(
    rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], int_high: int
) -> np.ndarray:
    kind = dtype.kind
    if kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if kind in "iu" or dtype.name in _SMALL_INT_NAMES:
        high = min(int_high, 2 if dtype.name in _SMALL_INT_NAMES else int_high)
        return rng.integers(0, high, size=shape).astype(dtype)
    if kind in "OSU":
        words = np.array(["alpha", "beta", "gamma", "delta"], dtype=object)
        return np.array(words[rng.integers(0, len(words), size=shape)], dtype=object).reshape(shape)
    if kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    # float16/32/64 and the ml_dtypes floats (bfloat16, float8): draw in fp32 and cast.
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)
