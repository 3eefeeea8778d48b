"""Models over 2 GB: load, optimize, verify and save one in bounded memory (a benchmark, not a test).

Builds a model whose weights exceed protobuf's 2 GiB limit (default 2.25 GiB of fp32 MatMul
weights plus a foldable BatchNorm-like Mul/Add chain), writes it with external data, then runs
``modelpress.optimize.optimize_file`` on it in a subprocess and reports wall time and peak RSS
(``VmHWM``) of load + passes + save, with and without the numeric check. Bounded memory means:
without the check, peak RSS stays well under the model's size (weights stay memory-mapped
on disk and are written through); with the check, onnxruntime itself loads both models.

    .venv/bin/python bench/large_model.py [--gib 2.25] [--workdir /tmp/modelpress-large]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def build(path: Path, gib: float) -> None:
    import numpy as np
    import onnx_ir as ir

    from modelpress.ir import io
    from modelpress.ir.build import GraphBuilder

    width = 8192
    layers = max(1, int(gib * 2**30 // (width * width * 4)))
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    h = b.input("x", ir.DataType.FLOAT, ["batch", width])
    for i in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32) / np.sqrt(width)).astype(np.float32)
        h = b.op("MatMul", h, b.const(w, f"layer{i}.w"))
        h = b.op("Mul", h, b.const(np.float32(0.5), f"layer{i}.scale"))
        h = b.op("Mul", h, b.const(np.float32(2.0), f"layer{i}.unscale"))  # folds away
        h = b.op("Relu", b.op("Identity", h))
    h.name = "y"
    io.save(b.build([h]), path, external_data=True)


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(source: str, dest: str, verify: bool) -> None:
    import threading

    from modelpress.optimize import optimize_file

    # VmHWM counts touched pages of memory-mapped weight files too (reclaimable page cache);
    # RssAnon is the process's own memory: sample its peak.
    peak_anon = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak_anon[0] = max(peak_anon[0], _status("RssAnon"))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    report = optimize_file(source, dest, verify=verify, dim_values={"batch": 1})
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": _status("VmHWM"),
                "peak_anon_mb": peak_anon[0],
                "nodes": [report.nodes_before, report.nodes_after],
                "max_rel": None if report.comparison is None else report.comparison.max_rel,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.25)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modelpress-large"))
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2] == "verify")
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / "large.onnx"
    if not source.exists():
        start = time.perf_counter()
        build(source, args.gib)
        print(f"built {source} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    data = sum(p.stat().st_size for p in args.workdir.glob("large.onnx*"))
    print(f"model: {data / 2**30:.2f} GiB on disk (graph + external data)")
    for mode in ("no-verify", "verify"):
        dest = args.workdir / f"large.opt.{mode}.onnx"
        out = subprocess.run(
            [sys.executable, __file__, "--worker", str(source), str(dest), mode],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            print(f"{mode}: FAILED\n{out.stderr[-3000:]}")
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        written = sum(p.stat().st_size for p in args.workdir.glob(f"large.opt.{mode}.onnx*"))
        print(
            f"{mode}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MiB "
            f"({result['peak_rss_mb'] / (data / 2**20):.2f}x the model; own memory, RssAnon, peaked at "
            f"{result['peak_anon_mb']:.0f} MiB = {result['peak_anon_mb'] / (data / 2**20):.2f}x), nodes {result['nodes'][0]} -> "
            f"{result['nodes'][1]}, written {written / 2**30:.2f} GiB, max rel error {result['max_rel']}"
        )


if __name__ == "__main__":
    main()
