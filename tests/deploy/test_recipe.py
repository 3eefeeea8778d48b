"""Recipe validation: every key checked before any work, errors name the key and the fix."""

from __future__ import annotations

import pytest

from modelpress.deploy import load_recipe, parse_recipe
from modelpress.errors import UsageError


def _recipe(tmp_path, **overrides):
    (tmp_path / "m.onnx").write_bytes(b"")  # existence is all the recipe checks
    data = {"name": "m", "model": {"path": "m.onnx"}, **overrides}
    return parse_recipe({k: v for k, v in data.items() if v is not None}, base=tmp_path, where="r.yaml")


def test_a_minimal_recipe_resolves_paths_against_its_folder(tmp_path):
    recipe = _recipe(tmp_path)
    assert recipe.model == {"path": tmp_path / "m.onnx"}
    assert recipe.stages == {} and recipe.pipeline is None
    assert recipe.bench.batch == (1, 8) and recipe.bench.runs == 30


def test_the_bundled_recipe_loads():
    recipe = load_recipe("examples/digits/recipe.yaml")
    assert list(recipe.stages) == ["optimize", "quantize", "protect"]
    assert recipe.model == {"example": "digits"} and recipe.data == {"example": "digits"}
    assert recipe.pipeline.name == "pipeline.yaml" and recipe.pipeline.exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"modle": {}}, "unknown key 'modle'"),
        ({"model": {"path": "missing.onnx"}}, "missing.onnx does not exist"),
        ({"model": {"example": "mnist"}}, "'mnist' is not one of digits"),
        ({"model": {"path": "m.onnx", "example": "digits"}}, "exactly one of example, path or convert"),
        ({"name": "../evil"}, "name '../evil' must be letters"),
        ({"version": 2}, "version 2 is not supported"),
        (
            {"stages": {"quantize": {}, "optimize": {}}},
            "run in the order optimize, quantize, compress, protect",
        ),
        ({"stages": {"quantize": {"mode": "dynamic"}, "compress": {}}}, "choose quantize or compress"),
        ({"stages": {"compress": {}, "protect": {"obfuscate": "high"}}}, "can be encrypted, not obfuscated"),
        ({"stages": {"compress": {"bits": 4}}}, "stages.compress: unknown key 'bits'"),
        ({"stages": {"quantize": {"mode": "static"}}}, "needs calibration data"),
        ({"stages": {"optimize": {"levle": "all"}}}, "stages.optimize: unknown key 'levle'"),
        ({"stages": {"protect": {"encrypt": False}}}, "choose encrypt: true and/or obfuscate"),
        ({"stages": {"protect": {"obfuscate": "max"}}}, "'max' is not one of low, medium, high"),
        (
            {"stages": {"optimize": {"target": "onnxruntime"}, "quantize": {"mode": "dynamic"}}},
            "use target: onnx",
        ),
        ({"bench": {"batch": [0]}}, "bench.batch must be a list of integers >= 1"),
        ({"bench": {"runs": "many"}}, "bench.runs must be an integer >= 1"),
        ({"pipeline": 3}, "pipeline must be a file name or a mapping"),
        ({"data": {"example": "digits", "calib": "x"}}, "drop the others"),
    ],
)
def test_bad_recipes_are_refused_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(UsageError, match=message):
        _recipe(tmp_path, **overrides)


def test_a_recipe_without_a_model_says_how_to_give_one(tmp_path):
    with pytest.raises(UsageError, match="'model' is missing"):
        parse_recipe({"name": "x"}, base=tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("a: [", "not valid YAML"), ("- 1\n- 2\n", "must be a mapping")],
    ids=["yaml", "list"],
)
def test_unreadable_recipe_files(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_recipe(path)


def test_a_missing_recipe_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read the recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_max_drop_needs_eval_data_and_a_sane_value(tmp_path):
    (tmp_path / "c.npz").write_bytes(b"")
    with pytest.raises(UsageError, match="needs labelled eval data"):
        _recipe(tmp_path, data={"calib": "c.npz"}, stages={"quantize": {"max_drop": 0.01}})
    with pytest.raises(UsageError, match=r"max_drop must be a number in \[0, 1\)"):
        _recipe(tmp_path, data={"example": "digits"}, stages={"quantize": {"max_drop": 5}})
