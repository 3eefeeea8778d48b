"""Slow tier: real models through the default pipeline (STYLE.md §4.8).

Models: every ``light_*.onnx`` shipped in the onnx wheel's backend test data (Caffe2-era
CNNs whose weights are ``ConstantOfShape`` nodes, initializers listed as graph inputs) and
the torch zoo (``modelpress.examples.torch_models``) exported with the exporter's constant
folding on and off. For each model:

* ``optimize_model(level="all")`` succeeds (it checks the outputs itself, rtol 1e-4);
* the result passes ``verify(full=True)`` (IR invariants + the strict ONNX checker);
* it is numerically equivalent to the input on two more seeds, dynamic dims bound;
* it has no more nodes than onnxslim leaves for the same model (onnxslim is the
  competitor we must at least match; the message lists both op histograms).
"""

from __future__ import annotations

import collections.abc
import importlib.util
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxslim
import pytest

from modelpress.ir import io
from modelpress.ir.stats import op_histogram
from modelpress.ir.verify import verify
from modelpress.optimize import optimize_model
from modelpress.passes.base import ModelpressPass
from tests.testing import assert_equivalent

pytestmark = pytest.mark.slow

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(LIGHT_DIR.glob("light_*.onnx"))
# Dynamic dims of the torch exports (see torch_models.ZOO): bert's are batch and sequence.
DIM_VALUES = {"batch": 2, "sequence": 16}
# The workflow's own contract: fp32 rewrites (BN folding, re-association) stay within 1e-4
# of each output's scale.
RTOL = 1e-4
HAS_TORCH = importlib.util.find_spec("torch") is not None
# conftest verifies the model before and after every pass, which serializes it twice per
# pass. Once VGG19/AlexNet/ZFNet have their ConstantOfShape weights folded (240-550 MB) that
# is ~100 s per model, most of this tier's budget. Above this size the per-pass check is
# skipped; the end result still gets verify(full=True) and the numeric checks.
PER_PASS_VERIFY_MAX_BYTES = 128 * 2**20


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _verify_unless_huge(model: ir.Model) -> None:
    if _weight_bytes(model) <= PER_PASS_VERIFY_MAX_BYTES:
        verify(model)


@pytest.fixture(autouse=True)
def verify_around_every_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest's fixture of the same name, minus models over ``PER_PASS_VERIFY_MAX_BYTES``."""
    original = ModelpressPass.__call__

    def checked(self, model_or_result):  # type: ignore[no-untyped-def]
        _verify_unless_huge(getattr(model_or_result, "model", model_or_result))
        result = original(self, model_or_result)
        _verify_unless_huge(result.model)
        return result

    monkeypatch.setattr(ModelpressPass, "__call__", checked)


def _torch_variants() -> list[str]:
    # torch_models imports torch lazily: the names are known even where torch is missing.
    from modelpress.examples.torch_models import ZOO, variant_name

    return [variant_name(name, folding) for name in ZOO for folding in (False, True)]


@pytest.fixture(scope="session")
def zoo_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The torch zoo exported once per session (folding on and off)."""
    if not HAS_TORCH:
        pytest.skip(
            "torch is not installed (optional extra modelpress[torch]): torch-exported models skipped"
        )
    from modelpress.examples.torch_models import export_zoo

    return export_zoo(tmp_path_factory.mktemp("torch_zoo"))


@pytest.fixture(scope="session")
def onnxslim_histogram() -> collections.abc.Callable[[Path], dict[str, int]]:
    """onnxslim's op histogram for a model file, computed once per file per session."""
    cache: dict[Path, dict[str, int]] = {}

    def histogram(path: Path) -> dict[str, int]:
        if path not in cache:
            slimmed = onnxslim.slim(onnx.load(str(path)))
            cache[path] = op_histogram(ir.from_proto(slimmed))
        return cache[path]

    return histogram


def _check_against_pipeline_and_onnxslim(path: Path, slim_histogram: dict[str, int]) -> None:
    model = io.load(path)
    optimized, report = optimize_model(model, level="all", rtol=RTOL, dim_values=DIM_VALUES)
    verify(optimized, full=True)
    assert_equivalent(model, optimized, rtol=RTOL, seeds=(0, 1), dim_values=DIM_VALUES)
    ours, theirs = op_histogram(optimized), slim_histogram
    ours_total, theirs_total = sum(ours.values()), sum(theirs.values())
    surplus = {op: n - theirs.get(op, 0) for op, n in ours.items() if n > theirs.get(op, 0)}
    assert ours_total <= theirs_total, (
        f"{path.name}: modelpress leaves {ours_total} nodes, onnxslim {theirs_total} "
        f"(input {report.nodes_before}); ops modelpress has in surplus: {surplus}\n"
        f"  modelpress: {ours}\n  onnxslim:   {theirs}"
    )


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=[p.stem for p in LIGHT_MODELS])
def test_light_model_optimizes_validly_and_at_least_as_small_as_onnxslim(
    path: Path, onnxslim_histogram: collections.abc.Callable[[Path], dict[str, int]]
) -> None:
    _check_against_pipeline_and_onnxslim(path, onnxslim_histogram(path))


@pytest.mark.torch
@pytest.mark.parametrize("variant", _torch_variants())
def test_torch_export_optimizes_validly_and_at_least_as_small_as_onnxslim(
    variant: str,
    zoo_paths: dict[str, Path],
    onnxslim_histogram: collections.abc.Callable[[Path], dict[str, int]],
) -> None:
    path = zoo_paths[variant]
    _check_against_pipeline_and_onnxslim(path, onnxslim_histogram(path))


def test_light_models_are_present() -> None:
    # An onnx wheel without its backend test data would silently turn this tier into no-op.
    assert LIGHT_MODELS, f"no light_*.onnx under {LIGHT_DIR}; reinstall onnx with its test data"
