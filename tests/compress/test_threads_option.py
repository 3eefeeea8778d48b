"""`--threads` of the training verbs: torch's thread count for the run only, and only when training."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from modelpress.cli.compress import torch_threads
from modelpress.cli.main import app
from modelpress.ir import io
from tests.compress.models import cnn

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("restored even on errors")
    assert torch.get_num_threads() == before


def test_threads_only_with_training(tmp_path):
    model = io.save(cnn(), tmp_path / "m.onnx")
    result = CliRunner().invoke(
        app, ["compress", str(model), "-o", str(tmp_path / "m.mpz"), "--threads", "1"]
    )
    assert result.exit_code == 2 and "--threads" in result.output
    assert not (tmp_path / "m.mpz").exists()
    result = CliRunner().invoke(
        app,
        [
            "distill",
            "--teacher",
            str(model),
            "--student",
            "x:y",
            "--data",
            str(tmp_path),
            "-o",
            "s.onnx",
            "--threads",
            "0",
        ],
    )
    assert result.exit_code == 2
