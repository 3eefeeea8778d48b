"""Factories that `modelpress convert` imports by `tests.convert._models:NAME` in the tests.

Module classes live at module level so that `torch.save(module)` files can be loaded again.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics, like a trained model
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    return model


class TwoHeads(nn.Module):
    """Two inputs (token ids int64, features float32) and a dict of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(6, 4)

    def forward(self, ids: torch.Tensor, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.embed(ids).mean(dim=1) + self.proj(feats)
        return {"score": pooled.sum(dim=1), "argmax": pooled.argmax(dim=1)}


def two_heads() -> nn.Module:
    torch.manual_seed(1)
    return TwoHeads()


class Svd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x)[1]


def svd() -> nn.Module:
    return Svd()


class FrozenBatch(nn.Module):
    """int(x.shape[0]) is a Python int while tracing: the batch size is baked into the graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(0, keepdim=True).expand(int(x.shape[0]), -1)


def frozen_batch() -> nn.Module:
    return FrozenBatch()


class FrozenReshape(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.shape[0]) * 3)


def frozen_reshape() -> nn.Module:
    return FrozenReshape()


def not_a_model() -> object:
    return {"weights": np.zeros(3)}


def broken_factory() -> nn.Module:
    raise RuntimeError("the factory is broken")


def _digits(rows: int = 500) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x[:rows], y[:rows]


def digits_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = _digits()
    return LogisticRegression(max_iter=500).fit(x / 16.0, y)


def digits_random_forest():
    from sklearn.ensemble import RandomForestClassifier

    x, y = _digits()
    return RandomForestClassifier(n_estimators=10, max_depth=8, random_state=0).fit(x, y)


def unfitted_ridge():
    from sklearn.linear_model import Ridge

    return Ridge()
