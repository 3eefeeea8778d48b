"""The accuracy-aware mode on a CNN trained here on scikit-learn's digits (1 % top-1 budget)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.ir import io
from modelpress.quantize import QuantSpec, quantize_file
from modelpress.runtime.compare import run_model

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """(float model, calibration folder, labelled eval folder, split), made once (a few seconds)."""
    import torch

    from modelpress.examples.digits import export_digits_cnn, load_digits_split

    folder = tmp_path_factory.mktemp("digits_accuracy")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2-3x faster than 2 threads on a busy 2-core machine, same result class
    try:
        path = export_digits_cnn(folder / "digits_cnn.onnx")
    finally:
        torch.set_num_threads(threads)
    split = load_digits_split()
    calib, evals = folder / "calib", folder / "eval"
    calib.mkdir()
    evals.mkdir()
    for start in range(0, 200, 50):  # 200 training images
        np.save(calib / f"batch{start:03d}.npy", split.x_train[start : start + 50])
    np.savez(evals / "held_out.npz", image=split.x_test, labels=split.y_test)  # 540 held-out images
    return path, calib, evals, split


def _accuracy(model: Path, split) -> float:
    logits = run_model(model, {"image": split.x_test}, level="all")["logits"]
    return float(np.mean(logits.argmax(axis=1) == split.y_test))


def test_int8_already_meets_the_budget_with_every_node_quantized(digits, tmp_path):
    path, calib, evals, split = digits
    out = tmp_path / "q.onnx"
    report = quantize_file(path, out, QuantSpec(), calib_dir=calib, eval_dir=evals, max_drop=0.01)
    accuracy = report.accuracy
    assert accuracy.metric == "accuracy" and accuracy.eval_samples == len(split.y_test)
    assert accuracy.met and accuracy.kept_float == []
    assert accuracy.float_metric == pytest.approx(_accuracy(path, split)) and accuracy.float_metric > 0.95
    assert accuracy.final_metric == pytest.approx(_accuracy(out, split))  # the file is what was measured
    assert accuracy.drop <= 0.01
    assert report.integer_kernels["com.microsoft::QLinearConv"] == 2


def _with_an_outlier_channel(path: Path, folder: Path) -> Path:
    """The same function with hidden unit 0 scaled x1000 in /6/Gemm and /1000 in /8/Gemm.

    ReLU is positively homogeneous, so the float model is unchanged; but that one channel now
    sets the range of the whole per-tensor activation between the two Gemms, and every other
    channel rounds to zero: int8 collapses. A realistic failure (unequalized channel ranges).
    """
    model = io.load(path)
    nodes = {node.name: node for node in model.graph}

    def scale(value: ir.Value, index: tuple, factor: float) -> None:
        array = value.const_value.numpy().copy()
        array[index] *= factor
        value.const_value = ir.tensor(array, name=value.name)

    scale(nodes["/6/Gemm"].inputs[1], (0,), 1000.0)  # W [64, 512] (transB): row 0 = unit 0
    scale(nodes["/6/Gemm"].inputs[2], (0,), 1000.0)
    scale(nodes["/8/Gemm"].inputs[1], (slice(None), 0), 1e-3)  # W [10, 64]: column 0 reads unit 0
    return io.save(model, folder / "outlier.onnx")


def test_the_fallback_meets_one_percent_with_two_float_nodes(digits, tmp_path):
    path, calib, evals, split = digits
    source = _with_an_outlier_channel(path, tmp_path)
    assert _accuracy(source, split) == pytest.approx(_accuracy(path, split))
    plain = tmp_path / "plain.onnx"
    quantize_file(source, plain, QuantSpec(), calib_dir=calib)
    assert _accuracy(plain, split) < 0.5  # int8 collapses

    out = tmp_path / "q.onnx"
    report = quantize_file(source, out, QuantSpec(), calib_dir=calib, eval_dir=evals, max_drop=0.01)
    accuracy = report.accuracy
    assert accuracy.met and accuracy.int8_drop > 0.5
    assert sorted(accuracy.kept_float) == ["/6/Gemm", "/8/Gemm"]
    assert _accuracy(out, split) == pytest.approx(accuracy.final_metric)
    assert _accuracy(out, split) >= _accuracy(source, split) - 0.01
    layers = {layer.node: layer for layer in accuracy.layers}
    assert layers["/8/Gemm"].loss_if_alone > 0.5  # quantized alone, it alone collapses the model
    assert report.op_counts["Conv"] == {"quantized": 2, "float": 0}
    assert report.integer_kernels["com.microsoft::QLinearConv"] == 2
    assert accuracy.seconds < 10
