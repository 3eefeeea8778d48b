"""The inputs a benchmark feeds: random arrays from the model's input specs, or files from --data.

Random feeds bind each input's leading dynamic dim to the batch size (a named dim by its name,
an unnamed or ``-1`` dim through ``input_specs``' ``*`` fallback, which also sizes any other
unnamed dim) and refuse a batch size a static leading dim contradicts. Data files are ``.npy``
(named after the input) and ``.npz`` (keys are input names) in one folder, or one ``.npz``
file; their rows are repeated or cut along the first axis to fill the batch. Files are read
with ``allow_pickle=False``: data is untrusted input.
"""

from __future__ import annotations

import collections.abc
import os
from pathlib import Path

import numpy as np
import onnx_ir as ir

from modelpress.errors import UsageError
from modelpress.runtime.feeds import random_feeds

__all__ = ["batch_rows", "input_names", "load_data", "make_inputs"]

Arrays = dict[str, np.ndarray]


def load_data(path: str | os.PathLike[str]) -> Arrays:
    """Read benchmark inputs from a folder of ``.npy``/``.npz`` files, or from one ``.npz`` file.

    Raises:
        UsageError: the path is missing, holds no array, or a file is unreadable or pickled.
    """
    root = Path(path)
    if root.is_file() and root.suffix == ".npz":
        files = [root]
    elif root.is_dir():
        files = sorted(f for f in root.iterdir() if f.suffix in (".npy", ".npz") and f.is_file())
    else:
        raise UsageError(f"--data {root}: not a folder of .npy/.npz files nor a .npz file")
    arrays: Arrays = {}
    for file in files:
        try:
            loaded = np.load(file, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                arrays[file.stem] = loaded
            else:
                with loaded:
                    arrays.update({name: loaded[name] for name in loaded.files})
        except (OSError, ValueError, EOFError) as e:
            raise UsageError(
                f"{file}: not a readable array file ({e}); save with numpy, no Python objects"
            ) from e
    if not arrays:
        raise UsageError(f"--data {root}: no .npy or .npz array found")
    return arrays


def batch_rows(array: np.ndarray, batch: int) -> np.ndarray:
    """The first ``batch`` rows of ``array``, cycling through its rows when it has fewer.

    Raises:
        UsageError: a scalar or an array without rows cannot make a batch.
    """
    if array.ndim == 0 or array.shape[0] == 0:
        raise UsageError(f"a data array of shape {list(array.shape)} has no rows to make a batch of {batch}")
    rows: np.ndarray = np.take(array, np.arange(batch) % array.shape[0], axis=0)
    return rows


def input_names(model: ir.Model) -> list[str]:
    """Names of the model's graph inputs that are fed (initializers are not)."""
    # onnx_ir names every graph input (``val_N``), so the "" fallback never applies.
    return [v.name or "" for v in model.graph.inputs if v.name not in model.graph.initializers]


def make_inputs(
    model: ir.Model, batch: int, data: collections.abc.Mapping[str, np.ndarray] | None, *, where: str
) -> Arrays:
    """Inputs of one run at ``batch``: rows of ``data`` when given, random feeds otherwise.

    Args:
        model: The model (its graph inputs name and shape the feeds).
        batch: Samples per run.
        data: Arrays by input name (see ``load_data``), or None for random feeds.
        where: The model's name, for messages.

    Raises:
        UsageError: ``data`` lacks an input, or a static leading dim contradicts ``batch``.
    """
    names = input_names(model)
    if data is not None:
        missing = [name for name in names if name not in data]
        if missing:
            raise UsageError(
                f"{where}: --data has no array for input(s) {', '.join(missing)}; it holds "
                f"{', '.join(sorted(data)) or 'nothing'} (name .npy files after the inputs)"
            )
        return {name: batch_rows(np.asarray(data[name]), batch) for name in names}
    return random_feeds(model, 0, dim_values=_leading_dims(model, batch, where))


def _leading_dims(model: ir.Model, batch: int, where: str) -> dict[str, int]:
    bound: dict[str, int] = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers or value.shape is None or len(value.shape) == 0:
            continue
        dim = value.shape[0]
        if isinstance(dim, int) and dim >= 0:
            if dim != batch:
                raise UsageError(
                    f"{where}: input '{value.name}' has a fixed leading dim {dim}, so --batch {batch} "
                    f"cannot be fed; use --batch {dim} or export the model with a dynamic batch dim"
                )
        elif isinstance(dim, int) or not dim.value:
            bound["*"] = batch
        else:
            bound[dim.value] = batch
    return bound
