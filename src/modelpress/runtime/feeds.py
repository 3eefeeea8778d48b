"""Input feeds for a model: random ones of every ONNX dtype, with dynamic dims bound.

Random feeds are deterministic per seed. Floating inputs are standard normal; integer inputs
are drawn from ``[0, int_high)`` so that they are valid indices into small embedding tables
and valid shape values; booleans are fair coins; strings are short words.
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir

from modelpress.errors import UsageError

__all__ = ["DEFAULT_DIM", "input_specs", "random_feeds"]

# Size given to a dynamic dimension the caller did not bind. 2 rather than 1, so that
# a broadcasting mistake along a batch axis cannot hide behind size-1 broadcasting.
DEFAULT_DIM = 2


def input_specs(
    model: ir.Model, dim_values: collections.abc.Mapping[str, int] | None = None
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The concrete (numpy dtype, shape) of every graph input, dynamic dims bound.

    Args:
        model: The model whose graph inputs are described (initializers are not inputs).
        dim_values: Sizes for symbolic dims by name (e.g. ``{"batch": 8}``); the name
            ``"*"`` sets the size of every other dynamic dim. Unbound dims get ``DEFAULT_DIM``.

    Raises:
        UsageError: an input is not a tensor (sequence/map/optional), so it cannot be made up.
    """
    dim_values = dict(dim_values or {})
    fallback = dim_values.pop("*", DEFAULT_DIM)
    specs = {}
    initializer_names = set(model.graph.initializers)
    for value in model.graph.inputs:
        if value.name in initializer_names:
            continue
        if not isinstance(value.type, ir.TensorType) or value.dtype is None:
            raise UsageError(
                f"input '{value.name}' has type {value.type}, not a tensor; random feeds cannot be "
                "generated for it: pass feeds explicitly"
            )
        dims = []
        for dim in value.shape or ():
            if isinstance(dim, int):
                dims.append(dim)
            else:
                dims.append(int(dim_values.get(dim.value or "", fallback)))
        specs[value.name] = (value.dtype.numpy(), tuple(dims))
    return specs


def random_feeds(
    model: ir.Model,
    seed: int = 0,
    *,
    dim_values: collections.abc.Mapping[str, int] | None = None,
    int_high: int = 10,
) -> dict[str, np.ndarray]:
    """Deterministic random inputs for every graph input of ``model``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (dtype, shape) in input_specs(model, dim_values).items():
        feeds[name] = _random_array(rng, dtype, shape, int_high)
    return feeds


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], int_high: int) -> np.ndarray:
    kind = np.dtype(dtype).kind
    if kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if kind in "iu":
        return rng.integers(0, int_high, size=shape).astype(dtype)
    if kind in "OSU":
        words = np.array(["alpha", "beta", "gamma", "delta"], dtype=object)
        return words[rng.integers(0, len(words), size=shape)]
    if kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    # float16/32/64 and the ml_dtypes floats (bfloat16, float8): draw in fp32 and cast.
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)
