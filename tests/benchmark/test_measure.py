"""benchmark_models on tiny models: structure, interleaving, packages, data files and errors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.benchmark import STAGES, benchmark_models
from modelpress.errors import ModelLoadError, UsageError
from modelpress.examples import build_example_cnn
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.package import build_package
from tests.package._builders import PIPELINE_YAML, classifier


def _scaled(factor: float) -> ir.Model:
    """``y = x * factor`` over float32 [N, 4]: outputs differ from the classifier's, by name too."""
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, ["N", 4])
    y = b.op("Mul", x, b.const(np.float32(factor), "factor"))
    y.name = "logits"
    return b.build([y])


@pytest.fixture
def models(tmp_path):
    return io.save(_scaled(1.0), tmp_path / "one.onnx"), io.save(_scaled(2.0), tmp_path / "two.onnx")


def test_every_model_batch_and_thread_count_is_measured(models):
    calls = []
    report = benchmark_models(
        models, batches=(1, 3), threads=(1, 2), runs=4, warmup=1, progress=lambda *a: calls.append(a)
    )
    assert [m.name for m in report.models] == ["one.onnx", "two.onnx"]
    keys = [(m.model, m.batch, m.threads) for m in report.measurements]
    assert sorted(keys) == sorted((n, b, t) for n in ("one.onnx", "two.onnx") for b in (1, 3) for t in (1, 2))
    for item in report.measurements:
        assert item.latency.runs == 4
        assert 0 < item.latency.p50_ms <= item.latency.p90_ms <= item.latency.p99_ms <= item.latency.max_ms
        assert item.stages_ms["preprocess"] == item.stages_ms["postprocess"] == 0.0  # bare models
    for model in report.models:
        assert model.kind == "onnx" and model.model_bytes > 0 and model.load_ms > 0 and not model.pipeline
    # y = 2x vs y = x on the same random feeds: the difference is max |x|, never zero.
    second = report.find("two.onnx", 3, 1)
    assert second is not None and second.max_abs_diff_vs_first > 0
    assert report.find("one.onnx", 3, 1).max_abs_diff_vs_first is None
    # progress: every run once, the last call says all are done.
    total = 2 * 2 * 2 * (4 + 1 + 1)
    assert len(calls) == total and calls[-1][1:] == (total, total)


def test_timed_runs_are_interleaved_round_robin_with_a_rotating_start(models):
    calls = []
    benchmark_models(models, runs=4, warmup=0, progress=lambda d, *_: calls.append(d))
    timed = [d.split()[-1] for d in calls if d.startswith("b1 t1")]
    assert timed == ["one.onnx", "two.onnx", "two.onnx", "one.onnx"] * 2


def test_a_package_splits_time_into_pre_inference_and_post(tmp_path):
    model = io.save(classifier(), tmp_path / "model.onnx")
    (tmp_path / "pipeline.yaml").write_text(PIPELINE_YAML)
    package = build_package(model, tmp_path / "pkg", pipeline=tmp_path / "pipeline.yaml")
    report = benchmark_models([model, package], batches=(2,), runs=3, warmup=0)
    bare, packaged = report.models
    assert (bare.kind, bare.pipeline) == ("onnx", False)
    assert (packaged.kind, packaged.pipeline, packaged.model_bytes) == ("package", True, model.stat().st_size)
    split = report.find("pkg", 2, 1).stages_ms
    assert set(split) == set(STAGES) and all(split[stage] > 0 for stage in STAGES)
    # same model, same feeds: the raw model outputs agree up to the z-score pre-processing.
    assert report.find("pkg", 2, 1).max_abs_diff_vs_first is not None


def test_data_files_fill_the_batch_by_cycling_rows(tmp_path, models):
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "x.npy", np.arange(8, dtype=np.float32).reshape(2, 4))
    report = benchmark_models(models[:1], batches=(5,), runs=2, warmup=0, data=data)
    assert report.settings["data"] == str(data)
    assert report.measurements[0].batch == 5


def test_data_without_an_input_is_refused(tmp_path, models):
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "other.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(UsageError, match="no array for input"):
        benchmark_models(models[:1], runs=1, data=data)


def test_a_fixed_batch_dim_refuses_another_batch_size(tmp_path):
    cnn = io.save(build_example_cnn(), tmp_path / "cnn.onnx")
    with pytest.raises(UsageError, match="fixed leading dim 1"):
        benchmark_models([cnn], batches=(4,), runs=1)


def test_a_missing_model_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model"):
        benchmark_models([tmp_path / "missing.onnx"], runs=1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batches": ()}, "batch sizes"),
        ({"batches": (0,)}, "batch sizes"),
        ({"threads": (-1,)}, "thread counts"),
        ({"runs": 0}, "runs=0"),
    ],
)
def test_bad_settings_are_refused_before_any_model_loads(tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        benchmark_models([tmp_path / "never-read.onnx"], **options)
