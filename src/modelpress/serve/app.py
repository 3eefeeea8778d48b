"""The FastAPI app of ``modelpress serve``: predict, health, metrics, with auth and micro-batching.

``POST /v1/predict`` takes ``{"inputs": {NAME: nested list}}`` (``application/json``), one
array (``application/x-npy``, for a model with one input) or named arrays
(``application/x-npz``), and answers ``{"outputs": {NAME: nested list}}``, or an ``.npz`` when
the request's ``Accept`` asks for ``application/x-npz``. A package's pre-processing runs on the
raw inputs and its post-processing on each request's outputs; the model run in between is
shared by concurrent requests (``MicroBatcher``).

Every fault of the request is a 4xx whose message says what was expected and what was found:
400 malformed body, unknown or missing input, wrong dtype or shape; 401 missing or wrong bearer
token; 413 body over ``max_body_bytes``; 415 unsupported content type. A failure inside
inference is logged with its traceback and answered 500 with a generic message, so that no
internals (paths, onnxruntime messages) reach the client; the server keeps serving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import io
import json
import logging
import os
import time
import typing
import zipfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from modelpress.errors import UsageError
from modelpress.package import Package, load_package
from modelpress.protect.keys import Key
from modelpress.runtime.run import open_model_session
from modelpress.runtime.session import run_session
from modelpress.serve.batching import MicroBatcher
from modelpress.serve.metrics import ServerMetrics

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 2**20
INTERNAL_ERROR = "inference failed; the error was logged on the server"
# onnxruntime's tensor element types (``NodeArg.type``) that a request can carry.
_ORT_DTYPES = {
    f"tensor({name})": np.dtype(dtype)
    for name, dtype in {
        "float": "float32", "double": "float64", "float16": "float16", "bool": "bool",
        "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
        "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    }.items()
}  # fmt: skip
_NPZ_TYPES = ("application/x-npz", "application/zip")
_ROUTES = ("/v1/predict", "/healthz", "/metrics", "/docs", "/openapi.json")


@dataclasses.dataclass(frozen=True)
class _InputSpec:
    name: str
    dtype: np.dtype | None  # None: a type requests cannot carry (refused with a 400)
    shape: tuple[int | str | None, ...] | None  # int: fixed dim; str/None: dynamic

    def describe(self) -> dict[str, object]:
        return {"dtype": None if self.dtype is None else self.dtype.name, "shape": self.shape}


def create_app(
    package_or_model: Package | str | os.PathLike[str],
    *,
    key: Key | None = None,
    token: str | None = None,
    max_batch: int = 8,
    max_delay_ms: float = 0.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    threads: int | None = None,
) -> FastAPI:
    """A FastAPI app serving one model or package.

    Args:
        package_or_model: A loaded ``Package``, a package folder, or a model file (``.onnx``,
            or ``.mpe`` with ``key``).
        key: The key of an encrypted model.
        token: The bearer token ``/v1/predict`` and ``/metrics`` require (None: no auth).
        max_batch: The most rows one model run takes from concurrent requests.
        max_delay_ms: How long a request waits for others to share its run.
        max_body_bytes: The largest request body accepted (413 above).
        threads: onnxruntime intra-op threads (None lets onnxruntime choose).

    Raises:
        UsageError: a bad option. PackageError, ProtectionError, ModelLoadError: the package
            or model cannot be opened (see ``load_package`` and ``open_model_session``).
    """
    if max_body_bytes < 1:
        raise UsageError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    if token is not None and not token:
        raise UsageError("the bearer token is empty; give a non-empty token or none")
    source = package_or_model
    if not isinstance(source, Package) and Path(source).is_dir():
        source = load_package(source)
    if isinstance(source, Package):
        session, pipeline = source.open_session(key, threads=threads), source.pipeline
        title = source.root.name
    else:
        session, pipeline = open_model_session(source, key, threads=threads), None
        title = Path(source).name
    specs = {arg.name: _spec(arg) for arg in session.get_inputs()}
    metrics = ServerMetrics()
    try:
        batcher = MicroBatcher(
            lambda feeds: _run_model(session, feeds),
            max_batch=max_batch,
            max_delay_ms=max_delay_ms,
            on_batch=metrics.record_batch,
        )
    except ValueError as e:
        raise UsageError(f"{e}; see --max-batch and --max-delay-ms") from e

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> typing.AsyncIterator[None]:
        yield
        await batcher.close()

    app = FastAPI(title=f"modelpress serve: {title}", lifespan=lifespan)
    app.state.metrics = metrics

    def check_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    app.add_middleware(_CountRequests, metrics=metrics)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.error("unexpected error on %s", request.url.path, exc_info=error)
        return JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)

    @app.get("/healthz")
    def healthz() -> dict[str, object]:
        """Liveness: the model is loaded; lists its inputs' dtypes and shapes."""
        return {"status": "ok", "inputs": {name: spec.describe() for name, spec in specs.items()}}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus(request: Request) -> PlainTextResponse:
        """Request counts, predict latency and batch sizes in the Prometheus text format."""
        check_token(request)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/predict", responses=_ERROR_RESPONSES, openapi_extra=_PREDICT_BODY)
    async def predict(request: Request) -> Response:
        """Run the model (with its package's pre/post-processing) on one request's inputs."""
        check_token(request)
        raw = _parse_body(await _read_body(request, max_body_bytes), request, specs, max_body_bytes)
        try:
            feeds = pipeline.preprocess(raw) if pipeline is not None else raw
        except UsageError as e:
            raise HTTPException(400, f"pre-processing failed: {e}") from e
        feeds, rows = _check_feeds(feeds, specs)
        try:
            outputs = await batcher.submit(feeds, rows=rows)
            results = pipeline.postprocess(outputs) if pipeline is not None else outputs
        except Exception:
            metrics.record_inference_error()
            logger.exception("inference failed")
            raise HTTPException(500, INTERNAL_ERROR) from None
        return _respond(results, request.headers.get("accept", ""))

    return app


class _CountRequests:
    """Counts every response by route and status, and times ``/v1/predict``, for ``/metrics``.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` (``BaseHTTPMiddleware``)
    re-streams every response through an extra task and memory stream, work a counter does
    not need.
    """

    def __init__(self, app: typing.Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: typing.Any, receive: typing.Any, send: typing.Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, route = time.perf_counter(), scope.get("path", "")
        route = route if route in _ROUTES else "other"
        status = 500

        async def record_status(message: typing.Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        except Exception:
            self.metrics.record_request(route, 500, None)
            raise
        seconds = time.perf_counter() - start if route == "/v1/predict" else None
        self.metrics.record_request(route, status, seconds)


def _run_model(session: typing.Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in run_session(session, feeds).items()}


def _spec(arg: typing.Any) -> _InputSpec:
    shape = (
        None
        if arg.shape is None
        else tuple(d if isinstance(d, int) and d >= 0 else (d or None) for d in arg.shape)
    )
    return _InputSpec(arg.name, _ORT_DTYPES.get(arg.type), shape)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {int(declared)} bytes is over the {limit} byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():  # a body without (or lying about) its length is counted too
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_body(
    body: bytes, request: Request, specs: dict[str, _InputSpec], limit: int
) -> dict[str, np.ndarray]:
    """Raw input arrays by name from a JSON, ``.npy`` or ``.npz`` body."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type == "application/x-npy":
        if len(specs) != 1:
            raise HTTPException(
                400, f"an application/x-npy body holds one array, but the model takes {len(specs)} inputs "
                f"({', '.join(specs)}); send application/x-npz or JSON"
            )  # fmt: skip
        return {next(iter(specs)): _load_npy(io.BytesIO(body), "the .npy body")}
    if content_type in _NPZ_TYPES:
        return _load_npz(body, limit)
    if content_type != "application/json":
        raise HTTPException(
            415, f"unsupported content type '{content_type}'; send application/json, application/x-npy "
            "or application/x-npz"
        )  # fmt: skip
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"malformed JSON body: {e}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
        raise HTTPException(400, 'the JSON body must be an object {"inputs": {NAME: nested list}}')
    raw = {}
    for name, value in payload["inputs"].items():
        try:
            raw[name] = np.asarray(value)
        except ValueError as e:  # ragged nested lists
            raise HTTPException(400, f"input '{name}' is not a rectangular nested list: {e}") from None
        if raw[name].dtype == object:
            raise HTTPException(400, f"input '{name}' is not a rectangular nested list of numbers or strings")
    return raw


def _load_npy(stream: typing.BinaryIO, where: str) -> np.ndarray:
    try:
        array: np.ndarray = np.load(stream, allow_pickle=False)
        return array
    except (ValueError, OSError, EOFError) as e:
        raise HTTPException(400, f"{where} is not a readable .npy array (no Python objects): {e}") from None


def _load_npz(body: bytes, limit: int) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        members = archive.infolist()
    except zipfile.BadZipFile as e:
        raise HTTPException(400, f"the .npz body is not a zip archive: {e}") from None
    # Declared sizes bound decompression (zipfile stops at them), so a zip bomb cannot expand.
    expanded = sum(member.file_size for member in members)
    if expanded > limit:
        raise HTTPException(413, f"the .npz body expands to {expanded} bytes, over the {limit} byte limit")
    arrays = {}
    for member in members:
        name = member.filename.removesuffix(".npy")
        try:
            with archive.open(member) as stream:
                arrays[name] = _load_npy(
                    typing.cast(typing.BinaryIO, stream), f"'{member.filename}' of the .npz"
                )
        except (zipfile.BadZipFile, OSError) as e:  # CRC mismatch, truncated member
            raise HTTPException(400, f"'{member.filename}' of the .npz body is damaged: {e}") from None
    return arrays


def _check_feeds(
    feeds: dict[str, np.ndarray], specs: dict[str, _InputSpec]
) -> tuple[dict[str, np.ndarray], int | None]:
    """Feeds cast to the model's dtypes, and the rows to batch on (None: run alone).

    Raises:
        HTTPException: 400 for an unknown or missing input, a dtype that does not convert
            (e.g. float to int), a wrong rank or fixed dim, or symbolic dims that disagree.
    """
    unknown = sorted(set(feeds) - set(specs))
    missing = sorted(set(specs) - set(feeds))
    if unknown or missing:
        problem = (
            f"unknown input(s) {', '.join(unknown)}" if unknown else f"missing input(s) {', '.join(missing)}"
        )
        raise HTTPException(400, f"{problem}; the model takes {_describe(specs)}")
    checked: dict[str, np.ndarray] = {}
    bound: dict[str, int] = {}
    leading: set[int | None] = set()
    for name, spec in specs.items():
        array = np.asarray(feeds[name])
        if spec.dtype is None:
            raise HTTPException(400, f"input '{name}' has a type this server cannot take from a request")
        if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
            raise HTTPException(
                400, f"input '{name}': expected {spec.dtype.name}, got {array.dtype.name} (values that do "
                f"not convert to {spec.dtype.name} without changing kind)"
            )  # fmt: skip
        if spec.shape is not None:
            _check_shape(name, array.shape, spec.shape, bound)
        checked[name] = array.astype(spec.dtype, copy=False)
        leading.add(array.shape[0] if array.ndim else None)
    batchable = all(s.shape and not isinstance(s.shape[0], int) for s in specs.values())
    rows = leading.pop() if batchable and len(leading) == 1 else None
    return checked, rows if rows else None


def _check_shape(
    name: str, found: tuple[int, ...], expected: tuple[int | str | None, ...], bound: dict[str, int]
) -> None:
    shown = "[" + ", ".join("?" if d is None else str(d) for d in expected) + "]"
    if len(found) != len(expected):
        raise HTTPException(
            400, f"input '{name}': expected rank {len(expected)} {shown}, got shape {list(found)}"
        )
    for axis, (size, dim) in enumerate(zip(found, expected, strict=True)):
        if isinstance(dim, int) and size != dim:
            raise HTTPException(
                400, f"input '{name}': expected shape {shown}, got {list(found)} (axis {axis} must be {dim})"
            )
        if isinstance(dim, str) and bound.setdefault(dim, size) != size:
            raise HTTPException(
                400, f"input '{name}': dim '{dim}' (axis {axis}) is {size}, but {bound[dim]} in another input"
            )


def _describe(specs: dict[str, _InputSpec]) -> str:
    return ", ".join(
        f"{name} {spec.describe()['dtype']} {list(spec.shape or [])}" for name, spec in specs.items()
    )


def _respond(results: dict[str, np.ndarray], accept: str) -> Response:
    if any(t in accept for t in _NPZ_TYPES):
        buffer = io.BytesIO()
        np.savez(buffer, **results)  # type: ignore[arg-type]  # numpy stubs: names typed as bool
        return Response(buffer.getvalue(), media_type="application/x-npz")
    # json.dumps, not JSONResponse: float outputs may hold NaN/Infinity, written as JavaScript does.
    payload = {"outputs": {name: np.asarray(value).tolist() for name, value in results.items()}}
    return Response(json.dumps(payload), media_type="application/json")


_ERROR_RESPONSES: dict[int | str, dict[str, typing.Any]] = {
    400: {"description": "Malformed body; unknown or missing input; wrong dtype or shape."},
    401: {"description": "Missing or wrong bearer token."},
    413: {"description": "Body over the size limit."},
    415: {"description": "Unsupported content type."},
    500: {"description": "Inference failed (details are logged on the server only)."},
}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {"inputs": {"type": "object", "additionalProperties": {}}},
                },
                "example": {"inputs": {"x": [[0.0, 1.0, 2.0, 3.0]]}},
            },
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
            "application/x-npz": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
