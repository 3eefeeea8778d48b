"""Magnitude pruning: exact per-layer counts, smallest |w| first, skips, shared weights, files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelpress.compress import prune_file, prune_model
from modelpress.compress.prune import prune_array
from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.ir.verify import verify
from tests.compress.models import cnn, weights


def _initializers(model):
    return {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_each_eligible_weight_gets_exactly_its_share_of_zeros_smallest_first(sparsity):
    model = cnn()
    report = prune_model(model, sparsity)
    after, before = _initializers(model), weights()
    pruned = {layer.tensor for layer in report.layers if not layer.skipped}
    assert pruned == {"conv_w", "fc_w", "shared_w"}
    for name in pruned:
        original, result = before[name], after[name]
        zeros = result == 0
        assert zeros.sum() == round(sparsity * original.size)
        assert np.abs(original[zeros]).max() <= np.abs(original[~zeros]).min()
        np.testing.assert_array_equal(result[~zeros], original[~zeros])  # kept values untouched
    layer = next(layer for layer in report.layers if layer.tensor == "fc_w")
    assert (layer.op_type, layer.elements, layer.sparsity_before) == ("Gemm", 16384, 0.0)
    assert math.isclose(layer.sparsity_after, round(sparsity * 16384) / 16384)
    verify(model, full=True)


def test_small_weights_biases_and_the_head_are_left_alone():
    model = cnn()
    report = prune_model(model, 0.5)
    after, before = _initializers(model), weights()
    for name in ("head_w", "conv_b"):
        np.testing.assert_array_equal(after[name], before[name].astype(after[name].dtype))
    head = next(layer for layer in report.layers if layer.tensor == "head_w")
    assert head.skipped == "640 < min_elements 1024" and head.sparsity_after == 0.0
    assert "conv_b" not in {layer.tensor for layer in report.layers}  # biases are not weights
    report = prune_model(cnn(), 0.5, min_elements=100)
    assert not next(layer for layer in report.layers if layer.tensor == "head_w").skipped


def test_a_weight_shared_by_two_matmuls_is_pruned_once():
    report = prune_model(cnn(), 0.5)
    shared = [layer for layer in report.layers if layer.tensor == "shared_w"]
    assert len(shared) == 1 and shared[0].sparsity_before == 0.0 and shared[0].sparsity_after == 0.5


def test_ties_are_broken_by_flat_index_deterministically():
    array = np.array([1, -1, 1, 2, -1, 1, 3, 1], dtype=np.float32)
    result = prune_array(array, 0.5)
    np.testing.assert_array_equal(result, [0, 0, 0, 2, 0, 1, 3, 1])
    np.testing.assert_array_equal(prune_array(array, 0.5), result)


def test_sparsity_zero_changes_nothing_and_bad_options_are_refused():
    model = cnn()
    prune_model(model, 0.0)
    assert all(np.array_equal(_initializers(model)[k], v) for k, v in weights().items())
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(UsageError, match="sparsity"):
            prune_model(cnn(), bad)
    with pytest.raises(UsageError, match="min_elements"):
        prune_model(cnn(), 0.5, min_elements=0)


def test_prune_file_reports_the_output_error_and_leaves_the_input_untouched(tmp_path):
    src = io.save(cnn(), tmp_path / "model.onnx")
    original = src.read_bytes()
    report = prune_file(src, tmp_path / "pruned.onnx", 0.5, dim_values={"batch": 1})
    assert src.read_bytes() == original
    assert report.comparison is not None and 0 < report.comparison.max_rel < math.inf
    pruned = _initializers(io.load(tmp_path / "pruned.onnx"))
    assert (pruned["fc_w"] == 0).sum() == 8192
    assert report.to_json()["max_rel_error"] == report.comparison.max_rel
    assert report.pruned_elements == round(0.5 * 1152) + 8192 + 2048
