"""The torch zoo (ResNet-, MobileNetV2-, BERT-like), exported once per session when torch is installed."""

from __future__ import annotations

import collections.abc
import importlib.util
from pathlib import Path

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None
# Dynamic dims of the exports (torch_models.ZOO): the CNNs' batch, bert's batch and sequence.
DIM_VALUES = {"batch": 2, "sequence": 16}


@pytest.fixture(scope="session")
def zoo_model_path(tmp_path_factory: pytest.TempPathFactory) -> collections.abc.Callable[[str, bool], Path]:
    """``path(name, constant_folding)``: the zoo model exported (once) with ``export_onnx``."""
    if not HAS_TORCH:
        pytest.skip("torch is not installed (optional extra modelpress[torch]): zoo models skipped")
    from modelpress.examples.torch_models import ZOO, example_inputs, export_onnx, variant_name

    folder = tmp_path_factory.mktemp("obfuscate_zoo")
    cache: dict[tuple[str, bool], Path] = {}

    def path(name: str, constant_folding: bool) -> Path:
        if (name, constant_folding) not in cache:
            entry = ZOO[name]
            cache[name, constant_folding] = export_onnx(
                entry.build(0),
                example_inputs(entry),
                folder / f"{variant_name(name, constant_folding)}.onnx",
                constant_folding=constant_folding,
                input_names=list(entry.inputs),
                output_names=list(entry.outputs),
                dynamic_dims=entry.dynamic_dims,
            )
        return cache[name, constant_folding]

    return path
