import onnx_ir as ir
import pytest

from modelpress.errors import PassError, UsageError
from modelpress.ir import io
from modelpress.passes.base import ModelpressPass, PassManager
from modelpress.passes.eliminate_dead_code import EliminateDeadCodePass
from modelpress.passes.eliminate_no_ops import EliminateNoOpsPass
from modelpress.passes.registry import DEFAULT_PASSES, ORT_PASSES, PASSES, TAIL_PASSES, passes_for

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y)
{
  a = Identity(x)
  y = Relu(a)
  dead = Sigmoid(x)
}
"""


class _Explode(ModelpressPass):
    name = "explode"

    def call(self, model):
        raise ValueError("boom")


def test_manager_records_what_each_pass_changed_and_stops_when_a_round_changes_nothing():
    model = io.from_text(MODEL)
    records = PassManager([EliminateDeadCodePass(), EliminateNoOpsPass()], max_rounds=5)(model)
    by_name = {r.name: r for r in records}
    assert by_name["eliminate-no-ops"].op_delta == {"Identity": -1}
    assert by_name["eliminate-dead-code"].op_delta == {"Sigmoid": -1}
    # Round 2 re-runs dead-code (no-ops changed the model after it) and skips no-ops, which
    # already saw the model as it is; round 2 changed nothing: stop.
    assert [r.runs for r in records] == [2, 1]
    assert all(r.changed for r in records)


def test_failure_is_wrapped_with_pass_name_and_history():
    model = io.from_text(MODEL)
    with pytest.raises(PassError) as info:
        PassManager([EliminateNoOpsPass(), _Explode()])(model)
    assert info.value.pass_name == "explode"
    assert info.value.history == ("eliminate-no-ops",)
    assert "boom" in str(info.value)


def test_instruments_run_after_every_changing_pass():
    seen = []
    PassManager(
        [EliminateDeadCodePass(), EliminateNoOpsPass()], instruments=[lambda p, m: seen.append(p.name)]
    )(io.from_text(MODEL))
    assert seen == ["eliminate-dead-code", "eliminate-no-ops"]


def test_registry_names_are_unique_kebab_case_and_levels_are_cumulative():
    names = [cls.name for cls, _ in (*DEFAULT_PASSES, *ORT_PASSES, *TAIL_PASSES)]
    assert len(names) == len(set(names)) == len(PASSES)
    assert all(n == n.lower() and " " not in n and "_" not in n for n in names)
    basic = {type(p) for p in passes_for("basic")}
    extended = {type(p) for p in passes_for("extended")}
    everything = {type(p) for p in passes_for("all")}
    assert basic < extended <= everything
    assert all(issubclass(cls, ir.passes.PassBase) for cls in everything)
    ort_only = {type(p) for p in passes_for("all", target="onnxruntime")} - everything
    assert ort_only == {cls for cls, _ in ORT_PASSES}


def test_registry_rejects_unknown_names_and_levels():
    with pytest.raises(UsageError, match="known passes"):
        passes_for("all", ["no-such-pass"])
    with pytest.raises(UsageError, match="choose one of"):
        passes_for("turbo")
    with pytest.raises(UsageError, match="choose one of"):
        passes_for("all", target="tflite")


def test_explicit_names_run_in_registry_order():
    chosen = passes_for("basic", ["eliminate-dead-code", "fold-constants"])
    assert [p.name for p in chosen] == ["fold-constants", "eliminate-dead-code"]
