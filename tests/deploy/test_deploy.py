"""deploy end to end: every stage's file, one package per stage, the benchmark, the reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelpress.deploy import deploy, parse_recipe
from modelpress.ir import io
from modelpress.package import load_package
from modelpress.protect import KeySource
from tests.package._builders import PIPELINE_YAML, W, classifier


@pytest.fixture
def recipe_dir(tmp_path):
    folder = tmp_path / "recipe"
    folder.mkdir()
    io.save(classifier(), folder / "clf.onnx")
    (folder / "pipeline.yaml").write_text(PIPELINE_YAML)
    rng = np.random.default_rng(0)
    raw = rng.normal([1, 2, 3, 4], [0.5, 1, 2, 4], size=(64, 4)).astype(np.float32)
    labels = np.argmax(((raw - np.float32([1, 2, 3, 4])) / np.float32([0.5, 1, 2, 4])) @ W, axis=1)
    np.savez(folder / "calib.npz", x=raw[:48])
    np.savez(folder / "eval.npz", x=raw, labels=labels)
    return folder


def _recipe(folder, stages):
    return parse_recipe(
        {
            "name": "clf",
            "model": {"path": "clf.onnx"},
            "pipeline": "pipeline.yaml",
            "data": {"calib": "calib.npz", "eval": "eval.npz"},
            "stages": stages,
            "bench": {"batch": [1, 4], "threads": [1], "runs": 2, "warmup": 0},
        },
        base=folder,
    )


def test_the_whole_chain_writes_each_stage_a_package_and_the_reports(recipe_dir, tmp_path):
    stages = {
        "optimize": {},
        "quantize": {"mode": "static", "num_samples": 40},
        "protect": {"encrypt": True, "obfuscate": "low", "seed": 3},
    }
    lines = []
    report = deploy(_recipe(recipe_dir, stages), tmp_path / "out", say=lines.append)
    assert [s.stage for s in report.stages] == ["original", "optimize", "quantize", "protect"]
    assert [s.model_path.name for s in report.stages] == [
        "clf.onnx",
        "model.opt.onnx",
        "model.int8.onnx",
        "model.mpe",
    ]
    assert report.stages[2].details["mode"] == "static"
    assert "obfuscate" in report.stages[3].details and (tmp_path / "out" / "model.obf.onnx").exists()
    assert report.stages[3].nodes is None and report.key_file == tmp_path / "out" / "deploy.key"
    rows = report.summary()
    assert rows[0]["accuracy"] == 1.0  # the labels are the float model's own classes
    assert all(row["accuracy"] >= 0.9 for row in rows)
    assert all(row["agreement_vs_original"] >= 0.9 for row in rows[1:])
    assert {f"p50_ms_b{b}" for b in (1, 4)} <= set(rows[-1])
    # the deliverable: the encrypted model, the pipeline, the steps and metrics in the manifest
    package = load_package(report.package)
    assert package.is_encrypted and package.pipeline is not None
    assert [step["step"] for step in package.manifest.steps] == ["optimize", "quantize", "protect"]
    assert package.manifest.metrics["accuracy"] == rows[-1]["accuracy"]
    result = package.run({"x": np.float32([[1, 2, 3, 4]])}, KeySource.from_file(report.key_file))
    assert set(result) >= {"logits.labels", "logits.scores"}
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["schema"] == "modelpress.deploy/1" and len(data["summary"]) == 4
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Stages side by side" in page and "<img" in page
    assert any("quantize" in line for line in lines)


def test_a_chain_without_protection_or_eval_data_benchmarks_on_random_inputs(recipe_dir, tmp_path):
    recipe = parse_recipe(
        {
            "name": "c",
            "model": {"path": "clf.onnx"},
            "stages": {"quantize": {"mode": "dynamic"}},
            "bench": {"runs": 2, "threads": [1]},
        },
        base=recipe_dir,
    )
    report = deploy(recipe, tmp_path / "out")
    assert [s.stage for s in report.stages] == ["original", "quantize"]
    assert report.key_file is None and not load_package(report.package).is_encrypted
    assert report.summary()[1]["accuracy"] is None


def test_an_existing_key_file_is_used(recipe_dir, tmp_path):
    from modelpress.protect import generate_key, key_id, write_key_file

    key = generate_key()
    write_key_file(recipe_dir / "k.key", key)
    report = deploy(_recipe(recipe_dir, {"protect": {"key_file": "k.key"}}), tmp_path / "out")
    assert report.key_file == recipe_dir / "k.key"
    assert load_package(report.package).manifest.key_id == key_id(key)


def test_the_bundled_digits_recipe_from_the_command_line(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from typer.testing import CliRunner

    from modelpress.cli.main import app

    out = tmp_path / "digits"
    result = CliRunner().invoke(
        app, ["deploy", "examples/digits/recipe.yaml", "--workdir", str(out), "--runs", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = {row["stage"]: row for row in data["summary"]}
    assert list(rows) == ["original", "optimize", "quantize", "protect"]
    assert rows["original"]["accuracy"] >= 0.95
    assert rows["protect"]["accuracy"] >= rows["original"]["accuracy"] - 0.01
    assert rows["quantize"]["size_bytes"] < rows["original"]["size_bytes"] / 2
    assert np.load(data["sample_input"]).shape == (1, 1, 8, 8)  # the "try it" hint's input
    image = np.load(out / "data" / "eval.npz")["image"][:2]
    result = load_package(out / "package").run({"image": image}, KeySource.from_file(out / "deploy.key"))
    assert result["logits.labels"].shape == (2, 3)


def test_deploy_cli_reports_a_bad_recipe_with_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from modelpress.cli.main import app

    (tmp_path / "r.yaml").write_text("name: x\nmodel: {example: mnist}\n")
    result = CliRunner().invoke(app, ["deploy", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2
    assert "'mnist' is not one of digits" in result.output


def test_accuracy_aware_quantization_and_bias_correction_in_a_recipe(recipe_dir, tmp_path):
    stages = {"quantize": {"mode": "static", "max_drop": 0.01, "bias_correction": True}}
    report = deploy(_recipe(recipe_dir, stages), tmp_path / "out")
    details = report.stages[1].details
    assert details["accuracy"]["met"] is True
    assert report.summary()[1]["accuracy"] >= report.summary()[0]["accuracy"] - 0.01
    assert sorted(p.name for p in (tmp_path / "out" / "data" / "eval_model").glob("*.npz")) == [
        "eval_0000.npz"
    ]


@pytest.mark.parametrize("encrypt", [True, False])
def test_opaque_obfuscation_stage_packages_its_operator_library(recipe_dir, tmp_path, encrypt):
    report = deploy(_recipe(recipe_dir, {"protect": {"opaque": True, "encrypt": encrypt}}), tmp_path / "out")
    stage = report.stages[-1]
    assert stage.model_path.name == ("model.obf.mpe" if encrypt else "model.obf.onnx")
    assert (stage.model_path.parent / "model.obf.mplib").is_file()
    package = load_package(report.package)
    assert "model.mplib" in package.manifest.files
    rows = report.summary()
    assert rows[-1]["agreement_vs_original"] == 1.0 and rows[-1]["max_abs_diff_vs_original"] < 1e-4


def test_a_recipe_converts_a_torch_factory_first(tmp_path):
    pytest.importorskip("torch")
    recipe = parse_recipe(
        {
            "name": "tiny",
            "model": {
                "convert": "modelpress.examples.torch_models:resnet_like",
                "example_input": ["image=1x3x32x32"],
            },
            "stages": {"optimize": {}},
            "bench": {"batch": [2], "threads": [1], "runs": 2, "warmup": 0},
        },
        base=tmp_path,
    )
    report = deploy(recipe, tmp_path / "out")
    assert report.stages[0].model_path == tmp_path / "out" / "model.onnx"
    assert report.stages[0].details["framework"].startswith("torch")
    assert report.stages[1].nodes <= report.stages[0].nodes


def test_a_compress_stage_packages_an_mpz_and_protect_encrypts_it(recipe_dir, tmp_path):
    stages = {"compress": {"sparsity": 0.25, "fc_bits": 6}, "protect": {"encrypt": True}}
    report = deploy(_recipe(recipe_dir, stages), tmp_path / "out")
    assert [s.stage for s in report.stages] == ["original", "compress", "protect"]
    assert [s.model_path.name for s in report.stages[1:]] == ["model.mpz", "model.mpe"]
    compress = report.stages[1]
    assert compress.details["sparsity"] == 0.25 and compress.nodes == report.stages[0].nodes
    assert compress.details["compressed_bytes"] == compress.model_bytes  # (a 206-byte model: no gain)
    assert report.stages[2].details["encrypt"]["plaintext_bytes"] == compress.model_bytes  # still coded
    assert load_package(tmp_path / "out" / "stages" / "compress").manifest.model == "model.mpz"
    rows = {row["stage"]: row for row in report.summary()}
    agreement = rows["compress"]["agreement_vs_original"]
    assert agreement is not None and rows["protect"]["agreement_vs_original"] == agreement
