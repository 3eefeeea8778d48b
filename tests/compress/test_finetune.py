"""Deep Compression with retraining (torch): the digits CNN at 80 % sparsity, end to end to .mpz."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

from modelpress.compress import compress_model, load_compressed
from modelpress.compress.prune import prune_array
from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.runtime.session import create_session, run_session

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.torch

from modelpress.compress.finetune import deep_compress_module  # noqa: E402 (after the importorskip)

SPARSITY = 0.8
CONV_BITS, FC_BITS = 8, 5


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Train on one thread: these models are tiny, and on a busy 2-core machine torch's spinning
    worker threads made training 20x slower (1.5 s -> 30 s) while one thread stays at ~1.7 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _export(module, path):
    from modelpress.examples.torch_models import export_onnx

    return export_onnx(
        module.eval(),
        (torch.zeros(1, 1, 8, 8),),
        path,
        constant_folding=True,
        input_names=["image"],
        output_names=["logits"],
    )


def _accuracy(session, split) -> float:
    logits = run_session(session, {"image": split.x_test})["logits"]
    return float(np.mean(logits.argmax(axis=1) == split.y_test))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(split, trained fp32 module, its .onnx): trained once, as test_digits.py's (a few seconds)."""
    from modelpress.examples.digits import load_digits_split, train_digits_cnn

    split = load_digits_split()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = train_digits_cnn(split)
    return split, module, _export(module, tmp_path_factory.mktemp("digits") / "fp32.onnx")


@pytest.fixture(scope="module")
def finetuned(digits):
    """(module, report, epoch log): the digits CNN deep-compressed with retraining."""
    split, module, _ = digits
    module = copy.deepcopy(module)
    epochs = []
    report = deep_compress_module(
        module,
        split.x_train,
        split.y_train,
        sparsity=SPARSITY,
        conv_bits=CONV_BITS,
        fc_bits=FC_BITS,
        progress=epochs.append,
    )
    return module, report, epochs


def test_finetuned_mpz_is_exact_10x_smaller_and_within_a_point_of_fp32(digits, finetuned, tmp_path):
    split, _, fp32_path = digits
    module, report, _ = finetuned
    data, compress_report = compress_model(
        io.load(_export(module, tmp_path / "finetuned.onnx")),
        sparsity=0.0,
        conv_bits=CONV_BITS,
        fc_bits=FC_BITS,
    )
    graph, arrays = load_compressed(data)
    weights = {name: p.detach().numpy() for name, p in module.named_parameters()}
    eligible = [layer for layer in report.layers if not layer.skipped]
    # conv1 (144 values) and the head (640) are under min_elements, as on the ONNX side
    assert [layer.name for layer in eligible] == ["2.weight", "6.weight"]
    for layer in eligible:
        weight = weights[layer.name]
        # (a) the pruning rule's exact count of zeros (round(0.8 * n), so 79.99 % of 4608), at most
        # 2**bits distinct non-zero values, stored bit for bit by the .mpz
        assert np.count_nonzero(weight == 0) >= round(SPARSITY * weight.size), layer
        assert len(np.unique(weight[weight != 0])) == layer.distinct_values <= 2**layer.bits, layer
        assert arrays[layer.name].tobytes() == weight.tobytes(), layer.name
    by_name = {record.name: record for record in compress_report.tensors}
    assert by_name["2.weight"].bits == CONV_BITS and by_name["6.weight"].bits == FC_BITS
    # (b) held-out top-1 within one point of fp32
    fp32_accuracy = _accuracy(create_session(fp32_path), split)
    mpz_accuracy = _accuracy(create_session(graph, external_initializers=arrays), split)
    assert fp32_accuracy > 0.95  # the network did train
    assert mpz_accuracy >= fp32_accuracy - 0.01, (fp32_accuracy, mpz_accuracy)
    # (c) 10x smaller than the fp32 .onnx
    fp32_bytes = fp32_path.stat().st_size
    assert len(data) * 10 <= fp32_bytes, (len(data), fp32_bytes)
    # For the record: post-training compression at the same sparsity (no retraining).
    post_data, _ = compress_model(io.load(fp32_path), sparsity=SPARSITY, conv_bits=CONV_BITS, fc_bits=FC_BITS)
    post_graph, post_arrays = load_compressed(post_data)
    post_accuracy = _accuracy(create_session(post_graph, external_initializers=post_arrays), split)
    phases = ", ".join(
        f"{p.name}: {p.accuracy_start:.4f} -> {p.accuracy_compressed:.4f} -> {p.accuracy_end:.4f} "
        f"({p.epochs} epochs, {p.seconds:.2f} s)"
        for p in report.phases
    )
    print(
        f"\ndigits CNN held-out top-1: fp32 {fp32_accuracy:.4f} ({fp32_bytes} B); "
        f"post-training sparsity {SPARSITY} {post_accuracy:.4f} ({len(post_data)} B); "
        f"fine-tuned {mpz_accuracy:.4f} ({len(data)} B, {fp32_bytes / len(data):.2f}x); "
        f"train top-1 {phases}; total {report.seconds:.2f} s"
    )


def test_progress_reports_every_epoch_of_both_phases_in_order(finetuned):
    _, report, epochs = finetuned
    prune, share = report.phases
    expected = [("prune", i, prune.epochs) for i in range(1, prune.epochs + 1)]
    expected += [("share", i, share.epochs) for i in range(1, share.epochs + 1)]
    assert [(e.phase, e.epoch, e.epochs) for e in epochs] == expected
    assert prune.epochs > 0 and share.epochs > 0
    assert all(np.isfinite(e.loss) and 0 <= e.accuracy <= 1 for e in epochs)
    # retraining recovers what pruning cost on the training data
    assert prune.accuracy_compressed < prune.accuracy_start <= prune.accuracy_end + 0.01


def _tiny(seed=0):
    """A Linear classifier on separable blobs: 1280- and 2048-element weights, trains in ms."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 256)
    inputs = (rng.standard_normal((256, 40)) + 2 * np.eye(4, 40)[labels]).astype(np.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = torch.nn.Sequential(torch.nn.Linear(40, 32), torch.nn.ReLU(), torch.nn.Linear(32, 64))
    return module, inputs, labels


def test_pruned_weights_stay_zero_and_the_seed_fixes_the_result():
    module, inputs, labels = _tiny()
    again = copy.deepcopy(module)
    expected_zeros = prune_array(module[0].weight.detach().numpy(), 0.6) == 0
    options = {"sparsity": 0.6, "fc_bits": 3, "prune_epochs": 3, "share_epochs": 2, "min_elements": 1000}
    report = deep_compress_module(module, inputs, labels, **options)
    weight = module[0].weight.detach().numpy()
    np.testing.assert_array_equal(weight == 0, expected_zeros)
    assert len(np.unique(weight[weight != 0])) <= 8
    assert [(layer.name, layer.bits) for layer in report.layers] == [("0.weight", 3), ("2.weight", 3)]
    deep_compress_module(again, inputs, labels, **options)
    for (name, a), (_, b) in zip(module.state_dict().items(), again.state_dict().items(), strict=True):
        assert a.numpy().tobytes() == b.numpy().tobytes(), name


def test_sharing_phase_moves_only_the_centroids():
    module, inputs, labels = _tiny(1)
    bias = module[0].bias.detach().clone()
    deep_compress_module(module, inputs, labels, sparsity=0.0, fc_bits=2, share_epochs=2, min_elements=1000)
    torch.testing.assert_close(module[0].bias, bias, rtol=0, atol=0)  # no prune epochs at sparsity 0
    assert all(p.requires_grad for p in module.parameters())  # frozen parameters were restored


def test_a_module_with_only_small_layers_is_left_alone():
    module, inputs, labels = _tiny()
    before = copy.deepcopy(module.state_dict())
    report = deep_compress_module(module, inputs, labels, sparsity=0.5, min_elements=4096)
    assert all(layer.skipped for layer in report.layers)
    assert [phase.epochs for phase in report.phases] == [0, 0]
    for name, value in module.state_dict().items():
        assert value.numpy().tobytes() == before[name].numpy().tobytes(), name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"fc_bits": 9}, "fc_bits"),
        ({"share_epochs": -1}, "share_epochs"),
        ({"lr": 0.0}, "lr"),
        ({"labels": np.zeros(3, np.int64)}, "labels"),
        ({"labels": np.zeros(256, np.float32)}, "integer"),
        ({"module": torch.nn.Linear(64, 64).double()}, "float32"),
    ],
)
def test_bad_options_raise_usage_error(change, message):
    module, inputs, labels = _tiny()
    arguments = {"module": module, "inputs": inputs, "labels": labels, "sparsity": 0.5} | change
    with pytest.raises(UsageError, match=message):
        deep_compress_module(**arguments)


def test_compress_package_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import modelpress.compress.finetune, modelpress.compress"
    subprocess.run([sys.executable, "-c", code], check=True)
