"""``modelpress.serve``: predict, micro-batching, every 4xx, the 500 path, auth, health and metrics."""

from __future__ import annotations

import concurrent.futures
import io
import re

import numpy as np
import onnx_ir as ir
import pytest
from fastapi.testclient import TestClient

from modelpress.ir import io as model_io
from modelpress.ir.build import GraphBuilder
from modelpress.package import build_package, load_package
from modelpress.runtime.run import run_model_file
from modelpress.serve import app as serve_app
from modelpress.serve import create_app
from tests.package._builders import PIPELINE_YAML, classifier

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 3


@pytest.fixture
def model(tmp_path):
    return model_io.save(classifier(), tmp_path / "clf.onnx")


@pytest.fixture
def client(model):
    with TestClient(create_app(model, max_delay_ms=0)) as test_client:
        yield test_client


def _metric(text: str, line_prefix: str) -> float:
    match = re.search(rf"^{re.escape(line_prefix)} (\S+)$", text, re.MULTILINE)
    assert match, f"no '{line_prefix}' in:\n{text}"
    return float(match.group(1))


def test_predict_json_equals_running_the_model_directly(client, model):
    response = client.post("/v1/predict", json={"inputs": {"x": X.tolist()}})
    assert response.status_code == 200, response.text
    expected = run_model_file(model, [X])["logits"]
    np.testing.assert_array_equal(np.asarray(response.json()["outputs"]["logits"], np.float32), expected)


def test_predict_npy_and_npz_bodies_and_npz_answer(client, model):
    expected = run_model_file(model, [X])["logits"]
    npy = io.BytesIO()
    np.save(npy, X)
    response = client.post(
        "/v1/predict", content=npy.getvalue(), headers={"content-type": "application/x-npy"}
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.asarray(response.json()["outputs"]["logits"], np.float32), expected)
    npz = io.BytesIO()
    np.savez(npz, x=X)
    response = client.post(
        "/v1/predict",
        content=npz.getvalue(),
        headers={"content-type": "application/x-npz", "accept": "application/x-npz"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npz"
    np.testing.assert_array_equal(np.load(io.BytesIO(response.content))["logits"], expected)


def test_package_runs_its_pre_and_post_processing(tmp_path, model):
    yaml_file = tmp_path / "pipeline.yaml"
    yaml_file.write_text(PIPELINE_YAML)
    package = load_package(build_package(model, tmp_path / "pkg", pipeline=yaml_file))
    expected = package.run({"x": X})
    with TestClient(create_app(tmp_path / "pkg", max_delay_ms=0)) as test_client:
        response = test_client.post("/v1/predict", json={"inputs": {"x": X.tolist()}})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert sorted(outputs) == sorted(expected)
    for name, value in expected.items():
        if value.dtype.kind in "USO":  # labels
            assert outputs[name] == value.tolist()
        else:
            np.testing.assert_allclose(np.asarray(outputs[name]), value, rtol=1e-6)


def test_concurrent_requests_share_a_batch_and_get_their_own_rows(model):
    rows = [np.full((1, 4), i, np.float32) for i in range(8)]
    expected = [run_model_file(model, [r])["logits"] for r in rows]
    with TestClient(create_app(model, max_batch=8, max_delay_ms=200)) as test_client:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(lambda r: test_client.post("/v1/predict", json={"inputs": {"x": r.tolist()}}), rows)
            )
        metrics = test_client.get("/metrics").text
    for response, want in zip(responses, expected, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.asarray(response.json()["outputs"]["logits"]), want, rtol=1e-6)
    runs = _metric(metrics, "modelpress_batch_size_count")
    single = _metric(metrics, 'modelpress_batch_size_bucket{le="1"}')
    assert runs < 8 and single < runs, metrics  # at least one run took more than one row
    assert _metric(metrics, "modelpress_batch_size_sum") == 8


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "malformed JSON"),
        (b'{"x": [1]}', {"content-type": "application/json"}, 400, '{"inputs"'),
        (b'{"inputs": {"y": [[1, 2, 3, 4]]}}', {}, 400, "unknown input(s) y"),
        (b'{"inputs": {}}', {}, 400, "missing input(s) x"),
        (b'{"inputs": {"x": [[1, 2, 3]]}}', {}, 400, "axis 1 must be 4"),
        (b'{"inputs": {"x": [1, 2, 3, 4]}}', {}, 400, "expected rank 2"),
        (b'{"inputs": {"x": [[1, 2], [3]]}}', {}, 400, "rectangular"),
        (b'{"inputs": {"x": [["a", "b", "c", "d"]]}}', {}, 400, "expected float32, got str"),
        (b"not an array", {"content-type": "application/x-npy"}, 400, "not a readable .npy"),
        (b"not a zip", {"content-type": "application/x-npz"}, 400, "not a zip"),
        (b"x", {"content-type": "text/plain"}, 415, "unsupported content type"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(client, body, headers, status, message):
    response = client.post("/v1/predict", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_wrong_dtype_is_refused(tmp_path):
    b = GraphBuilder()
    ids = b.input("ids", ir.DataType.INT64, ["N"])
    doubled = b.op("Add", ids, ids)
    doubled.name = "doubled"
    model = model_io.save(b.build([doubled]), tmp_path / "int.onnx")
    with TestClient(create_app(model)) as test_client:
        bad = test_client.post("/v1/predict", json={"inputs": {"ids": [1.5, 2.0]}})
        good = test_client.post("/v1/predict", json={"inputs": {"ids": [1, 2]}})
    assert bad.status_code == 400
    assert "expected int64, got float64" in bad.json()["detail"]
    assert good.json() == {"outputs": {"doubled": [2, 4]}}


def test_body_over_the_limit_is_413(model):
    with TestClient(create_app(model, max_body_bytes=64)) as test_client:
        response = test_client.post("/v1/predict", json={"inputs": {"x": X.tolist()}})
        npz = io.BytesIO()
        np.savez_compressed(npz, x=np.zeros((1000, 4), np.float32))  # small body, large when expanded
        bomb = test_client.post(
            "/v1/predict", content=npz.getvalue()[:64], headers={"content-type": "application/x-npz"}
        )
    assert response.status_code == 413
    assert "64 byte limit" in response.json()["detail"]
    assert bomb.status_code in (400, 413)


def test_inference_failure_is_a_generic_500_and_the_server_keeps_serving(client, monkeypatch):
    real_run = serve_app.run_session

    def broken(session, feeds):
        raise RuntimeError("/secret/path/model.onnx: onnxruntime exploded")

    monkeypatch.setattr(serve_app, "run_session", broken)
    failed = client.post("/v1/predict", json={"inputs": {"x": X.tolist()}})
    assert failed.status_code == 500
    assert failed.json() == {"detail": serve_app.INTERNAL_ERROR}
    assert "secret" not in failed.text and "Traceback" not in failed.text
    monkeypatch.setattr(serve_app, "run_session", real_run)
    assert client.post("/v1/predict", json={"inputs": {"x": X.tolist()}}).status_code == 200
    metrics = client.get("/metrics").text
    assert _metric(metrics, "modelpress_inference_errors_total") == 1
    assert _metric(metrics, 'modelpress_requests_total{route="/v1/predict",code="500"}') == 1


def test_bearer_token_is_required_on_predict_and_metrics(model):
    body = {"inputs": {"x": X.tolist()}}
    with TestClient(create_app(model, token="s3cret")) as test_client:
        assert test_client.post("/v1/predict", json=body).status_code == 401
        wrong = test_client.post("/v1/predict", json=body, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert test_client.get("/metrics").status_code == 401
        ok = test_client.post("/v1/predict", json=body, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert test_client.get("/metrics", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert test_client.get("/healthz").status_code == 200  # liveness stays open


def test_healthz_metrics_and_openapi(client):
    health = client.get("/healthz").json()
    assert health == {"status": "ok", "inputs": {"x": {"dtype": "float32", "shape": ["N", 4]}}}
    client.post("/v1/predict", json={"inputs": {"x": X.tolist()}})
    client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE modelpress_requests_total counter" in text
    assert "# TYPE modelpress_request_duration_seconds histogram" in text
    assert _metric(text, 'modelpress_requests_total{route="/v1/predict",code="200"}') == 1
    assert _metric(text, 'modelpress_requests_total{route="/v1/predict",code="400"}') == 1
    assert _metric(text, "modelpress_request_duration_seconds_count") == 2
    assert _metric(text, 'modelpress_batch_size_bucket{le="2"}') == 1  # X has 2 rows
    schema = client.get("/openapi.json").json()
    assert "application/x-npz" in schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
