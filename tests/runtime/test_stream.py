"""Batching and the prefetching loader of runtime/stream.py, and `modelpress run --input-dir`."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from modelpress.errors import UsageError
from modelpress.runtime.stream import concatenate_outputs, iter_batches, prefetch, read_samples, run_stream


def test_prefetch_yields_every_item_in_order():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))


def test_prefetch_reraises_the_producers_error_where_it_happened():
    def items():
        yield 1
        yield 2
        raise ValueError("disk gone")

    seen = []
    with pytest.raises(ValueError, match="disk gone"):
        for item in prefetch(items()):
            seen.append(item)
    assert seen == [1, 2]


def test_prefetch_stops_its_producer_when_the_consumer_leaves_early():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    for item in prefetch(items(), depth=2):
        if item == 3:
            break
    assert len(produced) <= 3 + 2 + 2  # consumed + queued + the one in hand


def test_prefetch_reads_the_next_batch_while_the_current_one_runs():
    second_read = threading.Event()

    def samples():
        yield {"x": np.zeros((4, 2), np.float32)}
        second_read.set()
        yield {"x": np.ones((4, 2), np.float32)}

    overlapped = []

    def infer(feeds):
        if not overlapped:  # first batch: the loader must fetch the second meanwhile
            overlapped.append(second_read.wait(timeout=10))
        return {"y": feeds["x"] * 2}

    outputs = concatenate_outputs(run_stream(samples(), infer, batch=4, prefetch_batches=1))
    assert overlapped == [True]
    assert outputs["y"].shape == (8, 2)


def test_without_prefetch_nothing_is_read_ahead():
    second_read = threading.Event()

    def samples():
        yield {"x": np.zeros((4, 2), np.float32)}
        second_read.set()
        yield {"x": np.ones((4, 2), np.float32)}

    seen = []

    def infer(feeds):
        seen.append(second_read.is_set())
        return {"y": feeds["x"]}

    list(run_stream(samples(), infer, batch=4, prefetch_batches=0))
    assert seen == [False, True]


def test_batches_split_and_join_samples_at_exact_row_boundaries():
    samples = [
        {"x": np.arange(n, dtype=np.float32)[:, None] + 100 * i, "tag": [f"{i}.{k}" for k in range(n)]}
        for i, n in enumerate([3, 1, 5, 2])
    ]
    batches = list(iter_batches(samples, 4))
    assert [b["x"].shape[0] for b in batches] == [4, 4, 3]
    joined = np.concatenate([b["x"] for b in batches])
    np.testing.assert_array_equal(joined, np.concatenate([s["x"] for s in samples]))
    assert batches[0]["tag"] == ["0.0", "0.1", "0.2", "1.0"]


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([{"x": np.zeros((2, 1))}, {"y": np.zeros((2, 1))}], "has inputs"),
        ([{"x": np.zeros((2, 1)), "y": np.zeros((3, 1))}], "different row counts"),
        ([{"x": np.float32(1)}], "scalar"),
    ],
)
def test_inconsistent_samples_are_refused(samples, message):
    with pytest.raises(UsageError, match=message):
        list(iter_batches(samples, 2))


def test_run_stream_matches_one_big_run_and_applies_pre_and_post_processing():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((23, 3)).astype(np.float32)
    samples = [{"x": rows[i : i + 5]} for i in range(0, 23, 5)]
    counted = []
    outputs = concatenate_outputs(
        run_stream(
            samples,
            lambda feeds: {"y": feeds["x"].sum(axis=1, keepdims=True)},
            batch=6,
            preprocess=lambda batch: {"x": batch["x"] * 2},
            postprocess=lambda out: {"z": out["y"] + 1},
            on_batch=counted.append,
        )
    )
    np.testing.assert_allclose(outputs["z"], (rows * 2).sum(axis=1, keepdims=True) + 1, rtol=1e-6)
    assert counted == [6, 6, 6, 5]


def test_read_samples_from_a_folder(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 1, 4), np.float32))
    np.save(tmp_path / "b.npy", np.ones((1, 4), np.float32))  # one sample without its batch axis
    (tmp_path / "notes.txt").write_text("skipped")
    samples = list(read_samples(tmp_path, ["x"], ranks={"x": 3}))
    assert [s["x"].shape for s in samples] == [(2, 1, 4), (1, 1, 4)]


@pytest.mark.parametrize(
    ("files", "names", "images", "message"),
    [
        ({}, ["x"], (), "no .npy, .npz or image file"),
        ({"a.npy": np.zeros(2)}, ["x", "y"], (), "a .npy holds one input"),
        ({"a.png": b"\x89PNG"}, ["x"], (), "no input of this model decode images"),
        ({"a.npz": {"x": np.zeros(2)}}, ["x", "y"], (), "no array for input"),
    ],
)
def test_read_samples_refuses_unusable_folders(tmp_path, files, names, images, message):
    for name, content in files.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        elif isinstance(content, dict):
            np.savez(tmp_path / name, **content)
        else:
            np.save(tmp_path / name, content)
    with pytest.raises(UsageError, match=message):
        list(read_samples(tmp_path, names, image_inputs=images))


def test_a_missing_folder(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        list(read_samples(tmp_path / "nope", ["x"]))


def test_run_cli_over_a_folder_through_a_package(tmp_path):
    from typer.testing import CliRunner

    from modelpress.cli.main import app
    from modelpress.ir import io
    from modelpress.package import build_package
    from tests.package._builders import W, classifier, pipeline

    package = build_package(
        io.save(classifier(), tmp_path / "clf.onnx"), tmp_path / "pkg", pipeline=pipeline()
    )
    rng = np.random.default_rng(1)
    rows = rng.normal(2, 1, size=(10, 4)).astype(np.float32)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(0, 10, 3):
        np.save(folder / f"{i:02d}.npy", rows[i : i + 3])
    out = tmp_path / "out.npz"
    result = CliRunner().invoke(
        app, ["run", str(package), "--input-dir", str(folder), "--batch", "4", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        expected = pipeline().postprocess({"logits": pipeline().preprocess({"x": rows})["x"] @ W})
        np.testing.assert_array_equal(data["logits.indices"], expected["logits.indices"])
        assert data["logits.labels"].dtype.kind == "U"
    result = CliRunner().invoke(app, ["run", str(package), "--input-dir", str(folder), "--input", "x.npy"])
    assert result.exit_code == 2 and "not both" in result.output


def test_run_cli_threading_and_provider_options(tmp_path):
    from typer.testing import CliRunner

    from modelpress.cli.main import app
    from modelpress.ir import io
    from tests.package._builders import W, classifier

    model = io.save(classifier(), tmp_path / "clf.onnx")
    x = np.ones((2, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    args = ["run", str(model), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]
    result = CliRunner().invoke(
        app, [*args, "--threads", "1", "--inter-op-threads", "2", "--providers", "cpu"]
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), x @ W, rtol=1e-6)
    result = CliRunner().invoke(app, [*args, "--providers", "tensorrt"])
    assert result.exit_code == 2 and "not in this onnxruntime build" in result.output
