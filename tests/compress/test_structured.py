"""Structured (channel) pruning: exact surgery (equal to zeroing the removed channels), skips, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.compress import prune_channels, prune_channels_file
from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from tests.testing import assert_equivalent, serialized

F32 = ir.DataType.FLOAT
RNG = np.random.default_rng(0)
WEAK = [1, 3, 4, 6]  # channels made weak (small filters): the ones sparsity 0.5 removes of 8
KEPT = [0, 2, 5, 7]


def _rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _weak_filters(*shape: int, scale: float = 0.01) -> np.ndarray:
    """Random filters ``[8, ...]`` whose rows ``WEAK`` have a small L1 norm."""
    weights = _rand(*shape)
    weights[WEAK] *= scale
    return weights


def _conv(b: GraphBuilder, x: ir.Value, w: np.ndarray, name: str, **attrs: object) -> ir.Value:
    """A Conv named ``name`` with weights ``{name}.w`` and a random bias ``{name}.b``."""
    bias = b.const(_rand(w.shape[0]), f"{name}.b")
    y = b.op("Conv", x, b.const(w, f"{name}.w"), bias, pads=[1, 1, 1, 1], **attrs)
    y.producer().name = name  # type: ignore[union-attr]
    return y


def conv_relu_conv() -> ir.Model:
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = b.op("Relu", _conv(b, x, _weak_filters(8, 3, 3, 3), "conv1"))
    return b.build([_conv(b, h, _rand(4, 8, 3, 3), "conv2")])


def residual_block() -> ir.Model:
    """conv0 -> r; r -> conv1 -> Relu -> conv2 -> s; Relu(r + s) -> conv3: r and s are one group."""
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    r = _conv(b, x, _weak_filters(8, 3, 3, 3, scale=0.1), "conv0")
    s = _conv(
        b,
        b.op("Relu", _conv(b, r, _rand(6, 8, 3, 3), "conv1")),
        _weak_filters(8, 6, 3, 3, scale=0.1),
        "conv2",
    )
    return b.build([_conv(b, b.op("Relu", b.op("Add", r, s)), _rand(4, 8, 3, 3), "conv3")])


def depthwise() -> ir.Model:
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = b.op("Relu", _conv(b, x, _weak_filters(8, 3, 3, 3), "conv1"))
    h = b.op("Relu", _conv(b, h, _rand(8, 1, 3, 3), "dw", group=8))
    return b.build([_conv(b, h, _rand(4, 8, 3, 3), "conv2")])


def _initializer(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()  # type: ignore[union-attr]


def _zeroed(model: ir.Model, names: list[str], channels: list[int]) -> ir.Model:
    """A copy of ``model`` whose tensors ``names`` are zero on ``channels`` (axis 0)."""
    reference = model.clone()
    for name in names:
        value = reference.graph.initializers[name]
        array = value.const_value.numpy().copy()  # type: ignore[union-attr]
        array[channels] = 0
        value.const_value = ir.tensor(array, name=name)
    return reference


def _pruned(model: ir.Model, sparsity: float = 0.5, **options: int):
    work = model.clone()
    report = prune_channels(work, sparsity, **options)
    verify(work, full=True)
    return work, report


def test_conv_relu_conv_removes_the_lowest_l1_channels_exactly():
    model = conv_relu_conv()
    pruned, report = _pruned(model)
    first, second = report.groups
    assert (first.channels_before, first.channels_after, first.removed) == (8, 4, tuple(WEAK))
    assert (first.producers, first.consumers, first.skipped) == (("conv1",), ("conv2",), "")
    assert "graph output" in second.skipped and second.channels_after == second.channels_before == 4
    np.testing.assert_array_equal(_initializer(pruned, "conv1.w"), _initializer(model, "conv1.w")[KEPT])
    np.testing.assert_array_equal(_initializer(pruned, "conv1.b"), _initializer(model, "conv1.b")[KEPT])
    np.testing.assert_array_equal(_initializer(pruned, "conv2.w"), _initializer(model, "conv2.w")[:, KEPT])
    hidden = next(n for n in pruned.graph if n.op_type == "Relu").outputs[0]
    assert hidden.shape == ir.Shape([2, 4, 8, 8])
    assert report.parameters_before - report.parameters_after == 4 * 3 * 9 + 4 + 4 * 4 * 9
    assert_equivalent(_zeroed(model, ["conv1.w", "conv1.b"], WEAK), pruned, rtol=1e-5)


def test_multiple_of_rounds_the_kept_channels_down():
    b = GraphBuilder()
    x = b.input("x", F32, [1, 3, 8, 8])
    h = b.op("Relu", _conv(b, x, _rand(24, 3, 3, 3), "conv1"))
    model = b.build([_conv(b, h, _rand(4, 24, 3, 3), "conv2")])
    _, report = _pruned(model, 0.25)  # 24 -> 18
    assert report.groups[0].channels_after == 18
    rounded, report = _pruned(model, 0.25, multiple_of=8)  # 18 -> 16
    assert report.groups[0].channels_after == 16 and _initializer(rounded, "conv1.w").shape[0] == 16
    _, report = _pruned(model, 0.9, multiple_of=8)  # never below one multiple
    assert report.groups[0].channels_after == 8
    _, report = _pruned(model, 0.1, multiple_of=16)  # 24 -> 22 -> 16
    assert report.groups[0].channels_after == 16
    with pytest.raises(UsageError, match="multiple_of"):
        prune_channels(model.clone(), 0.5, multiple_of=0)


def test_a_residual_block_prunes_both_sides_of_the_add_alike():
    model = residual_block()
    pruned, report = _pruned(model, min_channels=8)
    stream = report.groups[0]
    assert stream.producers == ("conv0", "conv2") and set(stream.consumers) == {"conv1", "conv3"}
    assert stream.removed == tuple(WEAK) and stream.channels_after == 4
    assert "6 channels < min_channels 8" in report.groups[1].skipped
    assert _initializer(pruned, "conv0.w").shape == (4, 3, 3, 3)
    assert _initializer(pruned, "conv2.w").shape == (4, 6, 3, 3)
    assert _initializer(pruned, "conv1.w").shape == (6, 4, 3, 3)
    assert _initializer(pruned, "conv3.w").shape == (4, 4, 3, 3)
    reference = _zeroed(model, ["conv0.w", "conv0.b", "conv2.w", "conv2.b"], WEAK)
    assert_equivalent(reference, pruned, rtol=1e-5)


def test_a_depthwise_conv_in_the_group_gets_its_new_group_count():
    model = depthwise()
    pruned, report = _pruned(model)
    assert report.groups[0].removed == tuple(WEAK)
    dw = next(n for n in pruned.graph if n.name == "dw")
    assert dw.attributes["group"].as_int() == 4 and _initializer(pruned, "dw.w").shape == (4, 1, 3, 3)
    # The depthwise bias is an additive constant of the removed channels: zero it too.
    assert_equivalent(_zeroed(model, ["conv1.w", "conv1.b", "dw.b"], WEAK), pruned, rtol=1e-5)


def test_a_matmul_group_with_a_broadcast_bias():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 16])
    h = b.op("Add", b.op("MatMul", x, b.const(_weak_filters(8, 16).T.copy(), "w1")), b.const(_rand(8), "b1"))
    model = b.build([b.op("MatMul", b.op("Relu", h), b.const(_rand(8, 4), "w2"))])
    pruned, report = _pruned(model)
    assert report.groups[0].removed == tuple(WEAK)
    assert _initializer(pruned, "w1").shape == (16, 4) and _initializer(pruned, "w2").shape == (4, 4)
    reference = model.clone()
    for name, axis in (("w1", 1), ("b1", 0)):
        array = _initializer(reference, name).copy()
        np.moveaxis(array, axis, 0)[WEAK] = 0
        reference.graph.initializers[name].const_value = ir.tensor(array, name=name)
    assert_equivalent(reference, pruned, rtol=1e-5)


def test_refused_groups_and_shape_readers_are_left_alone_and_reported():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = _conv(b, x, _weak_filters(8, 3, 3, 3), "conv1")
    flat = b.op("Reshape", h, b.const(np.array([2, -1], dtype=np.int64), "shape"))
    g = _conv(b, x, _weak_filters(8, 3, 3, 3), "conv2")
    size = b.op("Shape", g)
    y = _conv(b, b.op("Relu", g), _rand(4, 8, 3, 3), "conv3")
    model = b.build([flat, size, y])
    before = serialized(model)
    report = prune_channels(model, 0.5)
    reasons = [group.skipped for group in report.groups]
    assert "Reshape" in reasons[0] and reasons[0].startswith("refused: ")
    assert "Shape 'Shape_" in reasons[1] and "reads the channel count" in reasons[1]
    assert report.removed_channels == 0 and report.parameters_after == report.parameters_before
    assert serialized(model) == before


def test_min_channels_and_sparsity_edge_cases():
    model = conv_relu_conv()
    before = serialized(model)
    for sparsity, options, reason in (
        (0.5, {"min_channels": 9}, "8 channels < min_channels 9"),
        (0.1, {}, "sparsity 0.1 removes none of 8 channels"),
        (0.0, {}, "sparsity 0 removes none of 8 channels"),
    ):
        report = prune_channels(model, sparsity, **options)
        assert report.groups[0].skipped == reason and serialized(model) == before
    pruned, report = _pruned(model, 0.99)
    strongest = int(np.abs(_initializer(model, "conv1.w")).sum(axis=(1, 2, 3)).argmax())
    assert report.groups[0].channels_after == 1  # floor(7.92) = 7: one channel stays, the strongest
    np.testing.assert_array_equal(
        _initializer(pruned, "conv1.w"), _initializer(model, "conv1.w")[[strongest]]
    )
    pruned, report = _pruned(model, 0.3)  # floor(2.4) = 2: the two weakest of WEAK go
    assert report.groups[0].channels_after == 6 and set(report.groups[0].removed) <= set(WEAK)
    for bad in (1.0, -0.1):
        with pytest.raises(UsageError, match="sparsity"):
            prune_channels(model, bad)
    with pytest.raises(UsageError, match="min_channels"):
        prune_channels(model, 0.5, min_channels=0)


def test_prune_channels_file_reports_the_error_and_writes_a_valid_model(tmp_path):
    src = io.save(residual_block(), tmp_path / "model.onnx")
    original = src.read_bytes()
    report = prune_channels_file(src, tmp_path / "pruned.onnx", 0.5)
    assert src.read_bytes() == original
    assert report.comparison is not None and report.comparison.max_rel > 0
    loaded = io.load(tmp_path / "pruned.onnx")
    verify(loaded, full=True)
    assert report.parameters_after < report.parameters_before
    assert report.to_json()["max_rel_error"] == report.comparison.max_rel


def _run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_structured_channels(tmp_path):
    model = io.save(residual_block(), tmp_path / "m.onnx")
    result = _run(
        "prune", model, "-o", tmp_path / "p.onnx", "--sparsity", "0.5", "--structured", "channels", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"groups", "parameters_before", "parameters_after", "removed_channels", "max_rel_error"} <= set(
        report
    )
    assert {"label", "channels_before", "channels_after", "producers", "consumers", "skipped"} <= set(
        report["groups"][0]
    )
    result = _run(
        "prune", model, "-o", tmp_path / "q.onnx", "--structured", "channels", "--min-channels", "4"
    )
    assert result.exit_code == 0, result.output
    assert "parameters" in result.stdout and "max rel" in result.stdout
    assert _run("prune", model, "-o", tmp_path / "x.onnx", "--structured", "filters").exit_code == 2
    assert (
        _run(
            "prune", model, "-o", tmp_path / "x.onnx", "--structured", "channels", "--min-channels", "0"
        ).exit_code
        == 2
    )
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.torch
def test_the_resnet_like_zoo_model_shrinks_and_stays_valid(tmp_path):
    pytest.importorskip("torch")
    from modelpress.examples.torch_models import ZOO, example_inputs, export_onnx

    entry = ZOO["resnet_like"]
    src = export_onnx(entry.build(0), example_inputs(entry), tmp_path / "resnet.onnx", constant_folding=True)
    report = prune_channels_file(src, tmp_path / "pruned.onnx", 0.5, dim_values={"batch": 2})
    assert report.parameters_after < 0.3 * report.parameters_before
    assert sum(1 for group in report.groups if not group.skipped) >= 8
    verify(io.load(tmp_path / "pruned.onnx"), full=True)
