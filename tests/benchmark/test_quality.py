"""Accuracy and agreement on the whole --data set: the quality module and benchmark_models."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.benchmark import benchmark_models
from modelpress.benchmark.quality import collect_outputs, compare_quality
from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.package import build_package
from tests.package._builders import W, classifier, pipeline


def _scores(rows: np.ndarray) -> dict[str, np.ndarray]:
    return {"logits": rows}


def test_accuracy_counts_rows_whose_argmax_is_the_label():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    quality = compare_quality(_scores(logits), None, np.array([1, 0, 0, 0]), where="m")
    assert quality.samples == 4
    assert quality.accuracy == pytest.approx(0.75)
    assert quality.agreement_vs_first is None and quality.max_abs_diff_vs_first is None


def test_agreement_cosine_and_max_diff_against_the_first_model():
    first = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    other = np.array([[0.2, 0.8], [0.1, 0.9]], np.float32)  # row 1 flips its class
    quality = compare_quality(_scores(other), _scores(first), None, where="m")
    assert quality.accuracy is None
    assert quality.agreement_vs_first == pytest.approx(0.5)
    assert quality.max_abs_diff_vs_first == pytest.approx(0.7)
    cosines = [
        np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(other, first, strict=True)
    ]
    assert quality.cosine_vs_first == pytest.approx(np.mean(cosines))


@pytest.mark.parametrize(
    "labels", [np.array([0, 1, 2]), np.array([[0], [1]]), np.array([0.0, 1.0])], ids=["rows", "2d", "float"]
)
def test_labels_must_be_one_integer_per_row(labels):
    with pytest.raises(UsageError, match="one integer class per row"):
        compare_quality(_scores(np.zeros((2, 3), np.float32)), None, labels, where="m")


def test_collect_outputs_pads_the_last_chunk_and_drops_the_padding():
    seen = []

    def run(feeds):
        seen.append(feeds["x"].shape[0])
        return {"y": feeds["x"] * 2}

    data = {"x": np.arange(7, dtype=np.float32)[:, None]}
    outputs = collect_outputs(run, data, ["x"], chunk=3)
    assert seen == [3, 3, 3]
    np.testing.assert_array_equal(outputs["y"], data["x"] * 2)


def test_collect_outputs_refuses_inputs_with_different_row_counts():
    data = {"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}
    with pytest.raises(UsageError, match="same number of rows"):
        collect_outputs(lambda feeds: feeds, data, ["a", "b"], chunk=2)


def test_benchmark_reports_accuracy_of_models_and_packages_on_raw_data(tmp_path):
    model = io.save(classifier(), tmp_path / "clf.onnx")
    package = build_package(model, tmp_path / "pkg", pipeline=pipeline())
    rng = np.random.default_rng(0)
    raw = rng.normal([1, 2, 3, 4], [0.5, 1, 2, 4], size=(37, 4)).astype(np.float32)
    standardized = (raw - np.float32([1, 2, 3, 4])) / np.float32([0.5, 1, 2, 4])
    labels = np.argmax(standardized @ W, axis=1)
    labels[:5] = (labels[:5] + 1) % 3  # five wrong labels: accuracy 32/37
    np.savez(tmp_path / "eval.npz", x=raw, labels=labels)
    report = benchmark_models([package], batches=(8,), runs=2, warmup=0, data=tmp_path / "eval.npz")
    assert report.models[0].quality.accuracy == pytest.approx(32 / 37)
    assert report.models[0].quality.samples == 37
    # the bare model fed the raw rows disagrees with the package that standardizes them
    report = benchmark_models([package, model], batches=(8,), runs=2, warmup=0, data=tmp_path / "eval.npz")
    bare = report.models[1].quality
    expected = np.mean(np.argmax(raw @ W, axis=1) == labels)
    assert bare.accuracy == pytest.approx(expected)
    assert bare.agreement_vs_first == pytest.approx(
        np.mean(np.argmax(raw @ W, axis=1) == np.argmax(standardized @ W, axis=1))
    )
    assert report.to_json()["models"][1]["quality"]["samples"] == 37


def test_no_data_means_no_quality(tmp_path):
    model = io.save(classifier(), tmp_path / "clf.onnx")
    report = benchmark_models([model], runs=2, warmup=0)
    assert report.models[0].quality is None
