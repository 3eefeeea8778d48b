"""``modelpress serve``: a model or package behind an HTTP API (FastAPI), with micro-batching.

``create_app(path_or_package, token=..., max_batch=..., max_delay_ms=...)`` returns the FastAPI
app (``POST /v1/predict``, ``GET /healthz``, ``GET /metrics``, OpenAPI docs at ``/docs``); the
CLI runs it with uvicorn. FastAPI is imported only here, never by the rest of the library.
"""

from __future__ import annotations

from modelpress.serve.app import DEFAULT_MAX_BODY_BYTES, create_app
from modelpress.serve.batching import MicroBatcher
from modelpress.serve.metrics import ServerMetrics

__all__ = ["DEFAULT_MAX_BODY_BYTES", "MicroBatcher", "ServerMetrics", "create_app"]
