"""A tiny CNN trained here on scikit-learn's ``load_digits``: a real classifier with an accuracy.

Quantization is judged by what it costs a trained model, which random weights cannot show:
``load_digits`` has 1797 handwritten digits as 8x8 images (pixel values 0..16), small enough
to train a two-conv network in a few seconds on a CPU. The split is stratified and seeded, so
every run sees the same held-out images.

The network: ``Conv(1->16, 3x3) + ReLU``, ``Conv(16->32, 3x3) + ReLU``, ``MaxPool 2x2``,
``Flatten``, ``Linear(512->64) + ReLU``, ``Linear(64->10)``; input ``image`` float32
[N, 1, 8, 8] scaled to [0, 1], output ``logits`` [N, 10]. It reaches about 97-98 % top-1 on
the held-out split.

torch and scikit-learn are optional extras: they are imported inside the functions only.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path

import numpy as np

if typing.TYPE_CHECKING:
    import torch

__all__ = [
    "DIGIT_LABELS",
    "DigitsSplit",
    "build_digits_cnn",
    "digits_pipeline",
    "export_digits_cnn",
    "load_digits_split",
    "train_digits_cnn",
    "write_digits_data",
]

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DIGIT_LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class DigitsSplit(typing.NamedTuple):
    """Train and held-out arrays: images float32 [N, 1, 8, 8] in [0, 1], labels int64 [N]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, test_fraction: float = 0.3) -> DigitsSplit:
    """The digits images split into train and held-out parts (stratified by label, seeded)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return DigitsSplit(x_train, y_train, x_test, y_test)


def build_digits_cnn(seed: int = 0) -> torch.nn.Module:
    """The untrained network (deterministic initial weights per seed)."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )


def train_digits_cnn(split: DigitsSplit, seed: int = 0, epochs: int = 15) -> torch.nn.Module:
    """Train the network with Adam on the train part; returns it in eval mode (a few seconds)."""
    import torch

    model = build_digits_cnn(seed)
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def export_digits_cnn(path: str | os.PathLike, *, seed: int = 0, epochs: int = 15) -> Path:
    """Train the digits CNN and export it to ONNX (opset 17, dynamic batch) at ``path``.

    An existing file is kept (a cache: training is deterministic per seed and epochs, so
    delete the file after changing either). The export goes to a temporary name first, so an
    interrupted run leaves no file that looks complete.
    """
    import torch

    from modelpress.examples.torch_models import export_onnx

    path = Path(path)
    if path.exists():
        return path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = train_digits_cnn(load_digits_split(seed), seed=seed, epochs=epochs)
    partial = path.with_name(path.stem + f".partial-{os.getpid()}.onnx")
    export_onnx(
        model,
        (torch.zeros(1, 1, 8, 8),),
        partial,
        constant_folding=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
    )
    os.replace(partial, path)
    return path


def digits_pipeline() -> typing.Any:
    """The deployed pre/post-processing: raw 0..16 pixels in, the 3 most likely digits out.

    Pre-processing casts the raw ``uint8`` pixels to float32 and scales 0..16 onto [0, 1] (what
    the network was trained on); post-processing turns the logits into probabilities and keeps
    the top 3 with their names.
    """
    from modelpress.pipeline import Pipeline

    return Pipeline.from_dict(
        {
            "version": 1,
            "inputs": {INPUT_NAME: [{"cast": {"dtype": "float32"}}, {"min_max": {"min": 0, "max": 16}}]},
            "outputs": {OUTPUT_NAME: ["softmax", {"top_k": {"k": 3, "labels": DIGIT_LABELS}}]},
        },
        where="digits pipeline",
    )


def write_digits_data(folder: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """Write the split as raw pixels (``uint8`` 0..16, [N, 1, 8, 8]), as a deployment receives them.

    Returns:
        ``calib.npz`` (the train part: ``image``) and ``eval.npz`` (the held-out part:
        ``image`` and ``labels``), both in ``folder``.
    """
    split = load_digits_split(seed)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    raw = {
        name: np.rint(x * 16).astype(np.uint8)
        for name, x in (("train", split.x_train), ("test", split.x_test))
    }
    calib, held_out = root / "calib.npz", root / "eval.npz"
    for path, arrays in (
        (calib, {INPUT_NAME: raw["train"]}),
        (held_out, {INPUT_NAME: raw["test"], "labels": split.y_test}),
    ):
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}.npz")
        np.savez(partial, **arrays)
        os.replace(partial, path)
    return calib, held_out
