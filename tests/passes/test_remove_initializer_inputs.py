import numpy as np
import onnx_ir as ir

from modelpress.ir.build import GraphBuilder
from modelpress.passes.remove_initializer_inputs import RemoveInitializerInputsPass
from tests.testing import assert_equivalent, run_pass, serialized


def _model(weight_is_input: bool, ir_version: int = 3) -> ir.Model:
    b = GraphBuilder(ir_version=ir_version)
    x = b.input("x", ir.DataType.FLOAT, [2, 3])
    w = b.const(np.arange(3, dtype=np.float32), "w")
    model = b.build([b.op("Mul", x, w)])
    if weight_is_input:
        model.graph.inputs.append(w)
    return model


def test_initializer_inputs_become_constants_and_ir_version_is_raised():
    model = _model(weight_is_input=True)
    after, changed = run_pass(RemoveInitializerInputsPass(), model)
    assert changed is True
    assert [v.name for v in after.graph.inputs] == ["x"]
    assert "w" in after.graph.initializers
    assert after.ir_version == 4
    assert_equivalent(model, after, rtol=0.0)


def test_model_without_initializer_inputs_is_untouched():
    model = _model(weight_is_input=False, ir_version=8)
    after, changed = run_pass(RemoveInitializerInputsPass(), model)
    assert changed is False
    assert serialized(after) == serialized(model)


def test_idempotent():
    once, _ = run_pass(RemoveInitializerInputsPass(), _model(weight_is_input=True))
    _, changed = run_pass(RemoveInitializerInputsPass(), once)
    assert changed is False
