from modelpress.examples import build_example_cnn
from modelpress.ir.verify import verify
from modelpress.optimize import optimize_model
from tests.testing import assert_equivalent, ops


def test_example_cnn_is_valid_and_optimizes_to_fewer_nodes():
    model = build_example_cnn()
    verify(model, full=True)
    optimized, report = optimize_model(model)
    verify(optimized, full=True)
    assert report.nodes_after < report.nodes_before
    assert ops(optimized).get("Dropout", 0) == 0
    assert ops(optimized).get("Identity", 0) == 0
    assert_equivalent(model, optimized, rtol=1e-5)
