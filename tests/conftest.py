"""Test-wide fixtures: every modelpress pass is wrapped in IR verification (STYLE.md §4.7)."""

from __future__ import annotations

import logging

import pytest

from modelpress.ir.verify import verify
from modelpress.passes.base import ModelpressPass

logging.getLogger("onnx_ir").setLevel(logging.ERROR)


@pytest.fixture(autouse=True)
def verify_around_every_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``verify`` on the model before and after each pass call, in every test."""
    original = ModelpressPass.__call__

    def checked(self, model_or_result):  # type: ignore[no-untyped-def]
        model = getattr(model_or_result, "model", model_or_result)
        verify(model)
        result = original(self, model_or_result)
        verify(result.model)
        return result

    monkeypatch.setattr(ModelpressPass, "__call__", checked)
