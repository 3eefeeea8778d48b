"""Benchmark encrypted models: load overhead per GB and file-size overhead of ``.mpe``.

A MatMul chain with random float32 weights (a few hundred MB, built in code) is saved as a
plain ``.onnx`` file and encrypted into an ``.mpe`` file with a fresh key. Then, in rounds run
in a fresh random order (after one warm-up round), each arm is timed once:

* ``plain``: ``create_session(path)`` on the plaintext file (onnxruntime reads it itself);
* ``encrypted``: ``decrypt_model(path, key)`` then ``create_session(graph,
  external_initializers=weights)``, the way ``modelpress run`` loads an ``.mpe`` file (format
  version 2: onnxruntime parses only the graph and uses the decrypted weights in place;
  decryption time is also recorded alone);
* ``bytes``: ``create_session(bytes)`` on plaintext already in memory, no decryption: it
  separates onnxruntime's own cost of loading from bytes rather than from a path (a copy of
  the model into a C++ string and a parse from a stream) from the cost of decryption.

Both files sit in the page cache (the first round warms it), so the numbers are the CPU cost
of protection, not disk speed. The overhead of a round is ``encrypted - plain`` of that round,
divided by the plaintext size in GB (1e9 bytes); the report gives its median and p10-p90 over
the rounds, against the target of <= 0.3 s/GB (issue 4). Encryption speed and the file-size
overhead (header + one 16-byte tag per chunk) are reported too.

Usage::

    .venv/bin/python bench/protect.py                  # ~300 MB model, 7 rounds, ~1-2 min on 2 cores
    .venv/bin/python bench/protect.py --mb 100 --rounds 3 --no-save   # quick look

Results go to ``bench/results/protect.json`` and ``bench/results/protect.md`` (also printed).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.protect import decrypt_model_bytes, encrypt_model, generate_key
from modelpress.protect.encrypt import DEFAULT_CHUNK_BYTES, decrypt_model
from modelpress.runtime.session import create_session

RESULTS = Path(__file__).parent / "results"
TARGET_S_PER_GB = 0.3


def build_model(megabytes: int, width: int = 2048) -> ir.Model:
    """A chain of MatMuls (width x width float32 weights) holding about ``megabytes`` MB."""
    layers = max(1, round(megabytes * 1e6 / (width * width * 4)))
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    y = b.input("x", ir.DataType.FLOAT, [1, width])
    for index in range(layers):
        weight = rng.standard_normal((width, width), dtype=np.float32) * (1 / np.sqrt(width))
        y = b.op("MatMul", y, b.const(weight, f"w{index}"))
    return b.build([y])


def _time(action) -> float:
    gc.collect()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _plain(path: Path, level: str) -> float:
    return _time(lambda: create_session(path, level=level, threads=1))


def _encrypted(path: Path, key: bytes, level: str) -> tuple[float, float]:
    gc.collect()
    started = time.perf_counter()
    plaintext = decrypt_model(path, key)
    decrypted = time.perf_counter()
    session = create_session(
        plaintext.model_bytes, level=level, threads=1, external_initializers=plaintext.external_initializers
    )
    finished = time.perf_counter()
    del session, plaintext
    return finished - started, decrypted - started


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    quantiles = np.quantile(ordered, [0.1, 0.9]) if len(ordered) > 1 else [ordered[0]] * 2
    return {
        "median": statistics.median(ordered),
        "p10": float(quantiles[0]),
        "p90": float(quantiles[1]),
        "min": ordered[0],
        "max": ordered[-1],
    }


def run(megabytes: int, rounds: int, level: str, chunk_bytes: int, workdir: Path) -> dict:
    model = build_model(megabytes)
    plain_path = io.save(model, workdir / "chain.onnx", external_data=False)
    del model
    key = generate_key()
    mpe_path = workdir / "chain.mpe"
    encrypt_seconds = _time(lambda: encrypt_model(plain_path, mpe_path, key, chunk_bytes=chunk_bytes))
    plain_bytes = plain_path.stat().st_size
    mpe_bytes = mpe_path.stat().st_size
    plaintext = decrypt_model_bytes(mpe_path, key)
    plaintext_gb = len(plaintext) / 1e9

    _plain(plain_path, level)  # warm-up: page cache, onnxruntime's first-session costs
    _encrypted(mpe_path, key, level)
    rows = []
    order_rng = random.Random(0)
    for _ in range(rounds):
        arms = ["plain", "encrypted", "bytes"]
        order_rng.shuffle(arms)
        row = {}
        for arm in arms:
            if arm == "plain":
                row["plain"] = _plain(plain_path, level)
            elif arm == "bytes":
                row["bytes"] = _time(lambda: create_session(plaintext, level=level, threads=1))
            else:
                row["encrypted"], row["decrypt"] = _encrypted(mpe_path, key, level)
        rows.append(row)

    def per_gb(values):
        return _spread([v / plaintext_gb for v in values])

    overhead = per_gb([r["encrypted"] - r["plain"] for r in rows])
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
        "model": {"megabytes": megabytes, "plaintext_gb": plaintext_gb, "level": level, "threads": 1},
        "rounds": rounds,
        "chunk_bytes": chunk_bytes,
        "seconds_per_gb": {
            "plain_session": per_gb([r["plain"] for r in rows]),
            "encrypted_session": per_gb([r["encrypted"] for r in rows]),
            "decrypt_only": per_gb([r["decrypt"] for r in rows]),
            "plaintext_bytes_session": per_gb([r["bytes"] for r in rows]),
            "onnxruntime_bytes_vs_path": per_gb([r["bytes"] - r["plain"] for r in rows]),
            "overhead": overhead,
            "encrypt": encrypt_seconds / plaintext_gb,
        },
        "file_bytes": {
            "onnx": plain_bytes,
            "mpe": mpe_bytes,
            "overhead": mpe_bytes - plain_bytes,
            "overhead_percent": 100 * (mpe_bytes - plain_bytes) / plain_bytes,
        },
        "target_s_per_gb": TARGET_S_PER_GB,
        "target_met": overhead["median"] <= TARGET_S_PER_GB,
        "raw_seconds": rows,
    }


def to_markdown(result: dict) -> str:
    s = result["seconds_per_gb"]
    f = result["file_bytes"]
    m = result["model"]

    def row(name, stats):
        return (
            f"| {name} | {stats['median']:.3f} | {stats['p10']:.3f}-{stats['p90']:.3f} | "
            f"{stats['min']:.3f}-{stats['max']:.3f} |"
        )

    verdict = "PASS" if result["target_met"] else "FAIL"
    return "\n".join(
        [
            f"# .mpe load overhead ({m['plaintext_gb'] * 1000:.0f} MB MatMul chain, onnxruntime level "
            f"'{m['level']}', {result['rounds']} rounds, {result['machine']['cpus']} CPUs, "
            f"load avg at end {result['machine']['loadavg_end'][0]:.2f})",
            "",
            "| s/GB of plaintext | median | p10-p90 | min-max |",
            "|---|---|---|---|",
            row("plain: create_session(path)", s["plain_session"]),
            row("encrypted: decrypt_model + create_session(graph, weights)", s["encrypted_session"]),
            row("  of which decrypt_model", s["decrypt_only"]),
            row("**overhead (paired per round)**", s["overhead"]),
            row("plaintext in memory: create_session(bytes)", s["plaintext_bytes_session"]),
            row("  onnxruntime bytes-vs-path cost (paired)", s["onnxruntime_bytes_vs_path"]),
            "",
            f"Target overhead <= {result['target_s_per_gb']} s/GB: **{verdict}** "
            f"(median {s['overhead']['median']:.3f} s/GB).",
            f"Encryption: {s['encrypt']:.3f} s/GB (load + validate + serialize + encrypt + write).",
            f"File size: .onnx {f['onnx']:,} B, .mpe {f['mpe']:,} B: +{f['overhead']:,} B "
            f"({f['overhead_percent']:.4f} %), chunks of {result['chunk_bytes'] // 2**20} MiB.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="Model size in MB (default 300).")
    parser.add_argument("--rounds", type=int, default=7, help="Timed rounds (default 7).")
    parser.add_argument("--level", default="all", help="onnxruntime optimization level (default all).")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    parser.add_argument("--no-save", action="store_true", help="Print only; do not write bench/results.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelpress-bench-protect-") as tmp:
        result = run(args.mb, args.rounds, args.level, args.chunk_bytes, Path(tmp))
    text = to_markdown(result)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "protect.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "protect.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
