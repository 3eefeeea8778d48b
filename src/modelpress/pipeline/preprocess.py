"""Pre-processing steps: raw inputs (encoded images, features, categories) -> model feeds.

Image steps pass a batch along as either one ``[N, H, W, C]`` uint8 array or, while the
images still differ in size, a list of ``[H, W, C]`` arrays; ``to_tensor`` makes the model's
``[N, C, H, W]`` float tensor. Every other step works on whole arrays with numpy (no Python
loop over samples); only decoding and resizing go image by image, in Pillow's C code.

Normalization statistics (min/max, mean/std) are parameters, fixed from the training data:
computing them from the batch at hand would make a sample's features depend on the other
samples it is batched with.

Encoded images are given as bytes (or ``os.PathLike`` paths). A plain string is refused, so
that a server passing request fields through a pipeline never opens files by name.
"""

from __future__ import annotations

import io
import os
import typing

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelpress.pipeline.steps import (
    Param,
    Step,
    boolean,
    choice,
    dtype_name,
    integer,
    number,
    numbers,
    optional,
    size,
    vocabulary,
)

__all__ = [
    "CastStep",
    "CenterCropStep",
    "ClipStep",
    "DecodeImageStep",
    "MinMaxStep",
    "NormalizeStep",
    "OneHotStep",
    "OrdinalStep",
    "ResizeStep",
    "ToTensorStep",
    "ZScoreStep",
]

Images = np.ndarray | list[np.ndarray]
# 64 Mpixel: above any camera image, far below what fits in memory as RGB.
MAX_PIXELS = 2**26
_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _image_list(step: Step, value: object) -> list[np.ndarray]:
    """A batch of HWC uint8 images as a list (from a list or an NHWC array)."""
    if isinstance(value, np.ndarray) and value.ndim == 4:
        images = list(value)
    elif isinstance(value, list) and all(isinstance(v, np.ndarray) for v in value):
        images = value
    else:
        raise step.fail(
            "expects a batch of images: a list of [H, W, C] arrays or one [N, H, W, C] array "
            "(put decode_image first)"
        )
    for image in images:
        if image.ndim != 3 or image.dtype != np.uint8:
            raise step.fail(
                f"expects uint8 [H, W, C] images, got {image.dtype} {list(image.shape)}; "
                "put it before to_tensor"
            )
    return images


def _batch(images: list[np.ndarray]) -> Images:
    """One NHWC array when every image has the same shape, else the list."""
    if images and all(image.shape == images[0].shape for image in images):
        return np.stack(images)
    return images


def _hw(value: int | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


class DecodeImageStep(Step):
    """Encoded image files (JPEG, PNG, ...) -> uint8 [H, W, C] images in ``mode`` (RGB, L, RGBA).

    Input: bytes, a path object, or a list of them. Images over ``max_pixels`` are refused
    before their pixels are decoded (decompression bombs).
    """

    name = "decode_image"
    stage = "pre"
    params_spec: typing.ClassVar = {
        "mode": Param(choice("RGB", "L", "RGBA"), "RGB"),
        "max_pixels": Param(integer(minimum=1), MAX_PIXELS),
    }

    def apply(self, value: object) -> Images:
        """Decode every image of the batch."""
        items = value if isinstance(value, list | tuple) else [value]
        return _batch([self._decode(item, i) for i, item in enumerate(items)])

    def _decode(self, item: object, index: int) -> np.ndarray:
        if isinstance(item, str):
            raise self.fail(
                f"image {index} is a string; give the encoded bytes (read the file) or a pathlib.Path"
            )
        try:
            if isinstance(item, bytes | bytearray | memoryview):
                source: typing.Any = io.BytesIO(bytes(item))
            elif isinstance(item, os.PathLike):
                source = os.fspath(item)
            else:
                raise self.fail(f"image {index} is a {type(item).__name__}, not encoded image bytes")
            with Image.open(source) as image:
                pixels = image.width * image.height
                if pixels > self.params["max_pixels"]:
                    raise self.fail(
                        f"image {index} has {image.width}x{image.height} pixels, over max_pixels "
                        f"{self.params['max_pixels']}"
                    )
                array = np.asarray(image.convert(self.params["mode"]))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
            raise self.fail(f"image {index} cannot be decoded: {e}") from e
        return array[:, :, None] if array.ndim == 2 else array


class ResizeStep(Step):
    """Resize images: ``size`` N sets the shorter side to N (aspect kept), ``[H, W]`` sets both."""

    name = "resize"
    stage = "pre"
    params_spec: typing.ClassVar = {
        "size": Param(size),
        "interpolation": Param(choice(*_RESAMPLING), "bilinear"),
    }

    def apply(self, value: object) -> Images:
        """Resize every image of the batch with Pillow."""
        return _batch([self._resize(image) for image in _image_list(self, value)])

    def _target(self, height: int, width: int) -> tuple[int, int]:
        target = self.params["size"]
        if isinstance(target, list):
            return target[0], target[1]
        # The shorter side becomes `target`; the longer one is scaled and truncated (torchvision).
        if height <= width:
            return target, max(1, int(target * width / height))
        return max(1, int(target * height / width)), target

    def _resize(self, image: np.ndarray) -> np.ndarray:
        height, width = self._target(image.shape[0], image.shape[1])
        channels = image.shape[2]
        pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
        resized = np.asarray(pil.resize((width, height), _RESAMPLING[self.params["interpolation"]]))
        return resized[:, :, None] if channels == 1 else resized


class CenterCropStep(Step):
    """Cut the central ``size`` (N, or ``[H, W]``) out of every image; smaller images are refused."""

    name = "center_crop"
    stage = "pre"
    params_spec: typing.ClassVar = {"size": Param(size)}

    def apply(self, value: object) -> Images:
        """Crop every image; a uniform batch is sliced at once."""
        crop_h, crop_w = _hw(self.params["size"])
        if isinstance(value, np.ndarray) and value.ndim == 4:
            return self._crop(value, 1, crop_h, crop_w)
        return _batch([self._crop(image, 0, crop_h, crop_w) for image in _image_list(self, value)])

    def _crop(self, array: np.ndarray, axis: int, crop_h: int, crop_w: int) -> np.ndarray:
        height, width = array.shape[axis], array.shape[axis + 1]
        if height < crop_h or width < crop_w:
            raise self.fail(
                f"image of {height}x{width} is smaller than the crop {crop_h}x{crop_w}; resize first"
            )
        # Offsets rounded like torchvision's center_crop.
        top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)
        index = [slice(None)] * array.ndim
        index[axis], index[axis + 1] = slice(top, top + crop_h), slice(left, left + crop_w)
        return array[tuple(index)]


class ToTensorStep(Step):
    """uint8 [N, H, W, C] images -> float [N, C, H, W] (or NHWC) divided by ``divisor`` (255)."""

    name = "to_tensor"
    stage = "pre"
    params_spec: typing.ClassVar = {
        "divisor": Param(number(above=0.0), 255.0),
        "layout": Param(choice("nchw", "nhwc"), "nchw"),
        "dtype": Param(choice("float32", "float16", "float64"), "float32"),
    }

    def apply(self, value: object) -> np.ndarray:
        """Stack, transpose and scale the batch."""
        batch = _batch(_image_list(self, value))
        if isinstance(batch, list):
            sizes = sorted({f"{image.shape[0]}x{image.shape[1]}" for image in batch})
            raise self.fail(
                f"images differ in size ({', '.join(sizes)}); add resize or center_crop before it"
            )
        if self.params["layout"] == "nchw":
            batch = batch.transpose(0, 3, 1, 2)
        dtype = np.dtype(self.params["dtype"])
        scaled: np.ndarray = np.ascontiguousarray(batch, dtype=dtype) / dtype.type(self.params["divisor"])
        return scaled


class MinMaxStep(Step):
    """Min-max scaling: ``(x - min) / (max - min)`` mapped onto ``feature_range`` ([0, 1]).

    ``min`` and ``max`` are scalars or one value per index of ``axis`` (features: -1).
    """

    name = "min_max"
    stage = "pre"
    params_spec: typing.ClassVar = {
        "min": Param(numbers()),
        "max": Param(numbers()),
        "feature_range": Param(numbers(), [0.0, 1.0]),
        "clip": Param(boolean, False),
        "axis": Param(integer(), -1),
    }

    def validate(self) -> None:
        """``max`` > ``min`` everywhere; ``feature_range`` is [low, high] with low < high."""
        low, high = np.asarray(self.params["min"]), np.asarray(self.params["max"])
        if low.shape != high.shape and low.ndim and high.ndim:
            raise self.bad("max", f"has {high.size} values but 'min' has {low.size}")
        if np.any(high <= low):
            raise self.bad("max", "must be greater than 'min' for every feature")
        span = self.params["feature_range"]
        if not isinstance(span, list) or len(span) != 2 or span[0] >= span[1]:
            raise self.bad("feature_range", f"must be [low, high] with low < high, got {span!r}")

    def apply(self, value: object) -> np.ndarray:
        """Scale, then clip to the range when ``clip`` is set."""
        x = self.numeric(value)
        axis = self.params["axis"]
        low, high = self.along("min", x, axis), self.along("max", x, axis)
        out_low, out_high = (x.dtype.type(v) for v in self.params["feature_range"])
        scaled: np.ndarray = (x - low) / (high - low) * (out_high - out_low) + out_low
        return np.clip(scaled, out_low, out_high) if self.params["clip"] else scaled


class ZScoreStep(Step):
    """Standardization: ``(x - mean) / std``, statistics per feature (``axis`` -1) or scalars."""

    name = "z_score"
    stage = "pre"
    params_spec: typing.ClassVar = {
        "mean": Param(numbers()),
        "std": Param(numbers(above=0.0)),
        "axis": Param(integer(), -1),
    }

    def apply(self, value: object) -> np.ndarray:
        """Subtract the mean and divide by the standard deviation."""
        x = self.numeric(value)
        axis = self.params["axis"]
        standardized: np.ndarray = (x - self.along("mean", x, axis)) / self.along("std", x, axis)
        return standardized


class NormalizeStep(ZScoreStep):
    """Per-channel ``(x - mean[c]) / std[c]`` on NCHW tensors (``axis`` 1), e.g. ImageNet's."""

    name = "normalize"
    params_spec: typing.ClassVar = {
        "mean": Param(numbers()),
        "std": Param(numbers(above=0.0)),
        "axis": Param(integer(), 1),
    }


def _lookup(step: Step, vocab: list[str] | list[float], value: object) -> tuple[np.ndarray, np.ndarray]:
    """Index of each category in ``vocab`` (vectorized), and a mask of the unknown ones."""
    x = np.asarray(value)
    categories = np.asarray(vocab)
    if (categories.dtype.kind in "US") != (x.dtype.kind in "USO"):
        raise step.fail(f"categories of type {x.dtype} cannot match a vocabulary of {categories.dtype}")
    order = np.argsort(categories, kind="stable")
    ordered = categories[order]
    try:
        # Objects (e.g. strings from JSON) compare as str or float; never as the vocabulary's
        # fixed-width dtype, which would truncate a long category into a known one.
        values = x.astype(str if categories.dtype.kind == "U" else np.float64) if x.dtype.kind == "O" else x
        position = np.clip(np.searchsorted(ordered, values), 0, len(ordered) - 1)
        found = ordered[position] == values
    except (TypeError, ValueError) as e:
        raise step.fail(f"categories of type {x.dtype} cannot match the vocabulary: {e}") from e
    return order[position], ~found


def _plain(value: object) -> object:
    """A numpy scalar as the Python value, for messages (``'red'``, not ``np.str_('red')``)."""
    return value.item() if isinstance(value, np.generic) else value


def _squeeze_column(step: Step, value: object) -> np.ndarray:
    x = np.asarray(value)
    if x.ndim == 2 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim > 1:
        raise step.fail(f"expects one category per sample, shape [N] or [N, 1], got {list(x.shape)}")
    return x


class OneHotStep(Step):
    """Categories [N] -> one-hot [N, len(vocabulary)]; unknown ones fail or give a zero row."""

    name = "one_hot"
    stage = "pre"
    params_spec: typing.ClassVar = {
        "vocabulary": Param(vocabulary),
        "handle_unknown": Param(choice("error", "ignore"), "error"),
        "dtype": Param(dtype_name, "float32"),
    }

    def apply(self, value: object) -> np.ndarray:
        """Encode every category of the batch."""
        categories = np.atleast_1d(_squeeze_column(self, value))
        index, unknown = _lookup(self, self.params["vocabulary"], categories)
        if unknown.any() and self.params["handle_unknown"] == "error":
            raise self.fail(
                f"category {_plain(categories[unknown][0])!r} is not in the vocabulary; add it or set "
                "handle_unknown: ignore"
            )
        encoded = np.zeros((len(categories), len(self.params["vocabulary"])), dtype=self.params["dtype"])
        rows = np.flatnonzero(~unknown)
        encoded[rows, index[rows]] = 1
        return encoded


class OrdinalStep(Step):
    """Categories -> their index in ``vocabulary``; unknown ones fail or get ``unknown_value``."""

    name = "ordinal"
    stage = "pre"
    params_spec: typing.ClassVar = {
        "vocabulary": Param(vocabulary),
        "unknown_value": Param(optional(integer()), None),
        "dtype": Param(dtype_name, "int64"),
    }

    def apply(self, value: object) -> np.ndarray:
        """Encode every category (any shape is kept)."""
        categories = np.asarray(value)
        index, unknown = _lookup(self, self.params["vocabulary"], categories)
        if unknown.any():
            if self.params["unknown_value"] is None:
                raise self.fail(
                    f"category {_plain(categories[unknown][0])!r} is not in the vocabulary; add it or set "
                    "unknown_value"
                )
            index = np.where(unknown, self.params["unknown_value"], index)
        return index.astype(self.params["dtype"])


class ClipStep(Step):
    """Outlier clipping to [``min``, ``max``] (scalars or per index of ``axis``; one may be null)."""

    name = "clip"
    stage = "any"
    params_spec: typing.ClassVar = {
        "min": Param(optional(numbers()), None),
        "max": Param(optional(numbers()), None),
        "axis": Param(integer(), -1),
    }

    def validate(self) -> None:
        """At least one bound; ``max`` >= ``min`` where both are given."""
        low, high = self.params["min"], self.params["max"]
        if low is None and high is None:
            raise self.bad("max", "or 'min' must be given (both are null)")
        if low is not None and high is not None:
            low_a, high_a = np.asarray(low), np.asarray(high)
            if low_a.ndim and high_a.ndim and low_a.shape != high_a.shape:
                raise self.bad("max", f"has {high_a.size} values but 'min' has {low_a.size}")
            if np.any(high_a < low_a):
                raise self.bad("max", "must be >= 'min' for every feature")

    def apply(self, value: object) -> np.ndarray:
        """Clip the batch."""
        x = self.numeric(value)
        axis = self.params["axis"]
        low = self.along("min", x, axis) if self.params["min"] is not None else None
        high = self.along("max", x, axis) if self.params["max"] is not None else None
        clipped: np.ndarray = np.clip(x, low, high)
        return clipped


class CastStep(Step):
    """Change the element type (e.g. to the dtype the model input declares)."""

    name = "cast"
    stage = "any"
    params_spec: typing.ClassVar = {"dtype": Param(dtype_name)}

    def apply(self, value: object) -> np.ndarray:
        """Convert the batch."""
        try:
            return np.asarray(value).astype(self.params["dtype"])
        except (TypeError, ValueError) as e:
            raise self.fail(f"cannot convert to {self.params['dtype']}: {e}") from e
