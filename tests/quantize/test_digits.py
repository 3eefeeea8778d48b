"""A CNN trained here on scikit-learn's digits keeps its held-out accuracy when quantized to int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelpress.quantize import QuantSpec, quantize_file
from modelpress.runtime.compare import run_model

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """(float model path, split): trained and exported once per test session (a few seconds)."""
    from modelpress.examples.digits import export_digits_cnn, load_digits_split

    path = export_digits_cnn(tmp_path_factory.mktemp("digits") / "digits_cnn.onnx")
    return path, load_digits_split()


def _accuracy(model: Path, images: np.ndarray, labels: np.ndarray) -> float:
    logits = run_model(model, {"image": images}, level="all")["logits"]
    return float(np.mean(logits.argmax(axis=1) == labels))


@pytest.mark.parametrize("calibrator", ["minmax", "entropy", "percentile", "mse"])
def test_static_int8_keeps_top1_within_one_percent(digits, tmp_path, calibrator):
    path, split = digits
    calib = tmp_path / "calib"
    calib.mkdir()
    for start in range(0, 200, 50):  # 200 training images, four batch files
        np.save(calib / f"batch{start:03d}.npy", split.x_train[start : start + 50])
    out = tmp_path / "digits_int8.onnx"
    report = quantize_file(path, out, QuantSpec(calibrator=calibrator), calib_dir=calib)
    float_accuracy = _accuracy(path, split.x_test, split.y_test)
    int8_accuracy = _accuracy(out, split.x_test, split.y_test)
    assert float_accuracy > 0.95  # the network did train
    assert int8_accuracy >= float_accuracy - 0.01, (float_accuracy, int8_accuracy)
    assert report.integer_kernels == {
        "com.microsoft::QGemm": 2,
        "com.microsoft::QLinearConv": 2,
        "com.microsoft::NhwcMaxPool": 1,
    }
    assert report.file_bytes_after < 0.35 * report.file_bytes_before
