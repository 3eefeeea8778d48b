"""Load-test ``modelpress serve`` (micro-batching) against a plain FastAPI + onnxruntime app.

The model is ``resnet_like`` from ``modelpress.examples.torch_models``, exported with a dynamic
batch dim (input ``image`` float32 [batch, 3, 64, 64], output ``logits``) to a temp folder: the
bundled ``build_example_cnn`` has a fixed batch of 1, so micro-batching could not apply to it.

Two servers are started in turn, each as a uvicorn subprocess on 127.0.0.1 and a free port:

* ``modelpress``: ``modelpress serve MODEL --token-file F --threads T`` (default
  ``--max-batch 8 --max-delay-ms 0``, the serve defaults, unless given);
* ``baseline``: a plain FastAPI app written inline below: the same JSON body parsed with
  ``json.loads`` + ``np.asarray``, the same bearer-token check, one onnxruntime session with the
  same settings as modelpress's (``ORT_ENABLE_ALL``, ``T`` intra-op threads, 1 inter-op thread,
  spinning off), each request run alone on the thread pool (no batching).

Each server gets a warm-up, then at every concurrency level (default 1, 8, 64) a fixed number
of ``POST /v1/predict`` requests (one image each, JSON, the body encoded once up front) from
``concurrency`` httpx.AsyncClient workers. Reported: requests/s (requests / wall time of the
level), p50 and p99 latency of the requests, and errors (any non-200 or transport error). For
``modelpress`` the mean rows per model run at that level comes from ``/metrics``.

The client runs on the same machine as the server, so it competes for the same cores.

Usage::

    .venv/bin/python bench/serve_load.py                       # ~1-2 min on 2 cores
    .venv/bin/python bench/serve_load.py --levels 1,8 --requests 100,200 --no-save

Results go to ``bench/results/serve_load.json`` (and the table is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

RESULTS = Path(__file__).parent / "results"

BASELINE_APP = """
import hmac
import json
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
options.log_severity_level = 3
options.inter_op_num_threads = 1
options.intra_op_num_threads = int(os.environ["BASELINE_THREADS"])
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
options.add_session_config_entry("session.inter_op.allow_spinning", "0")
session = ort.InferenceSession(os.environ["BASELINE_MODEL"], options, providers=["CPUExecutionProvider"])
token = open(os.environ["BASELINE_TOKEN_FILE"], encoding="utf-8").read().strip()
input_name = session.get_inputs()[0].name
output_names = [o.name for o in session.get_outputs()]
app = FastAPI()


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


@app.post("/v1/predict")
async def predict(request: Request) -> Response:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token")
    payload = json.loads(await request.body())
    x = np.asarray(payload["inputs"][input_name], dtype=np.float32)
    outputs = await run_in_threadpool(session.run, output_names, {input_name: x})
    body = {"outputs": {n: np.asarray(v).tolist() for n, v in zip(output_names, outputs)}}
    return Response(json.dumps(body), media_type="application/json")
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _export_model(folder: Path) -> Path:
    from modelpress.examples.torch_models import ZOO, example_inputs, export_onnx

    entry = ZOO["resnet_like"]
    return export_onnx(
        entry.build(0).eval(),
        example_inputs(entry),
        folder / "resnet_like.onnx",
        constant_folding=True,
        input_names=list(entry.inputs),
        output_names=list(entry.outputs),
        dynamic_dims=entry.dynamic_dims,
    )


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("wb")
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {timeout:.0f} s:\n{log.read_text(errors='replace')}")


def _batch_stats(url: str, token: str) -> tuple[float, float] | None:
    """(sum, count) of modelpress_batch_size from /metrics; None for a server without it."""
    response = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"}, timeout=10)
    if response.status_code != 200:
        return None
    found = dict(re.findall(r"^modelpress_batch_size_(sum|count)\s+(\S+)$", response.text, re.M))
    return (float(found["sum"]), float(found["count"])) if len(found) == 2 else None


async def _drive(url: str, token: str, body: bytes, concurrency: int, total: int) -> dict[str, object]:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def worker() -> None:
            nonlocal issued
            while issued < total:
                issued += 1
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/predict", content=body, headers=headers)
                    ok = response.status_code == 200
                    if not ok:
                        errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as e:
                    ok = False
                    errors.append(f"{type(e).__name__}: {e}")
                if ok:
                    latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {
        "concurrency": concurrency,
        "requests": total,
        "wall_s": round(wall, 3),
        "req_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
    }


def _run_server(
    name: str, url: str, token: str, body: bytes, levels: list[int], requests: list[int], warmup: int
) -> list[dict[str, object]]:
    asyncio.run(_drive(url, token, body, min(8, max(levels)), warmup))
    rows = []
    for concurrency, total in zip(levels, requests, strict=True):
        before = _batch_stats(url, token)
        row = asyncio.run(_drive(url, token, body, concurrency, total))
        after = _batch_stats(url, token)
        if before and after and after[1] > before[1]:
            row["mean_batch_rows"] = round((after[0] - before[0]) / (after[1] - before[1]), 2)
        rows.append({"server": name, **row})
        print(f"  {name} c={concurrency}: {row['req_per_s']} req/s, p50 {row['p50_ms']} ms, "
              f"p99 {row['p99_ms']} ms, errors {row['errors']}", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def _table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| server | concurrency | req/s | p50 ms | p99 ms | errors | rows/run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['req_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
            f"| {r['errors']} | {r.get('mean_batch_rows', '-')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8,64", help="concurrency levels")
    parser.add_argument("--requests", default="200,400,800", help="requests per level")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads"
    )
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="as modelpress serve (default 0)")
    parser.add_argument("--warmup", type=int, default=32, help="warm-up requests per server")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/serve_load.json")
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    requests = [int(v) for v in args.requests.split(",")]
    if len(levels) != len(requests):
        parser.error("--levels and --requests need the same number of values")

    procs: list[subprocess.Popen] = []
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        folder = Path(tmp)
        model = _export_model(folder)
        token = secrets.token_urlsafe(24)
        token_file = folder / "token.txt"
        token_file.write_text(token, encoding="utf-8")
        (folder / "baseline_app.py").write_text(BASELINE_APP, encoding="utf-8")
        image = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
        body = json.dumps({"inputs": {"image": np.round(image.astype(np.float64), 4).tolist()}}).encode()
        modelpress_cli = str(Path(sys.executable).parent / "modelpress")
        servers = {
            "modelpress": [
                modelpress_cli, "serve", str(model), "--token-file", str(token_file),
                "--threads", str(args.threads), "--max-batch", str(args.max_batch),
                "--max-delay-ms", str(args.max_delay_ms), "--port", "{port}",
            ],
            "baseline": [
                sys.executable, "-m", "uvicorn", "baseline_app:app", "--app-dir", str(folder),
                "--host", "127.0.0.1", "--log-level", "warning", "--port", "{port}",
            ],
        }  # fmt: skip
        env = {
            **os.environ,
            "BASELINE_MODEL": str(model),
            "BASELINE_THREADS": str(args.threads),
            "BASELINE_TOKEN_FILE": str(token_file),
        }
        try:
            for name, template in servers.items():
                port = _free_port()
                log = folder / f"{name}.log"
                proc = _start([part.replace("{port}", str(port)) for part in template], env, log)
                procs.append(proc)
                url = f"http://127.0.0.1:{port}"
                _wait_healthy(url, proc, log)
                print(f"{name} up on {url}", file=sys.stderr, flush=True)
                rows += _run_server(name, url, token, body, levels, requests, args.warmup)
                _stop(proc)
        finally:
            for proc in procs:
                _stop(proc)

    table = _table(rows)
    print(table)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        result = {
            "date": datetime.date.today().isoformat(),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "model": "resnet_like (image float32 [batch, 3, 64, 64]), one image per request, JSON body",
            "body_bytes": len(body),
            "threads": args.threads,
            "max_batch": args.max_batch,
            "max_delay_ms": args.max_delay_ms,
            "warmup_requests": args.warmup,
            "rows": rows,
            "table": table,
        }
        (RESULTS / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
