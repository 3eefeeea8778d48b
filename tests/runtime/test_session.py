"""create_session's threading options and choose_providers."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.errors import UsageError
from modelpress.examples import build_example_cnn
from modelpress.runtime import session as session_module
from modelpress.runtime.feeds import random_feeds
from modelpress.runtime.session import choose_providers, create_session, run_session


@pytest.fixture
def gpu_build(monkeypatch):
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(session_module.ort, "get_available_providers", lambda: available)


def test_auto_prefers_tensorrt_then_cuda_then_cpu(gpu_build):
    assert choose_providers() == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_a_named_provider_keeps_the_cpu_as_fallback(gpu_build):
    assert choose_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_auto_on_this_build_is_its_accelerated_providers_then_the_cpu():
    available = session_module.ort.get_available_providers()
    chosen = choose_providers("auto")
    assert chosen[-1] == "CPUExecutionProvider"
    assert chosen == [p for p in session_module.PROVIDER_PREFERENCE if p in available]


def test_a_provider_missing_from_the_build_is_refused_with_what_it_has(monkeypatch):
    monkeypatch.setattr(session_module.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(
        UsageError, match="'tensorrt' is not in this onnxruntime build; it has CPUExecutionProvider"
    ):
        choose_providers("tensorrt")


def test_parallel_inter_op_threads_compute_the_same_outputs():
    model = build_example_cnn()
    feeds = random_feeds(model, 0)
    sequential = run_session(create_session(model, level="all"), feeds)
    parallel = create_session(model, level="all", threads=1, inter_op_threads=2)
    for name, value in run_session(parallel, feeds).items():
        np.testing.assert_allclose(value, sequential[name], rtol=1e-5, atol=1e-6)


def test_inter_op_threads_must_be_positive():
    with pytest.raises(UsageError, match="inter-op threads 0"):
        create_session(build_example_cnn(), inter_op_threads=0)
