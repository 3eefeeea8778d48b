"""--mode dynamic: DynamicQuantizeLinear -> MatMulInteger structure, fused kernels, numerics, refusals."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import PreconditionError
from modelpress.ir import io
from modelpress.quantize import QuantSpec, quantize_model
from modelpress.quantize.report import runtime_ops
from modelpress.runtime.compare import run_model
from tests.quantize import builders


def test_mlp_structure_and_onnxruntime_fuses_it_into_dynamic_quantize_matmul():
    quantized, report = quantize_model(builders.mlp(), QuantSpec(mode="dynamic"))
    assert report.inserted == {
        "dynamic_quantize_inputs": 2,
        "int8_weights": 2,
        "packed_matmul_groups": 0,
        "int8_gather_tables": 0,
    }
    assert report.ops_after == {
        "DynamicQuantizeLinear": 2,
        "MatMulInteger": 2,
        "Cast": 2,
        "Mul": 4,
        "Add": 2,
        "Relu": 1,
    }
    assert "MatMul" not in report.ops_after and "Gemm" not in report.ops_after
    assert runtime_ops(quantized) == {"com.microsoft::DynamicQuantizeMatMul": 2, "Relu": 1}
    assert [v.name for v in quantized.graph.outputs] == ["y"]


def test_error_within_the_analytic_rounding_bound():
    """One MatMul, per element: |dy_n| <= s_x/2 * sum_k |W_kn| + s_w[n]/2 * sum_k |x_k| + K s_x s_w[n] / 4
    (x rounded by half its step, W by half its per-column step, plus the cross term); s_x is the
    run-time scale DynamicQuantizeLinear picks, (max(x,0) - min(x,0)) / 255 per batch."""
    model = builders.mlp()
    w1 = model.graph.initializers["w1"].const_value.numpy()
    s_w = np.abs(w1).max(axis=0) / 127
    quantized, _ = quantize_model(model, QuantSpec(mode="dynamic"))
    quantized.graph.outputs[0] = next(
        n for n in quantized.graph if n.op_type == "Mul" and n.inputs[0].producer().op_type == "Cast"
    ).outputs[0]
    for feeds in builders.samples(model, count=3, batch=4, seed=5):
        x = feeds["x"]
        s_x = (max(x.max(), 0) - min(x.min(), 0)) / 255
        bound = s_x / 2 * np.abs(w1).sum(0) + s_w / 2 * np.abs(x).sum(1, keepdims=True) + 16 * s_x * s_w / 4
        for level in ("disable", "all"):
            (out,) = run_model(quantized, feeds, level=level).values()
            assert np.all(np.abs(out - x @ w1) <= bound * 1.0001 + 1e-6)


def test_attention_keeps_activation_matmuls_float_and_says_why():
    model = builders.attention_block()
    quantized, report = quantize_model(model, QuantSpec(mode="dynamic"))
    assert report.inserted["int8_weights"] == 4 and report.ops_after["MatMul"] == 2
    assert set(report.skipped.values()) == {"the weight (right operand) is not a constant initializer"}
    for feeds in builders.samples(model, count=2, seed=3):
        ref, out = run_model(model, feeds)["y"], run_model(quantized, feeds, level="all")["y"]
        assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()  # 4 int8 layers + LayerNorm rescaling


def test_conv_is_skipped_with_its_reason_and_a_cnn_alone_is_refused():
    _, report = quantize_model(builders.classifier(), QuantSpec(mode="dynamic"))
    assert "ConvInteger" in report.skipped["Conv_1"] and report.op_counts["Conv"] == {
        "quantized": 0,
        "float": 1,
    }
    with pytest.raises(PreconditionError, match=r"nothing to quantize.*ConvInteger"):
        quantize_model(builders.conv_relu(), QuantSpec(mode="dynamic"))


def test_already_dynamic_quantized_and_old_opsets_are_refused():
    quantized, _ = quantize_model(builders.mlp(), QuantSpec(mode="dynamic"))
    with pytest.raises(PreconditionError, match="already quantized"):
        quantize_model(quantized, QuantSpec(mode="dynamic"))
    with pytest.raises(
        PreconditionError, match="opset 10; quantization needs opset >= 11 \\(DynamicQuantizeLinear\\)"
    ):
        quantize_model(builders.mlp(opset=10), QuantSpec(mode="dynamic"))


def _dynamic_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear(x) then MatMulInteger with symmetric per-column int8 W, in numpy."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    x_scale = np.float32((high - low) / 255) if high > low else np.float32(1)
    x_zero_point = np.clip(np.round(-low / x_scale), 0, 255)
    x_u8 = np.clip(np.round(x / x_scale) + x_zero_point, 0, 255)
    w_scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    w_i8 = np.clip(np.round(w / w_scale), -127, 127)
    product = (x_u8 - x_zero_point).astype(np.float64) @ w_i8.astype(np.float64)
    return (product * (x_scale * w_scale)).astype(np.float32)


def _initializer(model, name):
    return model.graph.initializers[name].const_value.numpy()


def test_matmuls_sharing_an_input_are_packed_into_one_integer_kernel_with_their_biases():
    """q/k/v: one MatMulInteger over [Wq|Wk|Wv] + one Add of [bq|bk|bv] + Split, fused by onnxruntime
    into a single DynamicQuantizeMatMul; the outputs equal the per-MatMul dynamic quantization."""
    model = builders.qkv_block()
    quantized, report = quantize_model(model, QuantSpec(mode="dynamic"))
    assert report.inserted == {
        "dynamic_quantize_inputs": 1,
        "int8_weights": 3,
        "packed_matmul_groups": 1,
        "int8_gather_tables": 0,
    }
    assert report.ops_after == {
        "DynamicQuantizeLinear": 1,
        "MatMulInteger": 1,
        "Cast": 1,
        "Mul": 2,
        "Add": 1,
        "Split": 1,
    }
    assert [v.name for v in quantized.graph.outputs] == ["q", "k", "v"]
    assert runtime_ops(quantized) == {"com.microsoft::DynamicQuantizeMatMul": 1, "Split": 1}
    weights = {"q": "wq", "k": "wk", "v": "wv"}
    zero_points = [v for name, v in quantized.graph.initializers.items() if name.endswith("_zero_point")]
    assert [tuple(v.shape) for v in zero_points] == [()]  # one scalar 0: onnxruntime's fast path
    for feeds in builders.samples(model, count=3, batch=2, seed=7):
        for level in ("disable", "all"):
            out = run_model(quantized, feeds, level=level)
            for name, weight in weights.items():
                expected = _dynamic_reference(feeds["x"], _initializer(model, weight))
                expected += _initializer(model, f"b{name}")
                np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-5)


def test_packing_keeps_the_adds_when_one_projection_has_no_bias_and_works_at_opset_12():
    model = builders.qkv_block(opset=12, biases=(True, False, True))
    quantized, report = quantize_model(model, QuantSpec(mode="dynamic"))
    assert report.inserted["packed_matmul_groups"] == 1
    assert report.ops_after["Add"] == 2 and report.ops_after["Split"] == 1
    split = next(n for n in quantized.graph if n.op_type == "Split")
    assert list(split.attributes.get_ints("split")) == [16, 16, 8] and len(split.inputs) == 1  # Split-11 form
    for feeds in builders.samples(model, count=2, batch=3, seed=2):
        ref, out = run_model(model, feeds), run_model(quantized, feeds, level="all")
        for name in ("q", "k", "v"):
            assert np.abs(out[name] - ref[name]).max() <= 0.02 * np.abs(ref[name]).max()


def test_per_tensor_weights_are_not_packed():
    """Packing concatenates per-column scales; per-tensor weights keep their scalar fast path."""
    _, report = quantize_model(builders.qkv_block(), QuantSpec(mode="dynamic", per_channel=False))
    assert report.inserted["packed_matmul_groups"] == 0 and report.ops_after["MatMulInteger"] == 3


def test_embedding_tables_become_int8_per_row_and_only_looked_up_rows_are_dequantized(tmp_path):
    model = builders.embedding_encoder()
    quantized, report = quantize_model(model, QuantSpec(mode="dynamic"))
    assert report.inserted["int8_gather_tables"] == 2 and report.op_counts["Gather"] == {
        "quantized": 3,
        "float": 0,
    }
    tables = {
        name: v for name, v in quantized.graph.initializers.items() if "embeddings" in name or "pos" in name
    }
    assert {name: v.dtype for name, v in tables.items()} == {
        "word_embeddings_i8": ir.DataType.INT8,
        "word_embeddings_scale": ir.DataType.FLOAT,
        "pos_i8": ir.DataType.INT8,
        "pos_scale": ir.DataType.FLOAT,
    }  # the shared table once, the float tables gone
    assert report.weight_bytes_after < 0.5 * report.weight_bytes_before
    path = io.save(quantized, tmp_path / "q.onnx")  # the checker accepts it
    word, pos = _initializer(model, "word_embeddings"), _initializer(model, "pos")
    rng = np.random.default_rng(4)
    for _ in range(3):
        feeds = {
            "ids": rng.integers(0, 50, (2, 5)),
            "other_ids": rng.integers(-50, 50, (2, 5)),  # negative indices count from the end
            "positions": rng.integers(0, 8, (2, 5)),
        }
        expected = word[feeds["ids"]] + word[feeds["other_ids"]] + pos[feeds["positions"]]
        half_steps = sum(
            np.abs(table).max(axis=1)[feeds[key]] / 127 / 2
            for table, key in ((word, "ids"), (word, "other_ids"), (pos, "positions"))
        )
        for level in ("disable", "all"):
            out = run_model(path, feeds, level=level)
            assert np.all(np.abs(out["h"] - expected) <= half_steps[..., None] * 1.0001 + 1e-7)
            np.testing.assert_allclose(
                out["y"], _dynamic_reference(out["h"], _initializer(model, "w")), rtol=1e-5, atol=1e-5
            )


def test_embedding_tables_stay_float_on_request_and_other_gathers_are_left_alone():
    model = builders.embedding_encoder()
    quantized, report = quantize_model(model, QuantSpec(mode="dynamic", quantize_embeddings=False))
    assert report.inserted["int8_gather_tables"] == 0 and report.ops_after["Gather"] == 3
    assert set(report.skipped.values()) == {
        "embedding tables kept float32 (quantize_embeddings off, --float-embeddings)"
    }
    assert "word_embeddings" in quantized.graph.initializers
    _, report = quantize_model(builders.attention_block(), QuantSpec(mode="dynamic"))
    assert "Gather" not in report.op_counts  # no constant float table: nothing planned


def test_a_table_also_read_by_another_op_stays_float():
    """Tied weights: an int8 copy beside the float table the MatMul still needs would add size."""
    model = builders.embedding_encoder()
    word = model.graph.initializers["word_embeddings"]  # [50, 16]
    # logits = h [N,S,16] @ word^T [16,50]: the table is read through a Transpose too
    transpose = ir.node("Transpose", [word], attributes={"perm": [1, 0]}, name="word_T")
    logits = ir.node("MatMul", [model.graph.outputs[0], transpose.outputs[0]], name="logits_MatMul")
    logits.outputs[0].name = "logits"
    model.graph.extend([transpose, logits])
    model.graph.outputs.append(logits.outputs[0])
    _, report = quantize_model(model, QuantSpec(mode="dynamic"))
    assert report.inserted["int8_gather_tables"] == 1  # pos only
    reasons = [why for why in report.skipped.values() if "also read by Transpose 'word_T'" in why]
    assert len(reasons) == 2  # both Gathers of the shared word table
