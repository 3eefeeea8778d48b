"""Accuracy-aware static quantization: the fewest nodes kept float for a metric budget."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.errors import CalibrationError, UsageError
from modelpress.ir import io
from modelpress.quantize import QuantSpec, quantize_file
from modelpress.quantize.accuracy import _cosines
from modelpress.runtime.compare import run_model
from tests.quantize import builders


def _folders(tmp_path, model, *, labels=None, count=4, batch=8):
    """Calibration and eval folders of standard-normal inputs (eval: another seed)."""
    calib, evals = tmp_path / "calib", tmp_path / "eval"
    calib.mkdir()
    evals.mkdir()
    for i, feeds in enumerate(builders.samples(model, count=count, batch=batch)):
        np.save(calib / f"{i}.npy", feeds["x"])
    for i, feeds in enumerate(builders.samples(model, count=count, batch=batch, seed=7)):
        extra = {} if labels is None else {"labels": labels[i * batch : (i + 1) * batch]}
        np.savez(evals / f"{i}.npz", x=feeds["x"], **extra)
    return calib, evals


def test_cosine_of_each_sample():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, -1.0]])
    assert _cosines(a, b).tolist() == pytest.approx([1.0, 1.0, -1.0])


def test_a_met_budget_keeps_everything_quantized_and_reports_each_layer(tmp_path):
    source = io.save(builders.classifier(), tmp_path / "float.onnx")
    calib, evals = _folders(tmp_path, builders.classifier())
    report = quantize_file(
        source, tmp_path / "q.onnx", QuantSpec(), calib_dir=calib, eval_dir=evals, max_drop=0.05
    )
    accuracy = report.accuracy
    assert accuracy.metric == "cosine" and accuracy.output == "logits" and accuracy.eval_samples == 32
    assert accuracy.met and accuracy.kept_float == [] and accuracy.candidates == 1
    assert accuracy.float_metric == 1.0 and 0.95 < accuracy.final_metric < 1.0
    assert [layer.op_type for layer in accuracy.layers] == [
        "Conv",
        "Relu",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
        "MatMul",
    ]
    assert all(not layer.kept_float and layer.reason == "quantized" for layer in accuracy.layers)
    assert all(layer.output_error is not None and layer.output_error < 0.1 for layer in accuracy.layers)
    assert report.to_json()["accuracy"]["met"] is True


def test_an_unmeetable_budget_still_writes_the_best_model(tmp_path):
    """Cosine drop 0 cannot be met while one node stays quantized: the best candidate is saved."""
    source = io.save(builders.classifier(), tmp_path / "float.onnx")
    calib, evals = _folders(tmp_path, builders.classifier())
    out = tmp_path / "q.onnx"
    report = quantize_file(source, out, QuantSpec(), calib_dir=calib, eval_dir=evals, max_drop=0.0)
    accuracy = report.accuracy
    assert not accuracy.met and out.exists()
    assert accuracy.final_metric >= accuracy.int8_metric  # the best candidate, not the last one
    kept = set(accuracy.kept_float)
    assert kept and kept < {layer.node for layer in accuracy.layers}
    assert all(report.skipped[node].startswith("accuracy-aware fallback") for node in kept)
    assert all(layer.gain_if_float is not None for layer in accuracy.layers)  # ranked


def test_the_agreement_metric_and_labels(tmp_path):
    model = builders.classifier()
    source = io.save(model, tmp_path / "float.onnx")
    data = builders.samples(model, count=4, batch=8, seed=7)
    labels = np.concatenate([run_model(model, f)["logits"].argmax(1) for f in data])
    calib, evals = _folders(tmp_path, model, labels=labels)
    report = quantize_file(
        source, tmp_path / "q.onnx", QuantSpec(), calib_dir=calib, eval_dir=evals, max_drop=0.5
    )
    assert report.accuracy.metric == "accuracy" and report.accuracy.float_metric == 1.0
    report = quantize_file(
        source,
        tmp_path / "q2.onnx",
        QuantSpec(),
        calib_dir=calib,
        eval_dir=evals,
        max_drop=0.5,
        eval_metric="agreement",
    )
    assert report.accuracy.metric == "agreement" and report.accuracy.met


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_drop": 0.01}, UsageError, "takes both --max-drop X and --eval DIR"),
        ({"max_drop": -0.1, "eval": True}, UsageError, "must be >= 0"),
        ({"max_drop": 0.01, "eval": True, "eval_metric": "accuracy"}, UsageError, "needs labels"),
        ({"max_drop": 0.01, "eval": True, "eval_metric": "f1"}, UsageError, "unknown eval metric 'f1'"),
        ({"max_drop": 0.01, "eval": True, "eval_output": "nope"}, UsageError, "no float32 output 'nope'"),
        (
            {"max_drop": 0.01, "eval": True, "eval_output": "embedding", "eval_metric": "agreement"},
            None,
            None,
        ),
        ({"max_drop": 0.01, "eval": "empty"}, CalibrationError, "holds no .npy or .npz file"),
    ],
)
def test_bad_accuracy_options_write_nothing(tmp_path, options, error, message):
    source = io.save(builders.classifier(), tmp_path / "float.onnx")
    calib, evals = _folders(tmp_path, builders.classifier())
    if options.get("eval") == "empty":
        evals = tmp_path / "empty"
        evals.mkdir()
    kwargs = {k: v for k, v in options.items() if k != "eval"}
    out = tmp_path / "q.onnx"
    if error is None:  # a [N, 4] embedding still has an argmax: agreement is allowed
        quantize_file(source, out, QuantSpec(), calib_dir=calib, eval_dir=evals, **kwargs)
        return
    with pytest.raises(error, match=message):
        quantize_file(
            source, out, QuantSpec(), calib_dir=calib, eval_dir=evals if "eval" in options else None, **kwargs
        )
    assert not out.exists()


def test_only_static_mode_has_an_accuracy_search(tmp_path):
    source = io.save(builders.classifier(), tmp_path / "float.onnx")
    calib, evals = _folders(tmp_path, builders.classifier())
    with pytest.raises(UsageError, match="--max-drop needs --mode static"):
        quantize_file(
            source,
            tmp_path / "q.onnx",
            QuantSpec(mode="weight-only"),
            calib_dir=calib,
            eval_dir=evals,
            max_drop=0.01,
        )


def test_the_search_is_deterministic(tmp_path):
    source = io.save(builders.small_cnn(), tmp_path / "float.onnx")
    calib, evals = _folders(tmp_path, builders.small_cnn(), batch=2)
    runs = [
        quantize_file(
            source, tmp_path / f"q{i}.onnx", QuantSpec(), calib_dir=calib, eval_dir=evals, max_drop=0.0001
        ).accuracy.to_json()
        for i in range(2)
    ]
    for run in runs:
        run.pop("seconds")
    assert runs[0] == runs[1]
    assert (tmp_path / "q0.onnx").read_bytes() == (tmp_path / "q1.onnx").read_bytes()


@pytest.mark.parametrize("bias_correction", [False, True])
def test_the_written_model_is_the_one_the_search_measured(tmp_path, bias_correction):
    """Candidates are built from ranges calibrated once; the final model is quantized again by
    the workflow: both must be the same model, so the file scores the reported metric."""
    model = builders.small_cnn()
    source = io.save(model, tmp_path / "float.onnx")
    calib, evals = _folders(tmp_path, model, batch=2)
    out = tmp_path / "q.onnx"
    spec = QuantSpec(bias_correction=bias_correction)
    report = quantize_file(source, out, spec, calib_dir=calib, eval_dir=evals, max_drop=0.00005)
    accuracy = report.accuracy
    assert accuracy.kept_float  # the search did fall back nodes
    cosines = []
    for path in sorted(evals.iterdir()):
        feeds = {"x": np.load(path)["x"]}
        cosines.append(_cosines(run_model(out, feeds, level="all")["y"], run_model(model, feeds)["y"]))
    assert float(np.concatenate(cosines).mean()) == pytest.approx(accuracy.final_metric, abs=1e-12)
    assert (report.bias_correction is not None) == bias_correction


def test_unnamed_nodes_get_their_plan_label_so_they_can_be_kept_float():
    from modelpress.quantize.accuracy import name_nodes

    model = builders.classifier()
    nodes = list(model.graph)
    nodes[0].name, nodes[4].name = "", "Conv#0"  # a clash with the label the first node would get
    assert name_nodes(model) == 1
    assert nodes[0].name == "Conv#0_" and len({n.name for n in model.graph}) == len(nodes)
    assert name_nodes(model) == 0


def test_large_models_try_the_quick_pass_by_output_error_before_ranking(tmp_path, monkeypatch):
    """Above _FULL_RANK_UNITS units the greedy step first runs over the units ordered by output
    error (no ranking candidates); when that cannot meet the budget the full ranking still runs."""
    from modelpress.quantize import accuracy as accuracy_module

    monkeypatch.setattr(accuracy_module, "_FULL_RANK_UNITS", 2)  # the classifier has 6 units
    source = io.save(builders.classifier(), tmp_path / "float.onnx")
    calib, evals = _folders(tmp_path, builders.classifier())
    probe = quantize_file(
        source, tmp_path / "p.onnx", QuantSpec(), calib_dir=calib, eval_dir=evals, max_drop=1.0
    ).accuracy
    budget = probe.int8_drop * 0.9  # just below what all-int8 loses: one fallback is enough
    report = quantize_file(
        source, tmp_path / "q.onnx", QuantSpec(), calib_dir=calib, eval_dir=evals, max_drop=budget
    )
    quick = report.accuracy
    assert quick.met and quick.drop <= budget and 1 <= len(quick.kept_float) <= 3
    assert quick.candidates <= 1 + 3 * 3 + 3  # all-int8, <= 3 greedy steps of 3, pruning
    assert all(layer.gain_if_float is None and layer.loss_if_alone is None for layer in quick.layers)
    largest_errors = sorted(quick.layers, key=lambda layer: -(layer.output_error or 0.0))
    for layer in quick.layers:
        if layer.kept_float:
            assert "quick pass by output error" in layer.reason
        if "greedy step 1 (" in layer.reason:  # the first step picks among the 3 largest errors
            assert layer in largest_errors[:3]
    full = quantize_file(
        source, tmp_path / "f.onnx", QuantSpec(), calib_dir=calib, eval_dir=evals, max_drop=0.0
    ).accuracy
    assert not full.met and all(layer.gain_if_float is not None for layer in full.layers)  # ranked
