"""Calibration and evaluation data from a folder: ``.npy`` / ``.npz`` files, or images + a pipeline.

``open_samples`` picks the reader for ``--calib DIR``: ``CalibrationData`` (numpy files,
below) or, with a pipeline, ``ImageFolderData`` (images decoded and preprocessed by the
``pipeline.yaml`` steps of the model input). ``EvalData`` reads ``--eval DIR`` for the
accuracy-aware mode: the same files, plus labels.

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

Image folders (``ImageFolderData``): every file with an image suffix (``IMAGE_SUFFIXES``,
case-insensitive) in the folder and its subfolders, in sorted path order, other files ignored.
The pipeline must have one input chain, named after the model's one input (for example
``decode_image``, ``resize``, ``center_crop``, ``to_tensor``, ``normalize``). Every file's
header is read up front (a file that is not an image fails before any sample runs); each
image is then decoded when its batch comes, and a step that cannot process it raises a
``CalibrationError`` naming the file. The preprocessed shape must fit the model input.

Eval folders (``EvalData``): numpy files as above, where each ``.npz`` may also hold a
``labels`` array: integer class indices, one per sample of the file (shape ``[N]``, or a
scalar for a one-sample file). Either every file has labels (top-1 accuracy can be measured)
or none has (the accuracy-aware mode compares against the float model's outputs instead); a
``.npy`` file has no labels. An image eval folder (with a pipeline) has no labels.
"""

from __future__ import annotations

import collections.abc
import os
import typing
import zipfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
from PIL import Image, UnidentifiedImageError

from modelpress.errors import CalibrationError, UsageError

__all__ = ["IMAGE_SUFFIXES", "LABELS_KEY", "CalibrationData", "EvalData", "ImageFolderData", "open_samples"]

_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LABELS_KEY = "labels"
# Images preprocessed per batch when the model's batch dim is dynamic.
_IMAGE_BATCH = 32
Feeds = dict[str, np.ndarray]
# (shape, dtype, array) of one stored array; the array is None when only its header was read.
_Entry = tuple[tuple[int, ...], np.dtype, object]


class CalibrationData:
    """The calibration samples in ``folder`` for ``model``: iterable, re-iterable, lazy.

    Args:
        folder: Folder of ``.npy`` / ``.npz`` files (other files are ignored).
        model: The model the samples feed (its graph inputs give names, dtypes, shapes).
        num_samples: Use at most this many samples (the first ones, in file order).
        ignored_keys: ``.npz`` keys that are not model inputs (``EvalData`` passes ``labels``).

    Raises:
        CalibrationError: the folder is missing or holds no ``.npy``/``.npz`` file, or a
            file's arrays do not fit the model's inputs (checked from headers).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        model: ir.Model,
        *,
        num_samples: int | None = None,
        ignored_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.folder = Path(folder)
        self.ignored_keys = ignored_keys  # .npz keys that are not inputs (EvalData: labels)
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
            images = len(_image_files(self.folder))
            hint = (
                f"; it holds {images} image file(s): pass --calib-pipeline pipeline.yaml to preprocess them"
                if images
                else ""
            )
            raise CalibrationError(
                f"calibration folder '{self.folder}' holds no .npy or .npz file ({others} other entries); "
                f"save one sample or one batch per file with numpy.save / numpy.savez{hint}"
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

    def _arrays(self, path: Path, *, headers: bool) -> dict[str, _Entry]:
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

    def _map_to_inputs(self, path: Path, entries: dict[str, _Entry]) -> dict[str, _Entry]:
        entries = {k: v for k, v in entries.items() if k not in self.ignored_keys}
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


def _npy_entry(path: Path, headers: bool) -> _Entry:
    if headers:
        with path.open("rb") as f:
            shape, dtype = _read_header(f)
        return shape, dtype, None
    array = np.load(path, allow_pickle=False)
    return array.shape, array.dtype, array


def _npz_entries(path: Path, headers: bool) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    if headers:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".npy"):
                    with archive.open(member) as f:
                        entries[member[: -len(".npy")]] = (*_read_header(f), None)
        return entries
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            array = archive[key]
            entries[key] = (array.shape, array.dtype, array)
    return entries


def _read_header(stream: typing.IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
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


def _show(shape: tuple[object, ...]) -> str:
    return (
        "["
        + ", ".join(str(d) if isinstance(d, int) else (getattr(d, "value", None) or "?") for d in shape)
        + "]"
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def open_samples(
    folder: str | os.PathLike[str],
    model: ir.Model,
    *,
    pipeline: object | None = None,
    num_samples: int | None = None,
) -> CalibrationData | ImageFolderData:
    """The reader for ``--calib DIR``: numpy files, or images when a pipeline is given.

    Args:
        folder: The calibration folder.
        model: The model the samples feed.
        pipeline: A ``modelpress.pipeline.Pipeline`` or the path of its YAML file.
        num_samples: Use at most this many samples.
    """
    if pipeline is None:
        return CalibrationData(folder, model, num_samples=num_samples)
    return ImageFolderData(folder, model, pipeline, num_samples=num_samples)


class ImageFolderData:
    """Images in ``folder`` (and subfolders) preprocessed by ``pipeline``: iterable, re-iterable, lazy.

    Args:
        folder: Folder of images (``IMAGE_SUFFIXES``; other files are ignored).
        model: The model the samples feed (one input).
        pipeline: A ``Pipeline`` or the path of its YAML file; its input chain named after the
            model input turns a list of image paths into the input tensor.
        num_samples: Use at most this many images (the first ones, in sorted path order).

    Raises:
        CalibrationError: the folder is missing or holds no image, a file is not a readable
            image, or the pipeline does not fit the model (one input chain, named after the
            model's one input).
        UsageError: the pipeline file is unreadable or invalid.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        model: ir.Model,
        pipeline: object,
        *,
        num_samples: int | None = None,
    ) -> None:
        from modelpress.pipeline import Pipeline

        self.folder = Path(folder)
        if num_samples is not None and num_samples < 1:
            raise CalibrationError(f"--num-samples {num_samples}: give at least 1 sample")
        self.pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline.from_yaml(pipeline)  # type: ignore[arg-type]
        inputs = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
        chains = list(self.pipeline.inputs)
        if len(inputs) != 1 or chains != [inputs[0].name]:
            raise CalibrationError(
                f"image calibration feeds one model input through one pipeline chain; the model has "
                f"input(s) {', '.join(str(v.name) for v in inputs)} and the pipeline preprocesses "
                f"{', '.join(chains) or 'nothing'}; name the pipeline's input chain after the model input"
            )
        self.input = inputs[0]
        if not self.folder.is_dir():
            what = "does not exist" if not self.folder.exists() else "is not a folder"
            raise CalibrationError(f"image folder '{self.folder}' {what}; pass a folder of images")
        self.files = _image_files(self.folder)
        if not self.files:
            raise CalibrationError(
                f"image folder '{self.folder}' holds no image ({', '.join(IMAGE_SUFFIXES)}), "
                "subfolders included"
            )
        for path in self.files:
            _check_image_header(path)
        self.total = min(len(self.files), num_samples or len(self.files))
        shape = self.input.shape
        static = shape[0] if shape is not None and len(shape) and isinstance(shape[0], int) else None
        self.batch = static or _IMAGE_BATCH

    def __len__(self) -> int:
        """Number of images that iteration yields."""
        return self.total

    def __iter__(self) -> collections.abc.Iterator[Feeds]:
        """Feeds of ``batch`` images each (the model's static batch size, else 32)."""
        files = self.files[: self.total]
        for start in range(0, len(files), self.batch):
            arrays = [self._preprocess(path) for path in files[start : start + self.batch]]
            yield {str(self.input.name): np.concatenate(arrays)}

    def _preprocess(self, path: Path) -> np.ndarray:
        name = str(self.input.name)
        try:
            array = np.asarray(self.pipeline.preprocess({name: [path]})[name])
        except UsageError as e:
            raise CalibrationError(f"{path}: {e}") from e
        want = tuple(self.input.shape) if self.input.shape is not None else None
        if want is not None and (
            len(want) != array.ndim
            or any(isinstance(w, int) and w != f for w, f in zip(want[1:], array.shape[1:], strict=True))
        ):
            raise CalibrationError(
                f"{path}: the pipeline makes input '{name}' {list(array.shape)}, the model expects "
                f"{_show(want)}; fix the pipeline's resize / center_crop / to_tensor steps"
            )
        expected = self.input.dtype.numpy() if self.input.dtype is not None else array.dtype
        if not _same_kind(array.dtype, np.dtype(expected)):
            raise CalibrationError(
                f"{path}: the pipeline makes {array.dtype.name} data, input '{name}' expects "
                f"{np.dtype(expected).name}; add a cast step or to_tensor"
            )
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise CalibrationError(f"{path}: preprocessing gives NaN/Inf values; check the normalize step")
        return array.astype(expected, copy=False)


def _check_image_header(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  (the header is read by open; size proves it parsed)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise CalibrationError(f"{path}: not a readable image: {e}; remove or replace the file") from e


class EvalData:
    """``--eval DIR``: ``(feeds, labels or None)`` batches for the accuracy-aware mode.

    Args:
        folder: Folder of ``.npy``/``.npz`` files (``.npz`` may hold ``labels``), or of
            images when ``pipeline`` is given (no labels).
        model: The model the samples feed.
        pipeline: As for ``open_samples``.

    Raises:
        CalibrationError: as ``CalibrationData`` / ``ImageFolderData``, plus labels present in
            some files only, labels that are not integers, or a label count that is not the
            file's sample count.
    """

    def __init__(
        self, folder: str | os.PathLike[str], model: ir.Model, *, pipeline: object | None = None
    ) -> None:
        self.data: CalibrationData | ImageFolderData = (
            CalibrationData(folder, model, ignored_keys=frozenset({LABELS_KEY}))
            if pipeline is None
            else ImageFolderData(folder, model, pipeline)
        )
        self.labels: dict[Path, int] = {}
        if isinstance(self.data, CalibrationData):
            self.labels = {path: self._label_count(path) for path in self.data.files}
            has = [path for path, count in self.labels.items() if count >= 0]
            if has and len(has) != len(self.labels):
                bare = next(path for path, count in self.labels.items() if count < 0)
                raise CalibrationError(
                    f"{bare}: no '{LABELS_KEY}' array, but {has[0].name} has one; give every eval file "
                    "labels, or none (the float model's outputs are then the reference)"
                )

    @property
    def has_labels(self) -> bool:
        """Whether every file carries labels."""
        return bool(self.labels) and all(count >= 0 for count in self.labels.values())

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.data)

    def _label_count(self, path: Path) -> int:
        """Samples labelled in ``path`` (-1: no labels), checked from the headers."""
        if path.suffix != ".npz":
            return -1
        member = f"{LABELS_KEY}.npy"
        try:
            with zipfile.ZipFile(path) as archive:
                if member not in archive.namelist():
                    return -1
                with archive.open(member) as f:
                    shape, dtype = _read_header(f)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise CalibrationError(f"{path}: cannot read '{LABELS_KEY}': {e}") from e
        samples = self.data._check_headers(path)  # type: ignore[union-attr]
        if dtype.kind not in "iu" or len(shape) > 1 or (shape[0] if shape else 1) != samples:
            raise CalibrationError(
                f"{path}: '{LABELS_KEY}' must hold {samples} integer class indices (one per sample), "
                f"found {dtype.name} {list(shape)}"
            )
        return samples

    def __iter__(self) -> collections.abc.Iterator[tuple[Feeds, np.ndarray | None]]:
        """``(feeds, labels)`` batches; labels are int64 ``[batch]`` or None."""
        if not isinstance(self.data, CalibrationData) or not self.has_labels:
            for feeds in self.data:
                yield feeds, None
            return
        for path in self.data.files:
            with np.load(path, allow_pickle=False) as archive:
                labels = np.asarray(archive[LABELS_KEY], np.int64).reshape(-1)
            offset = 0
            for feeds in self.data._batches(path):
                size = _batch_size(feeds)
                yield feeds, labels[offset : offset + size]
                offset += size
