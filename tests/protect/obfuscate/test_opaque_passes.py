"""The opaque-operator passes one by one: regions, compression, scrambling, expansion, op-type anonymization, restore."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import PreconditionError
from modelpress.examples.cnn import build_example_cnn
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.ir.stats import op_histogram
from modelpress.ir.verify import verify
from modelpress.protect.obfuscate import (
    AnonymizeOpTypesPass,
    CompressSubgraphsPass,
    ExpandGraphPass,
    ScrambleWeightsPass,
    restore_original,
)
from modelpress.protect.obfuscate._regions import find_regions
from modelpress.protect.obfuscate._scramble import correlation, scramble, unscramble
from modelpress.protect.obfuscate.compress_subgraphs import DOMAIN
from tests.protect.obfuscate.helpers import F32, batchnorm, rand
from tests.testing import EXACT, FP32, assert_equivalent, run_pass


def _residual_net() -> ir.Model:
    """x -> Conv+BN+Relu -> Conv -> Add(skip) -> Relu -> Flatten -> Gemm+Relu -> MatMul+Add."""
    b = GraphBuilder()
    x = b.input("x", F32, [2, 3, 8, 8])
    h = b.op("Conv", x, b.const(rand(8, 3, 3, 3), "stem.w"), b.const(rand(8), "stem.b"), pads=[1, 1, 1, 1])
    skip = b.op("Relu", batchnorm(b, h, 8, "stem.bn"))
    h = b.op("Conv", skip, b.const(rand(8, 8, 3, 3), "block.w"), pads=[1, 1, 1, 1])
    h = b.op("Relu", b.op("Add", h, skip))
    h = b.op("Flatten", b.op("MaxPool", h, kernel_shape=[4, 4], strides=[4, 4]))
    h = b.op("Relu", b.op("Gemm", h, b.const(rand(32, 16), "fc1.w"), b.const(rand(16), "fc1.b")))
    y = b.op("Add", b.op("MatMul", h, b.const(rand(16, 4), "fc2.w")), b.const(rand(4), "fc2.b"))
    return b.build([y])


def _compressed(model: ir.Model) -> ir.Model:
    after, changed = run_pass(CompressSubgraphsPass(), model)
    assert changed
    return after


# --- regions ------------------------------------------------------------------------------------


def test_regions_follow_the_key_subgraphs():
    labels = [region.label() for region in find_regions(_residual_net().graph)]
    assert labels == [
        "Conv+BatchNormalization+Relu",
        "Conv+Add+Relu+MaxPool+Flatten",
        "Gemm+Relu",
        "MatMul+Add",
    ]


def test_attention_block_is_one_region():
    b = GraphBuilder()
    x = b.input("x", F32, [2, 4, 8])
    q, k, v = (b.op("MatMul", x, b.const(rand(8, 8), f"{n}.w")) for n in "qkv")
    scores = b.op(
        "Softmax", b.op("Div", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 2, 1])), b.const(2.0))
    )
    context = b.op("MatMul", scores, v)
    out = b.op("Add", b.op("MatMul", context, b.const(rand(8, 8), "o.w")), x)
    y = b.op(
        "LayerNormalization", out, b.const(np.ones(8, np.float32)), b.const(np.zeros(8, np.float32)), axis=-1
    )
    labels = [region.label() for region in find_regions(b.build([y]).graph)]
    assert labels == [
        "MatMul",
        "MatMul+Transpose",
        "MatMul",
        "MatMul+Div+Softmax+MatMul+MatMul+Add+LayerNormalization",
    ]


# --- compress-subgraphs -------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [_residual_net, build_example_cnn])
def test_compress_outlines_every_node_and_keeps_the_function(build):
    model = build()
    verify(model, full=True)
    after = _compressed(model)
    io.check_model(after, full=True)
    assert all(node.domain == DOMAIN for node in after.graph)
    assert len(after.functions) == len(list(after.graph)) == len(find_regions(model.graph))
    assert_equivalent(model, after, rtol=EXACT)
    _, again = run_pass(CompressSubgraphsPass(), after)
    assert again is False


def test_compress_keeps_small_constants_in_the_function_and_weights_in_the_model():
    after = _compressed(_residual_net())
    kept = set(after.graph.initializers)
    assert {"stem.w", "block.w", "fc1.w", "fc2.w"} <= kept  # 64 bytes or more: stay, to be scrambled
    assert "fc2.b" not in kept  # 16 bytes: a Constant inside the function (the library)
    assert all(v.const_value.nbytes >= 64 for v in after.graph.initializers.values())  # type: ignore[union-attr]


def test_compress_refuses_control_flow_and_foreign_functions():
    model = _residual_net()
    condition = ir.val("c", ir.DataType.BOOL, ir.Shape([]))

    def branch(name: str) -> ir.Graph:
        const = ir.node("Constant", [], attributes={"value": ir.tensor(np.zeros(1, np.float32))})
        return ir.Graph([], [const.outputs[0]], nodes=[const], name=name)

    model.graph.append(
        ir.node("If", [condition], attributes={"then_branch": branch("a"), "else_branch": branch("b")})
    )
    with pytest.raises(PreconditionError, match="control flow"):
        CompressSubgraphsPass().requires(model)
    other = _residual_net()
    body = ir.Graph([], [], nodes=[], opset_imports={"": 17}, name="f")
    other.functions[("custom", "f", "")] = ir.Function("custom", "f", graph=body, attributes=[])
    with pytest.raises(PreconditionError, match="model-local functions"):
        CompressSubgraphsPass().requires(other)


# --- scrambling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(1).standard_normal((16, 8, 3, 3)).astype(np.float32),
        np.ones(32, np.float32),
        np.zeros((4, 16), np.float32),
        np.array([0.0, -0.0, 1e-39, 3e38, -3e38, np.inf, -np.inf, np.nan] * 4, np.float32),
        np.random.default_rng(2).standard_normal(300).astype(np.float16),
        np.arange(40, dtype=np.int64).reshape(5, 8),
        np.random.default_rng(3).random(100) > 0.5,
    ],
    ids=["conv", "ones", "zeros", "extremes", "fp16", "int64", "bool"],
)
def test_scramble_is_exact_and_uncorrelated(array):
    scrambled = scramble(array, np.random.default_rng(0))
    assert scrambled.stored.shape == (array.size,) and scrambled.stored.dtype == array.dtype
    assert unscramble(scrambled).tobytes() == array.tobytes()
    assert abs(correlation(scrambled.stored, array)) <= 0.05
    assert array.tobytes()[:64] not in scrambled.stored.tobytes()


def test_scramble_weights_pass_stores_every_weight_scrambled():
    model = _residual_net()
    compressed = _compressed(model)
    after, changed = run_pass(ScrambleWeightsPass(0), compressed)
    assert changed
    io.check_model(after, full=True)
    assert_equivalent(model, after, rtol=FP32)  # decoding is exact; Gemm with a computed B may round apart
    for name, value in compressed.graph.initializers.items():
        original = value.const_value.numpy()  # type: ignore[union-attr]
        stored = after.graph.initializers[name].const_value.numpy()  # type: ignore[union-attr]
        assert stored.shape == (original.size,)
        assert abs(correlation(stored, original)) < 0.1
        assert original.tobytes()[:64] not in stored.tobytes()


# --- expansion, op types, restore -------------------------------------------------------------------


def _scrambled() -> tuple[ir.Model, ir.Model]:
    model = _residual_net()
    after, _ = run_pass(ScrambleWeightsPass(0), _compressed(model))
    return model, after


def test_expand_graph_adds_decoys_and_edges_without_changing_outputs():
    _, scrambled = _scrambled()
    after, changed = run_pass(ExpandGraphPass(1, decoys=1.0, fake_outputs=1.0, fake_inputs=1.0), scrambled)
    assert changed
    io.check_model(after, full=True)
    assert len(list(after.graph)) == 2 * len(list(scrambled.graph))  # one decoy per operator
    assert sum(len(n.inputs) for n in after.graph) > sum(len(n.inputs) for n in scrambled.graph) + 4
    assert_equivalent(scrambled, after, rtol=EXACT)


def test_anonymize_op_types_gives_every_operator_its_own_meaningless_type():
    _, scrambled = _scrambled()
    expanded, _ = run_pass(ExpandGraphPass(1), scrambled)
    after, changed = run_pass(AnonymizeOpTypesPass(2, domains=2), expanded)
    assert changed
    io.check_model(after, full=True)
    types = [(node.domain, node.op_type) for node in after.graph]
    assert len(set(types)) == len(types) == len(after.functions)
    assert len({domain for domain, _ in types}) == 2 and DOMAIN not in after.opset_imports
    assert all(t.islower() or t.isalnum() for _, t in types)
    assert all(v.type is None for n in after.graph for v in n.outputs if not v.is_graph_output())
    assert_equivalent(expanded, after, rtol=EXACT)


def test_restore_gives_back_the_original_ops_and_weights():
    model, scrambled = _scrambled()
    expanded, _ = run_pass(ExpandGraphPass(1, decoys=1.0), scrambled)
    restored = restore_original(expanded.clone())
    io.check_model(restored, full=True)
    assert op_histogram(restored) == op_histogram(model)
    assert not restored.functions
    weights = {v.const_value.tobytes() for v in restored.graph.initializers.values()}  # type: ignore[union-attr]
    assert {v.const_value.tobytes() for v in model.graph.initializers.values()} <= weights  # type: ignore[union-attr]
    assert_equivalent(model, restored, rtol=EXACT)
