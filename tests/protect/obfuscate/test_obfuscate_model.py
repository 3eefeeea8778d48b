"""obfuscate_model by strength, its report and verification, and the torch zoo end to end."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import NumericMismatchError, UsageError
from modelpress.examples.cnn import build_example_cnn
from modelpress.ir import io
from modelpress.ir.verify import verify
from modelpress.protect.obfuscate import STRENGTHS, obfuscate_model, verify_obfuscation
from modelpress.protect.obfuscate.anonymize import original_names
from tests.protect.obfuscate.conftest import DIM_VALUES
from tests.protect.obfuscate.helpers import correlation
from tests.testing import EXACT, assert_equivalent, ops

# |Pearson correlation| a permuted weight tensor may keep with its original (issue 4).
MAX_CORRELATION = 0.1


def _obfuscated(model: ir.Model, strength: str, seed: int = 0):
    return obfuscate_model(model.clone(), seed=seed, strength=strength)


def _weight_pairs(before: ir.Model, after: ir.Model) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(node, original, obfuscated) for every constant float input of 2+ dims, matched by node position."""
    pairs = []
    for old, new in zip(before.graph, after.graph, strict=True):
        for old_value, new_value in zip(old.inputs, new.inputs, strict=True):
            if old_value is None or old_value.const_value is None or old_value.is_graph_input():
                continue
            array = old_value.const_value.numpy()
            if array.ndim >= 2 and array.dtype.kind == "f":
                pairs.append((old.name, array, new_value.const_value.numpy()))  # type: ignore[union-attr]
    return pairs


# --- strengths on the bundled CNN --------------------------------------------------------------


def test_low_renames_only():
    model = build_example_cnn()
    after, report = _obfuscated(model, "low")
    assert [r.name for r in report.records] == ["anonymize-names"]
    assert (report.permuted, report.rescaled, report.left_alone) == (0, 0, [])
    assert all(np.array_equal(old, new) for _, old, new in _weight_pairs(model, after))
    assert_equivalent(model, after, rtol=EXACT)


@pytest.mark.parametrize("strength", ["medium", "high"])
def test_medium_and_high_move_weights_and_keep_the_function(strength):
    model = build_example_cnn()
    after, report = _obfuscated(model, strength)
    assert [r.name for r in report.records] == list(STRENGTHS[strength])
    assert all(r.changed for r in report.records) and all(not r.op_delta for r in report.records)
    assert ops(after) == ops(model)
    verify(after, full=True)
    comparison = verify_obfuscation(model, after)
    assert comparison.max_rel <= 1e-5
    assert report.groups == 3 and report.permuted == 1
    assert report.rescaled == (1 if strength == "high" else 0)
    assert len(report.left_alone) == 2 and "Reshape" in report.left_alone[0]
    json.dumps(report.to_json())
    stem = [(old, new) for name, old, new in _weight_pairs(model, after) if name == "Conv_1"]
    assert stem and not np.array_equal(*stem[0])


def test_same_seed_same_bytes_other_seed_other_bytes():
    model = build_example_cnn()
    first, _ = _obfuscated(model, "high", seed=9)
    again, _ = _obfuscated(model, "high", seed=9)
    other, _ = _obfuscated(model, "high", seed=10)
    assert io.to_bytes(first) == io.to_bytes(again) != io.to_bytes(other)


@pytest.mark.parametrize("kwargs", [{"strength": "max"}, {"seed": -1}, {"seed": 1.5}, {"seed": True}])
def test_bad_options_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        obfuscate_model(build_example_cnn(), **{"seed": 0, "strength": "medium", **kwargs})


def test_instruments_run_after_each_pass():
    seen = []
    obfuscate_model(
        build_example_cnn(), seed=0, strength="high", instruments=[lambda p, m: seen.append(p.name)]
    )
    assert seen == list(STRENGTHS["high"])


def test_verify_obfuscation_catches_a_broken_model():
    model = build_example_cnn()
    after, _ = _obfuscated(model, "medium")
    weight = next(v for v in after.graph.initializers.values() if v.const_value.numpy().ndim == 4)  # type: ignore[union-attr]
    weight.const_value = ir.tensor(weight.const_value.numpy() * 1.01, name=weight.name)  # type: ignore[union-attr]
    with pytest.raises(NumericMismatchError, match="obfuscated model"):
        verify_obfuscation(model, after)


# --- the torch zoo ----------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("folding", [True, False], ids=["fold", "nofold"])
@pytest.mark.parametrize("name", ["resnet_like", "mobilenetv2_like"])
def test_zoo_cnn_high_strength_is_equivalent_and_scrambled(name, folding, zoo_model_path):
    model = io.load(zoo_model_path(name, folding))
    after, report = _obfuscated(model, "high")
    assert ops(after) == ops(model)
    verify(after, full=True)
    verify_obfuscation(model, after, dim_values=DIM_VALUES)
    assert report.permuted == report.groups - 1  # all but the head, whose output is the model's
    pairs = _weight_pairs(model, after)
    assert all(not np.array_equal(old, new) for _, old, new in pairs), "every weight tensor moved"
    worst = max(abs(correlation(old, new)) for _, old, new in pairs)
    assert worst < MAX_CORRELATION, f"a permuted weight keeps |correlation| {worst:.3f} with its original"
    interface = {v.name for v in (*model.graph.inputs, *model.graph.outputs)}
    data = io.to_bytes(after)
    assert [n for n in original_names(model) - interface if n.encode() in data] == []


@pytest.mark.torch
@pytest.mark.parametrize("folding", [True, False], ids=["fold", "nofold"])
def test_zoo_bert_is_anonymized_with_bitwise_equal_outputs(folding, zoo_model_path):
    model = io.load(zoo_model_path("bert_like", folding))
    after, _ = _obfuscated(model, "low")
    assert ops(after) == ops(model)
    assert_equivalent(model, after, rtol=EXACT, dim_values=DIM_VALUES)
    interface = {v.name for v in (*model.graph.inputs, *model.graph.outputs)}
    data = io.to_bytes(after)
    assert [n for n in original_names(model) - interface if n.encode() in data] == []


@pytest.mark.torch
def test_zoo_bert_feed_forward_layers_are_permuted(zoo_model_path):
    model = io.load(zoo_model_path("bert_like", True))
    after, report = _obfuscated(model, "high")
    assert report.permuted == 2 and report.rescaled == 0  # GELU's Erf is not homogeneous
    verify_obfuscation(model, after, dim_values=DIM_VALUES)
    moved = [name for name, old, new in _weight_pairs(model, after) if not np.array_equal(old, new)]
    assert len(moved) == 4 and all("/ffn/" in name for name in moved)
