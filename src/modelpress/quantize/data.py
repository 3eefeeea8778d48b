"""Calibration data from a folder of ``.npy`` / ``.npz`` files, read one file at a time.

File -> model input mapping:

* ``.npz``: one array per model input, keyed by the input's name (other keys are ignored,
  e.g. labels). A single-input model also accepts an ``.npz`` holding exactly one array under
  any key (``np.savez(f, x)`` names it ``arr_0``).
* ``.npy``: one array, only for single-input models.

Each array is either one sample (the input's shape without its first axis) or a batch (the
input's full rank). Static dims must match; a batch larger than a static batch dim (e.g. 1)
is split into batches of that size. dtypes must be of the input's kind (float64 -> float32
is cast; int64 -> float32 is refused: integer data for a float input is usually unscaled
pixels). NaN and Inf are refused.

Shapes and dtypes of every file are checked from the array headers before any sample runs,
so a bad file 900 of 1000 fails in milliseconds; the NaN/Inf check needs the data and
happens as each file is read. Files are read in sorted order with ``allow_pickle=False``
(calibration files are untrusted: never unpickled). Every error is a ``CalibrationError``
naming the file and the input.
"""

from __future__ import annotations

import collections.abc
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

from modelpress.errors import CalibrationError

__all__ = ["CalibrationData"]

_SUFFIXES = (".npy", ".npz")
Feeds = dict[str, np.ndarray]


class CalibrationData:
    """The calibration samples in ``folder`` for ``model``: iterable, re-iterable, lazy.

    Args:
        folder: Folder of ``.npy`` / ``.npz`` files (other files are ignored).
        model: The model the samples feed (its graph inputs give names, dtypes, shapes).
        num_samples: Use at most this many samples (the first ones, in file order).

    Raises:
        CalibrationError: the folder is missing or holds no ``.npy``/``.npz`` file, or a
            file's arrays do not fit the model's inputs (checked from headers).
    """

    def __init__(self, folder: str | os.PathLike, model: ir.Model, *, num_samples: int | None = None) -> None:
        self.folder = Path(folder)
        if num_samples is not None and num_samples < 1:
            raise CalibrationError(f"--num-samples {num_samples}: give at least 1 sample")
        if not self.folder.is_dir():
            what = "does not exist" if not self.folder.exists() else "is not a folder"
            raise CalibrationError(
                f"calibration folder '{self.folder}' {what}; pass a folder of .npy/.npz files"
            )
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix in _SUFFIXES and p.is_file())
        if not self.files:
            others = sum(1 for _ in self.folder.iterdir())
            raise CalibrationError(
                f"calibration folder '{self.folder}' holds no .npy or .npz file ({others} other entries); "
                "save one sample or one batch per file with numpy.save / numpy.savez"
            )
        self.inputs = {
            v.name: v for v in model.graph.inputs if v.name not in model.graph.initializers and v.name
        }
        self.num_samples = num_samples
        counts = [self._check_headers(path) for path in self.files]
        self.available = sum(counts)
        self.total = min(self.available, num_samples or self.available)

    def __len__(self) -> int:
        """Number of samples that iteration yields (``num_samples`` caps it)."""
        return self.total

    def __iter__(self) -> collections.abc.Iterator[Feeds]:
        """Feeds, one batch at a time; a file is read only when its turn comes."""
        left = self.total
        for path in self.files:
            for feeds in self._batches(path):
                size = _batch_size(feeds)
                if size > left:
                    feeds = {name: array[:left] for name, array in feeds.items()}
                    size = left
                yield feeds
                left -= size
                if left == 0:
                    return

    def _arrays(self, path: Path, *, headers: bool) -> dict[str, tuple[tuple[int, ...], np.dtype, object]]:
        """Map each model input to (shape, dtype, array or None) for one file."""
        try:
            if path.suffix == ".npy":
                entries = {"": _npy_entry(path, headers)}
            else:
                entries = _npz_entries(path, headers)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise CalibrationError(
                f"{path}: cannot read the file: {e}; re-save it with numpy.save/savez"
            ) from e
        return self._map_to_inputs(path, entries)

    def _map_to_inputs(self, path: Path, entries: dict) -> dict:
        names = list(self.inputs)
        if len(names) == 1 and len(entries) == 1:
            return {names[0]: next(iter(entries.values()))}
        if path.suffix == ".npy":
            raise CalibrationError(
                f"{path}: a .npy file holds one array but the model has {len(names)} inputs "
                f"({', '.join(names)}); save an .npz with one array per input name"
            )
        missing = [n for n in names if n not in entries]
        if missing:
            raise CalibrationError(
                f"{path}: no array for input(s) {', '.join(missing)}; the file has keys "
                f"{', '.join(sorted(entries)) or '(none)'}; name each array after its model input"
            )
        return {n: entries[n] for n in names}

    def _check_headers(self, path: Path) -> int:
        """Validate the shapes/dtypes of a file from its headers; returns its sample count."""
        mapped = self._arrays(path, headers=True)
        sizes = {
            name: self._check_array(path, name, shape, dtype)[0] for name, (shape, dtype, _) in mapped.items()
        }
        if len(set(sizes.values())) > 1:
            raise CalibrationError(
                f"{path}: inputs hold different numbers of samples ({sizes}); each file must hold "
                "the same batch for every input"
            )
        count = next(iter(sizes.values()))
        if count == 0:
            raise CalibrationError(f"{path}: holds no samples (a batch of size 0); remove the file")
        return count

    def _check_array(
        self, path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype
    ) -> tuple[int, bool]:
        """(samples, is_single_sample) after checking rank, static dims and dtype."""
        value = self.inputs[name]
        want = tuple(value.shape) if value.shape is not None else None
        expected_dtype = value.dtype.numpy() if value.dtype is not None else dtype
        if not _same_kind(np.dtype(dtype), np.dtype(expected_dtype)):
            raise CalibrationError(
                f"{path}: input '{name}' expects {np.dtype(expected_dtype).name}, found {dtype.name}; "
                "convert the data to the input's dtype"
            )
        if want is None or not want:  # unknown rank, or a scalar input: one sample per file
            return (shape[0] if shape and want is None else 1), False
        single = len(shape) == len(want) - 1
        full = (1, *shape) if single else shape
        if len(full) != len(want) or any(
            isinstance(w, int) and w >= 0 and w != f
            for i, (w, f) in enumerate(zip(want, full, strict=True))
            if i or single
        ):
            raise CalibrationError(
                f"{path}: input '{name}' expects shape {_show(want)} (or one sample {_show(want[1:])}), "
                f"found {list(shape)}; fix the array's shape"
            )
        return full[0], single

    def _batches(self, path: Path) -> collections.abc.Iterator[Feeds]:
        feeds = {}
        for name, (shape, dtype, array) in self._arrays(path, headers=False).items():
            _, single = self._check_array(path, name, shape, dtype)
            data = np.asarray(array)
            if data.dtype.kind in "fc" and not np.isfinite(data).all():
                bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
                raise CalibrationError(
                    f"{path}: input '{name}' holds {bad} NaN/Inf value(s); clean the calibration data"
                )
            value = self.inputs[name]
            data = data.astype(value.dtype.numpy(), copy=False) if value.dtype is not None else data
            feeds[name] = data[None] if single else data
        yield from _split_static_batch(path, feeds, self.inputs)


def _split_static_batch(
    path: Path, feeds: Feeds, inputs: dict[str, ir.Value]
) -> collections.abc.Iterator[Feeds]:
    """Cut a batch into the model's static batch size, when it has one."""
    static = {
        name: v.shape[0]
        for name, v in inputs.items()
        if v.shape is not None and len(v.shape) and isinstance(v.shape[0], int)
    }
    size = _batch_size(feeds)
    if any(np.ndim(array) == 0 for array in feeds.values()):
        yield feeds
        return
    step = min(static.values(), default=size) or size
    if size % step:
        raise CalibrationError(
            f"{path}: a batch of {size} cannot be split into the model's static batch size {step}; "
            f"save a multiple of {step} samples per file"
        )
    for start in range(0, size, step):
        yield {name: array[start : start + step] for name, array in feeds.items()}


def _npy_entry(path: Path, headers: bool) -> tuple[tuple[int, ...], np.dtype, object]:
    if headers:
        with path.open("rb") as f:
            shape, dtype = _read_header(f)
        return shape, dtype, None
    array = np.load(path, allow_pickle=False)
    return array.shape, array.dtype, array


def _npz_entries(path: Path, headers: bool) -> dict[str, tuple[tuple[int, ...], np.dtype, object]]:
    if headers:
        entries = {}
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".npy"):
                    with archive.open(member) as f:
                        entries[member[: -len(".npy")]] = (*_read_header(f), None)
        return entries
    entries = {}
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            array = archive[key]
            entries[key] = (array.shape, array.dtype, array)
    return entries


def _read_header(stream: object) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(stream)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = reader(stream)
    if dtype.hasobject:
        raise ValueError("it holds Python objects (pickled data is refused)")
    return tuple(shape), dtype


def _same_kind(found: np.dtype, expected: np.dtype) -> bool:
    """Floats feed floats (any width), integers feed integers, booleans feed booleans."""
    if found.kind in "iu" and expected.kind in "iu":
        return bool(np.can_cast(found, expected, casting="same_kind"))
    return found.kind == expected.kind


def _batch_size(feeds: Feeds) -> int:
    first = next(iter(feeds.values()), None)
    return 0 if first is None else (len(first) if np.ndim(first) else 1)


def _show(shape: tuple) -> str:
    return (
        "["
        + ", ".join(str(d) if isinstance(d, int) else (getattr(d, "value", None) or "?") for d in shape)
        + "]"
    )
