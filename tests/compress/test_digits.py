"""Deep Compression of a CNN trained here (scikit-learn digits): size and held-out accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.compress import compress_file, load_compressed
from modelpress.runtime.session import create_session, run_session

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """(float model path, split): trained and exported once (a few seconds)."""
    from modelpress.examples.digits import export_digits_cnn, load_digits_split

    return export_digits_cnn(tmp_path_factory.mktemp("digits") / "digits_cnn.onnx"), load_digits_split()


def _accuracy(session, split) -> float:
    logits = run_session(session, {"image": split.x_test})["logits"]
    return float(np.mean(logits.argmax(axis=1) == split.y_test))


@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_mpz_is_3x_smaller_and_loses_at_most_one_point_of_top1(digits, tmp_path, sparsity):
    path, split = digits
    out = tmp_path / "digits.mpz"
    report = compress_file(path, out, sparsity=sparsity)  # defaults: 8 bits Conv, 5 bits Gemm
    float_accuracy = _accuracy(create_session(path), split)
    graph, weights = load_compressed(out)
    compressed_accuracy = _accuracy(create_session(graph, external_initializers=weights), split)
    assert float_accuracy > 0.95  # the network did train
    assert compressed_accuracy >= float_accuracy - 0.01, (float_accuracy, compressed_accuracy)
    assert out.stat().st_size * 3 <= path.stat().st_size, (out.stat().st_size, path.stat().st_size)
    assert report.ratio >= 3
