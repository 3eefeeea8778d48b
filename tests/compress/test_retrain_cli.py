"""`modelpress compress --retrain`: a torch factory and labelled .npz data in, a retrained .mpz out."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.compress._digits import one_torch_thread, trained_digits  # noqa: F401 (an autouse fixture)
from tests.compress._digits import run as _run

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.torch

FACTORY = "retrain_cli_factories"
SPARSITY = 0.8

_CONV_BN = """

def conv_bn():
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    )
    with torch.no_grad():  # non-trivial statistics, so folding really rescales the weights
        for norm in (module[1], module[4]):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
    return module.eval()
"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Folder with the factory module, train data (.npz + labels), held-out x/y and the fp32 .onnx."""
    docstring = "Factories for test_retrain_cli.py: the trained digits CNN, and a Conv + BatchNorm network."
    setup = trained_digits(tmp_path_factory, "retrain", FACTORY, docstring, "digits", _CONV_BN, "fp32.onnx")
    with setup as (root, split):
        np.save(root / "y_test.npy", split.y_test)
        yield root


def _accuracy(model, root, tmp_path) -> float:
    result = _run("run", model, "--input", root / "x_test.npy", "-o", tmp_path / "logits.npy")
    assert result.exit_code == 0, result.output
    logits = np.load(tmp_path / "logits.npy")
    return float(np.mean(logits.argmax(axis=1) == np.load(root / "y_test.npy")))


def test_retrained_mpz_runs_within_a_point_of_fp32_and_is_10x_smaller(digits, tmp_path):
    out = tmp_path / "digits.mpz"
    start = time.perf_counter()
    result = _run(
        "compress", f"{FACTORY}:digits", "-o", out, "--retrain", "--data", digits / "train",
        "--sparsity", SPARSITY, "--example-input", "image=1x1x8x8",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert f"retrain: sparsity {SPARSITY}" in text and "retrained 2 of 4 Conv/Linear weights" in text
    assert "export verified against torch" in text and "written:" in text
    fp32_accuracy = _accuracy(digits / "fp32.onnx", digits, tmp_path)
    mpz_accuracy = _accuracy(out, digits, tmp_path)
    fp32_bytes, mpz_bytes = (digits / "fp32.onnx").stat().st_size, out.stat().st_size
    print(
        f"\nfp32 {fp32_accuracy:.2%} {fp32_bytes} B; retrained .mpz {mpz_accuracy:.2%} {mpz_bytes} B "
        f"({fp32_bytes / mpz_bytes:.1f}x); compress --retrain {seconds:.1f} s"
    )
    assert fp32_accuracy > 0.95  # the network did train
    assert mpz_accuracy >= fp32_accuracy - 0.01, (fp32_accuracy, mpz_accuracy)
    assert mpz_bytes * 10 <= fp32_bytes, (mpz_bytes, fp32_bytes)


def test_json_has_a_retrain_section_and_the_input_comes_from_the_data(digits, tmp_path):
    out = tmp_path / "digits.mpz"
    result = _run(
        "compress", f"{FACTORY}:digits", "-o", out, "--retrain", "--data", digits / "train",
        "--sparsity", SPARSITY, "--prune-epochs", 1, "--share-epochs", 1, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"original_bytes", "compressed_bytes", "ratio", "tensors", "max_abs_error", "output_path"} <= set(
        report
    )
    retrain = report["retrain"]
    assert retrain["sparsity"] == SPARSITY and (retrain["conv_bits"], retrain["fc_bits"]) == (8, 5)
    assert [(p["name"], p["epochs"]) for p in retrain["phases"]] == [("prune", 1), ("share", 1)]
    assert {"accuracy_start", "accuracy_compressed", "accuracy_end", "seconds"} <= set(retrain["phases"][0])
    eligible = {layer["name"]: layer for layer in retrain["layers"] if not layer["skipped"]}
    assert set(eligible) == {"2.weight", "6.weight"}
    # The .mpz holds the fine-tuned values exactly: its codebooks are the retrained centroids.
    tensors = {t["name"]: t for t in report["tensors"]}
    for name, layer in eligible.items():
        assert tensors[name]["bits"] == layer["bits"] and tensors[name]["sparsity"] >= SPARSITY - 1e-3
    assert report["max_abs_error"] == 0.0
    assert out.exists()


def _compress_conv_bn(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "a.npz", x=rng.random((64, 1, 8, 8), np.float32), labels=rng.integers(0, 10, 64))
    return _run(
        "compress", f"{FACTORY}:conv_bn", "-o", tmp_path / "bn.mpz", "--retrain", "--data", data,
        "--sparsity", 0.5, "--prune-epochs", 1, "--share-epochs", 1, "--json",
    )  # fmt: skip


def test_a_batchnorm_after_conv_is_folded_before_retraining(digits, tmp_path):
    result = _compress_conv_bn(tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [t["bits"] for t in report["tensors"] if t["op_type"] == "Conv" and t["bits"]] == [8]
    assert report["max_abs_error"] == 0.0  # 2**bits values survived the export: stored exactly


def test_a_batchnorm_the_export_folds_is_explained_and_nothing_written(digits, tmp_path, monkeypatch):
    # As for a module torch.fx cannot trace: the BatchNorm stays, and the exporter folds it.
    monkeypatch.setattr("modelpress.compress.retrain._fold_batchnorm", lambda module: (module, ""))
    result = _compress_conv_bn(tmp_path)
    assert result.exit_code == 4, result.output
    text = " ".join(result.output.split())
    assert "PreconditionError" in text and "more than its 2**8 = 256 retrained centroids" in text
    assert "fuse_conv_bn_eval" in text and not (tmp_path / "bn.mpz").exists()


@pytest.mark.parametrize(
    ("case", "exit_code", "message"),
    [
        ("onnx source", 2, "retraining needs the torch model"),
        ("no --data", 2, "--retrain needs labelled training data"),
        ("--data without --retrain", 2, "only apply with --retrain"),
        ("missing folder", 9, "does not exist"),
        ("no labels", 9, "no 'labels' array"),
    ],
)
def test_errors_exit_with_their_code_and_write_nothing(digits, tmp_path, case, exit_code, message):
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    np.savez(unlabelled / "a.npz", image=np.zeros((4, 1, 8, 8), np.float32))
    source, data = f"{FACTORY}:digits", ["--data", digits / "train"]
    retrain = ["--retrain"]
    if case == "onnx source":
        source = digits / "fp32.onnx"
    elif case == "no --data":
        data = []
    elif case == "--data without --retrain":
        source, retrain = digits / "fp32.onnx", []
    elif case == "missing folder":
        data = ["--data", tmp_path / "nope"]
    else:
        data = ["--data", unlabelled]
    out = tmp_path / "m.mpz"
    result = _run("compress", source, "-o", out, *retrain, *data, "-i", "image=1x1x8x8")
    assert result.exit_code == exit_code, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["unlabelled"]
