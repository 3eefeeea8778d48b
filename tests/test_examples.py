import pytest

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


@pytest.mark.torch
def test_full_mobilenetv2_matches_torchvision_size_and_stays_out_of_the_test_zoo():
    torch = pytest.importorskip("torch")
    from modelpress.examples.torch_models import LARGE_ZOO, ZOO, mobilenetv2

    model = mobilenetv2()
    params = sum(p.numel() for p in model.parameters())
    assert 3_400_000 <= params <= 3_600_000  # torchvision's mobilenet_v2: 3,504,872
    # stem + 17 blocks of 3 convs, minus the first block's expand (t=1), + head: torchvision's 52
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 52
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert LARGE_ZOO["mobilenetv2"].inputs["image"][0] == (1, 3, 224, 224)
    assert "mobilenetv2" not in ZOO  # the slow tier exports and optimizes every ZOO entry
