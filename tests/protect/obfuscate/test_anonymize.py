"""AnonymizeNamesPass: no original name or text left in the bytes, outputs bitwise equal."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from modelpress.examples.cnn import build_example_cnn
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.protect.obfuscate import AnonymizeNamesPass
from modelpress.protect.obfuscate.anonymize import original_names
from tests.protect.obfuscate.helpers import F32, C, rand
from tests.testing import EXACT, assert_equivalent, ops, run_pass

ANONYMIZE = AnonymizeNamesPass(seed=1)


def _documented_cnn() -> ir.Model:
    """The example CNN with doc strings and metadata on every kind of owner."""
    model = build_example_cnn()
    model.doc_string = "trained on SECRET_DATASET"
    model.metadata_props["author"] = "SECRET_AUTHOR"
    model.graph.doc_string = "graph SECRET_DOC"
    model.graph.metadata_props["run"] = "SECRET_RUN"
    for node in model.graph:
        node.doc_string = f"SECRET_TRACE {node.name}"
        node.metadata_props["pkg"] = "SECRET_PKG"
    for value in model.graph.initializers.values():
        value.doc_string = "SECRET_VALUE_DOC"
    return model


def _leaks(model: ir.Model, names: set[str]) -> list[str]:
    data = io.to_bytes(model)
    return sorted(name for name in names if name.encode() in data)


def test_every_name_and_text_is_replaced_and_outputs_are_bitwise_equal():
    model = _documented_cnn()
    names = original_names(model)
    interface = {v.name for v in (*model.graph.inputs, *model.graph.outputs)}
    after, changed = run_pass(ANONYMIZE, model)
    assert changed is True
    assert ops(after) == ops(model)
    io.check_model(after, full=True)
    assert_equivalent(model, after, rtol=EXACT)
    assert _leaks(after, names - interface) == []
    assert b"SECRET" not in io.to_bytes(after)
    assert [v.name for v in after.graph.inputs] == ["image"]
    assert [v.name for v in after.graph.outputs] == ["probabilities"]
    renamed = [n.name for n in after.graph] + list(after.graph.initializers)
    assert len(set(renamed)) == len(renamed)
    assert all(name[0] in "nt" and name[1:].isalnum() for name in renamed)


def test_rename_interface_also_renames_inputs_and_outputs():
    model = build_example_cnn()
    after, changed = run_pass(AnonymizeNamesPass(seed=1, rename_interface=True), model)
    assert changed is True
    assert _leaks(after, original_names(model)) == []
    io.check_model(after, full=True)


def test_symbols_never_reuse_an_original_name():
    b = GraphBuilder()
    x = b.input("t0", F32, [1, C])  # an interface name that looks like a symbol
    h = b.op("Relu", b.op("MatMul", x, b.const(rand(C, C), "t1")))
    h.name = "n0"
    y = b.op("MatMul", h, b.const(rand(C, 2), "t2"))
    y.name = "t3"
    model = b.build([y])
    after, _ = run_pass(AnonymizeNamesPass(seed=0), model)
    internal = (
        {n.name for n in after.graph}
        | set(after.graph.initializers)
        | {n.outputs[0].name for n in after.graph}
    )
    assert internal.isdisjoint({"t1", "t2", "n0"} - {"t0", "t3"})
    assert [v.name for v in after.graph.inputs] == ["t0"] and [v.name for v in after.graph.outputs] == ["t3"]


def test_subgraphs_constant_tensors_and_omitted_outputs():
    b = GraphBuilder()
    x = b.input("x", F32, [2, C])
    inner = ir.node("Neg", [x], name="secret_inner_node")
    inner.outputs[0].name, inner.outputs[0].type = "secret_inner_value", ir.TensorType(F32)
    branch = ir.Graph([], [inner.outputs[0]], nodes=[inner], name="secret_branch")
    other = ir.node("Identity", [x], name="secret_other_node")
    other.outputs[0].name, other.outputs[0].type = "secret_other_value", ir.TensorType(F32)
    branch_else = ir.Graph([], [other.outputs[0]], nodes=[other], name="secret_else")
    constant = ir.node(
        "Constant", [], attributes={"value": ir.tensor(np.float32(2), name="secret_tensor")}, name="c"
    )
    constant.outputs[0].name = "secret_constant"
    b.nodes.append(constant)
    chosen = b.op("If", b.const(np.array(True), "secret_cond"), then_branch=branch, else_branch=branch_else)
    dropped = b.op("Dropout", b.op("Mul", chosen, constant.outputs[0]), outputs=1)
    model = b.build([dropped])
    after, changed = run_pass(ANONYMIZE, model)
    assert changed is True
    assert not [
        n for n in original_names(model) if n.startswith("secret") and n.encode() in io.to_bytes(after)
    ]
    assert b"secret" not in io.to_bytes(after)
    io.check_model(after, full=True)
    assert_equivalent(model, after, rtol=EXACT)


def test_same_seed_gives_identical_bytes_and_different_seeds_differ():
    model = build_example_cnn()
    first, _ = run_pass(AnonymizeNamesPass(seed=2), model)
    again, _ = run_pass(AnonymizeNamesPass(seed=2), model)
    other, _ = run_pass(AnonymizeNamesPass(seed=3), model)
    assert io.to_bytes(first) == io.to_bytes(again)
    assert [n.name for n in first.graph] != [n.name for n in other.graph]


def test_nothing_to_rename_reports_no_change():
    b = GraphBuilder()
    x = b.input("x", F32, [2, C])
    model = b.build([x])  # the only value is the interface; no node, no text
    model.graph.name = "g"
    after, changed = run_pass(ANONYMIZE, model)
    assert changed is False
    assert io.to_bytes(after) == io.to_bytes(model)
