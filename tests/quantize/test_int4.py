"""--mode weight-only --bits 4: packing bit-exact with onnxruntime's quantizer, structure, numerics, refusals."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnxruntime.quantization import QuantFormat
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

from modelpress.errors import PreconditionError, UsageError
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.ir.verify import verify
from modelpress.quantize import QuantSpec, quantize_file, quantize_model
from modelpress.quantize.blockwise import dequantize_blocks, quantize_blocks
from modelpress.quantize.report import runtime_ops
from modelpress.runtime.compare import run_model
from tests.quantize import builders

FLOAT = ir.DataType.FLOAT


def embedder(k: int = 64, n: int = 48, vocab: int = 100, seed: int = 0, opset: int = 21) -> ir.Model:
    """ids[B,S] -> Gather(table[vocab,k]) -> MatMul(w[k,n]) -> y; table row 2 and w column 0 are zeros."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, k)).astype(np.float32)
    table[2] = 0
    w = (rng.standard_normal((k, n)) * rng.uniform(0.05, 2.0, size=(1, n))).astype(np.float32)
    w[:, 0] = 0
    b = GraphBuilder(opset=opset)
    ids = b.input("ids", ir.DataType.INT64, ["B", "S"])
    y = b.op("MatMul", b.op("Gather", b.const(table, "table"), ids), b.const(w, "w"))
    y.name = "y"
    return b.build([y])


def _ids(seed: int = 0, vocab: int = 100) -> dict[str, np.ndarray]:
    return {"ids": np.random.default_rng(seed).integers(0, vocab, (2, 5))}


def _onnxruntime_int4(model: ir.Model, block_size: int, symmetric: bool, fmt: str) -> dict[str, np.ndarray]:
    """Initializers of onnxruntime's own MatMulNBitsQuantizer on ``model`` (RTN, the reference)."""
    proto = onnx.load_from_string(io.to_bytes(model))
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=symmetric,
        quant_format=QuantFormat.QOperator if fmt == "ort" else QuantFormat.QDQ,
        op_types_to_quantize=("MatMul", "Gather") if fmt == "ort" else ("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(copy.deepcopy(proto), algo_config=config)
    quantizer.process()
    return {t.name: onnx.numpy_helper.to_array(t) for t in quantizer.model.model.graph.initializer}


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("k", "block_size"), [(64, 32), (100, 32), (33, 16), (256, 128)])
def test_weights_are_bit_identical_to_onnxruntimes_quantizer(k, block_size, symmetric):
    """Packed levels, scales and zero points of MatMulNBits, GatherBlockQuantized and blocked
    DequantizeLinear equal onnxruntime's, including short last blocks, odd K and all-zero blocks."""
    model = embedder(k=k)
    names = {"ort": {"w_Q4": "w_q4", "table_Q4": "table_q4"}, "qdq": {"w_DQ_Q4": "w_q4"}}
    for fmt in ("ort", "qdq"):
        theirs = _onnxruntime_int4(model, block_size, symmetric, fmt)
        spec = QuantSpec(
            mode="weight-only", bits=4, block_size=block_size, symmetric_weights=symmetric, weight_format=fmt
        )
        quantized, _ = quantize_model(model, spec)
        ours = {name: value.const_value.numpy() for name, value in quantized.graph.initializers.items()}
        pairs = dict(names[fmt])
        for their_name in list(pairs):
            stem = their_name.rsplit("_Q4", 1)[0]
            pairs[f"{stem}_scales"] = f"{pairs[their_name].rsplit('_q4', 1)[0]}_scale"
            if not symmetric:
                pairs[f"{stem}_zero_points"] = f"{pairs[their_name].rsplit('_q4', 1)[0]}_zero_point"
        assert set(pairs) <= set(theirs), (fmt, sorted(theirs))
        for their_name, our_name in pairs.items():
            np.testing.assert_array_equal(ours[our_name], theirs[their_name], err_msg=f"{fmt}: {our_name}")
            assert ours[our_name].dtype == theirs[their_name].dtype, our_name


def test_structure_and_kernels_of_both_formats():
    model = embedder()
    ort_model, report = quantize_model(model, QuantSpec(mode="weight-only", bits=4))
    assert report.ops_after == {"com.microsoft::GatherBlockQuantized": 1, "com.microsoft::MatMulNBits": 1}
    assert report.inserted == {"int4_matmul_weights": 1, "int4_gather_tables": 1}
    assert report.op_counts == {
        "Gather": {"quantized": 1, "float": 0},
        "MatMul": {"quantized": 1, "float": 0},
    }
    node = next(n for n in ort_model.graph if n.op_type == "MatMulNBits")
    assert {k: a.value for k, a in node.attributes.items()} == {"K": 64, "N": 48, "bits": 4, "block_size": 32}
    assert ort_model.opset_imports["com.microsoft"] == 1
    fast, _ = quantize_model(model, QuantSpec(mode="weight-only", bits=4, accuracy_level=4))
    assert next(n for n in fast.graph if n.op_type == "MatMulNBits").attributes["accuracy_level"].value == 4
    assert sorted(ort_model.graph.initializers) == ["table_q4", "table_scale", "w_q4", "w_scale"]
    qdq_model, report = quantize_model(model, QuantSpec(mode="weight-only", bits=4, weight_format="qdq"))
    # the table's rows are gathered first (levels and scales), then only they are dequantized:
    # onnxruntime has no int4 Gather, so the qdq table keeps one level per byte
    assert report.ops_after == {"DequantizeLinear": 2, "Gather": 2, "MatMul": 1}
    table_dq = next(n for n in qdq_model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].producer())
    assert [v.producer().op_type for v in table_dq.inputs] == ["Gather", "Gather"]
    assert qdq_model.graph.initializers["table_q4"].const_value.dtype == ir.DataType.INT8
    verify(qdq_model, full=True)
    assert qdq_model.graph.initializers["w_q4"].const_value.dtype == ir.DataType.INT4
    # onnxruntime fuses a blocked DequantizeLinear -> MatMul into its 4-bit kernel itself (when the
    # activation does not come from a DequantizeLinear too, as the gathered rows do here)
    mlp, _ = quantize_model(
        builders.mlp(),
        QuantSpec(mode="weight-only", bits=4, block_size=16, weight_format="qdq"),
        upgrade_opset=True,
    )
    # (its MatMul + Add + Relu -> FusedGemm rewrite runs first and takes the other one, measured)
    assert runtime_ops(mlp)["com.microsoft::MatMulNBits"] == 1
    assert [v.name for v in ort_model.graph.outputs] == [v.name for v in qdq_model.graph.outputs] == ["y"]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("fmt", ["ort", "qdq"])
def test_outputs_equal_the_dequantized_weights_and_the_rounding_bound_holds(fmt, symmetric):
    """The kernels compute with exactly (q - zero_point) * scale (fp32 tolerance), and each weight
    moved by at most half a step (asymmetric) or one step (symmetric: +8 is clipped to 7).

    Exception, measured: at ORT_ENABLE_ALL onnxruntime fuses the qdq format's DequantizeLinear ->
    MatMul into MatMulNBits with accuracy_level=4, i.e. it quantizes the activations to int8 per
    block at run time; that adds up to about one int8 step of the activations (bounded here by
    1 % of the output's scale). The "ort" format leaves accuracy_level unset: float activations."""
    model = embedder()
    table = model.graph.initializers["table"].const_value.numpy()
    w = model.graph.initializers["w"].const_value.numpy()
    style = "nbits" if fmt == "ort" else "qdq"
    w_dq = dequantize_blocks(quantize_blocks(w, 0, 32, symmetric=symmetric, style=style))
    table_dq = dequantize_blocks(quantize_blocks(table, 1, 32, symmetric=symmetric, style="numpy"))
    for weight, dequantized, axis in ((w, w_dq, 0), (table, table_dq, 1)):
        scale = np.abs(quantize_blocks(weight, axis, 32, symmetric=symmetric, style=style).scales)
        step = np.repeat(scale, 32, axis=axis)
        assert np.all(np.abs(weight - dequantized) <= step * (1.0 if symmetric else 0.5) * 1.0001 + 1e-7)
    spec = QuantSpec(mode="weight-only", bits=4, symmetric_weights=symmetric, weight_format=fmt)
    quantized, _ = quantize_model(model, spec)
    for seed in (0, 1, 2):
        feeds = _ids(seed)
        expected = table_dq[feeds["ids"]] @ w_dq
        np.testing.assert_allclose(run_model(quantized, feeds)["y"], expected, rtol=1e-5, atol=1e-5)
        deployed = run_model(quantized, feeds, level="all")["y"]
        if fmt == "ort":
            np.testing.assert_allclose(deployed, expected, rtol=1e-5, atol=1e-5)
        else:
            assert np.abs(deployed - expected).max() <= 0.01 * np.abs(expected).max()


def test_gemm_becomes_matmulnbits_plus_bias_and_computes_with_the_dequantized_weight():
    rng = np.random.default_rng(1)
    w, bias = rng.standard_normal((32, 64)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    b = GraphBuilder(opset=17)
    y = b.op("Gemm", b.input("x", FLOAT, ["N", 64]), b.const(w, "w"), b.const(bias, "b"), transB=1)
    y.name = "y"
    model = b.build([y])
    quantized, report = quantize_model(model, QuantSpec(mode="weight-only", bits=4))
    assert report.ops_after == {"com.microsoft::MatMulNBits": 1, "Add": 1}
    assert report.op_counts == {"Gemm": {"quantized": 1, "float": 0}}
    w_dq = dequantize_blocks(
        quantize_blocks(w.T, 0, 32, symmetric=True, style="nbits")
    )  # transB: W.T is [K, N]
    x = rng.standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(
        run_model(quantized, {"x": x}, level="all")["y"], x @ w_dq + bias, rtol=1e-5, atol=1e-5
    )


def test_conv_stays_float_with_its_reason():
    _, report = quantize_model(builders.classifier(), QuantSpec(mode="weight-only", bits=4, block_size=16))
    assert report.ops_after["com.microsoft::MatMulNBits"] == 2 and "Gemm" not in report.ops_after
    assert report.op_counts["Conv"] == {"quantized": 0, "float": 1}
    assert "Conv has no 4-bit kernel" in report.skipped["Conv_1"]


def test_activation_matmuls_are_skipped_with_their_reason():
    _, report = quantize_model(
        builders.attention_block(), QuantSpec(mode="weight-only", bits=4, block_size=16)
    )
    assert report.inserted["int4_matmul_weights"] == 4
    assert set(report.skipped.values()) == {
        "the weight (right operand) is not a constant float32 initializer"
    }


def test_gptq_lowers_the_output_error_on_calibration_data_in_the_same_format():
    """On correlated inputs (64 features spanning ~16 directions, as layer inputs do) GPTQ's
    error feedback moves rounding errors where the inputs have no energy: it beats
    round-to-nearest on the data it saw and on new data; the stored format is unchanged."""
    rng = np.random.default_rng(0)

    def inputs() -> dict[str, np.ndarray]:
        low_rank = rng.standard_normal((32, 16)).astype(np.float32) @ mixing
        return {"x": low_rank + 0.05 * rng.standard_normal((32, 64)).astype(np.float32)}

    mixing = rng.standard_normal((16, 64)).astype(np.float32)
    b = GraphBuilder(opset=17)
    x = b.input("x", FLOAT, ["N", 64])
    y = b.op("MatMul", x, b.const(rng.standard_normal((64, 32)).astype(np.float32), "w"))
    y.name = "y"
    model = b.build([y])
    data, fresh = [inputs() for _ in range(4)], [inputs() for _ in range(2)]
    rtn, _ = quantize_model(model, QuantSpec(mode="weight-only", bits=4, symmetric_weights=False))
    gptq, report = quantize_model(
        model,
        QuantSpec(mode="weight-only", bits=4, symmetric_weights=False, weight_algorithm="gptq"),
        samples=data,
    )
    assert report.calibration_samples == 128 and "gptq" in report.notes[0]
    assert {k: (v.const_value.dtype, v.shape) for k, v in gptq.graph.initializers.items()} == {
        k: (v.const_value.dtype, v.shape) for k, v in rtn.graph.initializers.items()
    }

    def rms(candidate, feeds_list):
        errors = [run_model(candidate, f, level="all")["y"] - run_model(model, f)["y"] for f in feeds_list]
        return float(np.sqrt(np.mean(np.square(errors))))

    assert rms(gptq, data) < 0.5 * rms(rtn, data)
    assert rms(gptq, fresh) < 0.5 * rms(rtn, fresh)


def test_quantize_file_writes_a_quarter_size_model_and_reports(tmp_path):
    source = io.save(embedder(k=256, n=256, vocab=512, opset=17), tmp_path / "float.onnx")
    report = quantize_file(source, tmp_path / "q4.onnx", QuantSpec(mode="weight-only", bits=4))
    assert report.file_bytes_after < 0.2 * report.file_bytes_before
    assert report.integer_kernels == {
        "com.microsoft::MatMulNBits": 1,
        "com.microsoft::GatherBlockQuantized": 1,
    }
    # random N(0, 1) weights, one 32-element block each: the worst output element moves ~10 %
    assert report.eval_data.startswith("random feeds") and report.errors[0].max_rel < 0.2
    assert report.to_json()["spec"]["bits"] == 4


def test_the_input_model_is_not_modified_and_a_4bit_model_is_refused():
    model = embedder()
    before = io.to_bytes(model)
    for fmt in ("ort", "qdq"):
        quantized, _ = quantize_model(model, QuantSpec(mode="weight-only", bits=4, weight_format=fmt))
        assert io.to_bytes(model) == before
        with pytest.raises(
            PreconditionError, match=r"already quantized: node '.*' is a (MatMulNBits|GatherBlock|Dequant)"
        ):
            quantize_model(quantized, QuantSpec(mode="weight-only", bits=4))


def test_qdq_format_needs_opset_21_unless_upgraded():
    model = embedder(opset=17)
    with pytest.raises(
        PreconditionError, match=r"opset 17; .*>= 21 \(4-bit blocked DequantizeLinear.*--upgrade-opset"
    ):
        quantize_model(model, QuantSpec(mode="weight-only", bits=4, weight_format="qdq"))
    upgraded, _ = quantize_model(
        model, QuantSpec(mode="weight-only", bits=4, weight_format="qdq"), upgrade_opset=True
    )
    assert upgraded.opset_imports[""] == 21
    ort_model, _ = quantize_model(
        model, QuantSpec(mode="weight-only", bits=4)
    )  # contrib ops: any opset >= 13
    assert ort_model.opset_imports[""] == 17


def test_nothing_to_quantize_and_gptq_without_data_are_refused():
    with pytest.raises(PreconditionError, match=r"nothing to quantize to 4 bits: .*Conv has no 4-bit kernel"):
        quantize_model(builders.conv_relu(), QuantSpec(mode="weight-only", bits=4))
    with pytest.raises(UsageError, match="--algorithm gptq needs calibration data"):
        quantize_model(
            builders.mlp(), QuantSpec(mode="weight-only", bits=4, weight_algorithm="gptq", block_size=16)
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"mode": "weight-only", "bits": 4, "block_size": 24},
            "block size 24 must be a power of 2 and >= 16",
        ),
        ({"mode": "weight-only", "bits": 4, "block_size": 8}, "block size 8 must be a power of 2 and >= 16"),
        ({"mode": "dynamic", "bits": 4}, "4-bit weights are weight-only .* not --mode dynamic"),
        ({"mode": "static", "bits": 4}, "4-bit weights are weight-only .* not --mode static"),
        ({"mode": "weight-only", "bits": 3}, "bits 3 is not supported; choose 8 or 4"),
        ({"mode": "weight-only", "bits": 4, "weight_format": "gguf"}, "unknown weight format 'gguf'"),
        ({"mode": "weight-only", "weight_algorithm": "gptq"}, "--algorithm gptq chooses 4-bit levels"),
        ({"mode": "weight-only", "bits": 4, "weight_algorithm": "awq"}, "unknown weight algorithm 'awq'"),
        (
            {"mode": "weight-only", "symmetric_weights": False},
            "asymmetric weights are not implemented for 8 bits",
        ),
        ({"mode": "weight-only", "bits": 4, "accuracy_level": 5}, "accuracy level 5 must be 0"),
        (
            {"mode": "weight-only", "bits": 4, "accuracy_level": 4, "weight_format": "qdq"},
            "use it with --bits 4 --format ort",
        ),
    ],
)
def test_bad_4bit_specs_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        QuantSpec(**options)
