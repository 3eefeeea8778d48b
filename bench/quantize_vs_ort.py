"""Benchmark ``modelpress quantize`` against ``onnxruntime.quantization`` (not a test).

Models: the digits CNN trained here on scikit-learn's ``load_digits`` (top-1 accuracy on the
540 held-out images) and ``resnet_like`` (random weights, exported with folding; output
similarity to fp32 on 200 random images that calibration never saw: mean/min cosine of the
logits, top-1 agreement, max error relative to the output's scale).

Variants (same calibration files for every static one, ``--calib-samples`` of them):

* ``fp32``; ``mp-{minmax,entropy,percentile,mse}``: modelpress static, U8S8 per-channel;
  ``mp-minmax-s8s8``: int8 activations; ``mp-weight-only``: int8 weights + DequantizeLinear;
* ``ort-qdq-{minmax,entropy,percentile}``: ``quantize_static`` (QDQ, per-channel, QUInt8
  activations, QInt8 weights: the same scheme), defaults otherwise;
* ``ort-dynamic``: ``quantize_dynamic`` (QInt8 weights; QUInt8 where onnxruntime has no
  int8 ConvInteger kernel).

Each quantization runs in its own subprocess: wall time of the call and peak RSS (VmHWM).
modelpress is timed without its error measurement (``evaluate=False``; it still loads the
result in onnxruntime); onnxruntime's quantizer measures nothing. Calibration memory:
modelpress (minmax, entropy) and onnxruntime (minmax, entropy) with 100 and 1000 samples.
Latency: onnxruntime ``ORT_ENABLE_ALL``, 2 intra-op threads, spinning off, every variant's
session interleaved in a shuffled order each round, ``--runs`` rounds after 5 warm-ups,
batch 1 and 8; median and p10-p90 in ms.

Usage::

    .venv/bin/python bench/quantize_vs_ort.py            # ~5 min on 2 cores
    .venv/bin/python bench/quantize_vs_ort.py --quick    # fewer runs, no 1000-sample RSS

Results: ``bench/results/quantize.json`` and ``.md`` (the table is printed too).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MP = ("mp-minmax", "mp-entropy", "mp-percentile", "mp-mse", "mp-minmax-s8s8", "mp-weight-only")
ORT = ("ort-qdq-minmax", "ort-qdq-entropy", "ort-qdq-percentile", "ort-dynamic")
FILE_BATCH = 10  # samples per calibration file


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _quantize(tool: str, source: str, destination: str, calib: str) -> dict:
    """One quantization call (in a worker process); returns its time, peak RSS and notes."""
    files = sorted(Path(calib).glob("*.npy"))
    name = "image"
    rss_import = 0.0
    note = ""
    if tool.startswith("mp-"):
        from modelpress.quantize import QuantSpec, quantize_file

        if tool == "mp-weight-only":
            spec, calib_dir = QuantSpec(mode="weight-only"), None
        else:
            calibrator = tool.split("-")[1]
            spec = QuantSpec(calibrator=calibrator, activation_dtype="int8" if "s8s8" in tool else "uint8")
            calib_dir = calib
        rss_import = _peak_rss_mb()
        start = time.perf_counter()
        quantize_file(source, destination, spec, calib_dir=calib_dir, evaluate=False)
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.files = iter(files)

            def get_next(self) -> dict | None:
                path = next(self.files, None)
                return None if path is None else {name: np.load(path)}

        rss_import = _peak_rss_mb()
        start = time.perf_counter()
        if tool == "ort-dynamic":
            quantize_dynamic(source, destination, weight_type=QuantType.QInt8)
            from modelpress.runtime.session import create_session

            try:
                create_session(destination)
            except Exception:  # ConvInteger has no int8-weight kernel on CPU: use uint8 weights
                quantize_dynamic(source, destination, weight_type=QuantType.QUInt8)
                note = "QUInt8 weights (no CPU ConvInteger kernel for int8 weights)"
        else:
            method = {
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[tool.rsplit("-", 1)[1]]
            quantize_static(
                source,
                destination,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
            )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_import_mb": rss_import,
        "note": note,
    }


def _spawn(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--_worker", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(workdir: Path, calib_samples: int) -> dict[str, dict]:
    """Export both models, write calibration folders (100, 1000 and --calib-samples), eval sets."""
    sys.path.insert(0, str(ROOT / "src"))
    from modelpress.examples.digits import export_digits_cnn, load_digits_split
    from modelpress.examples.torch_models import export_zoo

    split = load_digits_split()
    rng = np.random.default_rng(1)
    models = {
        "digits_cnn": {
            "path": export_digits_cnn(workdir / "digits_cnn.onnx"),
            "pool": split.x_train,
            "eval": split.x_test,
            "labels": split.y_test,
        },
        "resnet_like": {
            "path": export_zoo(workdir / "zoo", models=["resnet_like"])["resnet_like-fold"],
            "pool": None,
            "eval": rng.standard_normal((200, 3, 64, 64)).astype(np.float32),
        },
    }
    for name, entry in models.items():
        for count in sorted({100, 1000, calib_samples}):
            folder = workdir / "calib" / name / str(count)
            entry[f"calib{count}"] = folder
            if folder.exists():
                continue
            folder.mkdir(parents=True)
            data_rng = np.random.default_rng(2)
            for start in range(0, count, FILE_BATCH):
                size = min(FILE_BATCH, count - start)
                if entry["pool"] is not None:  # digits: training images, cycled past 1257
                    index = np.arange(start, start + size) % len(entry["pool"])
                    batch = entry["pool"][index]
                else:
                    batch = data_rng.standard_normal((size, 3, 64, 64)).astype(np.float32)
                np.save(folder / f"{start:05d}.npy", batch)
    return models


def quality(path: Path, entry: dict, reference: np.ndarray) -> dict:
    from modelpress.runtime.session import create_session

    session = create_session(path, level="all")
    out = np.concatenate(
        [session.run(None, {"image": entry["eval"][i : i + 50]})[0] for i in range(0, len(entry["eval"]), 50)]
    )
    cosine = np.sum(out * reference, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1))
    result = {
        "agreement": float(np.mean(out.argmax(1) == reference.argmax(1))),
        "cos_mean": float(cosine.mean()),
        "cos_min": float(cosine.min()),
        "max_rel": float(np.abs(out - reference).max() / np.abs(reference).max()),
    }
    if "labels" in entry:
        result["accuracy"] = float(np.mean(out.argmax(1) == entry["labels"]))
    return result


def latency(paths: dict[str, Path], entry: dict, batch: int, runs: int) -> dict[str, dict]:
    from modelpress.runtime.session import create_session

    feed = {"image": entry["eval"][:batch]}
    sessions = {v: create_session(p, level="all", threads=2) for v, p in paths.items()}
    for session in sessions.values():
        for _ in range(5):
            session.run(None, feed)
    times: dict[str, list[float]] = {v: [] for v in sessions}
    keys, order = list(sessions), random.Random(0)
    for _ in range(runs):
        order.shuffle(keys)
        for key in keys:
            start = time.perf_counter()
            sessions[key].run(None, feed)
            times[key].append((time.perf_counter() - start) * 1e3)
    summary = {}
    for key, values in times.items():
        deciles = statistics.quantiles(values, n=10, method="inclusive")
        summary[key] = {"median_ms": statistics.median(values), "p10_ms": deciles[0], "p90_ms": deciles[-1]}
    return summary


def run(args: argparse.Namespace) -> dict:
    from modelpress.runtime.session import create_session

    workdir = Path(args.workdir)
    models = prepare(workdir, args.calib_samples)
    results: dict = {
        "machine": platform.processor() or platform.machine(),
        "settings": vars(args),
        "models": {},
    }
    for name, entry in models.items():
        print(f"== {name}", file=sys.stderr)
        folder = workdir / "variants" / name
        folder.mkdir(parents=True, exist_ok=True)
        paths, tools = {"fp32": entry["path"]}, {}
        for tool in (*MP, *ORT):
            destination = folder / f"{tool}.onnx"
            destination.unlink(missing_ok=True)
            tools[tool] = _spawn(
                tool, str(entry["path"]), str(destination), str(entry[f"calib{args.calib_samples}"])
            )
            if "error" not in tools[tool]:
                paths[tool] = destination
            print(f"  {tool}: {tools[tool]}", file=sys.stderr)
        reference = create_session(entry["path"], level="disable").run(None, {"image": entry["eval"]})[0]
        rows = {}
        for variant, path in paths.items():
            rows[variant] = {
                **quality(path, entry, reference),
                "bytes": path.stat().st_size,
                **tools.get(variant, {}),
            }
        for batch in args.batches:
            for variant, stats in latency(paths, entry, batch, args.runs).items():
                rows[variant][f"latency_b{batch}"] = stats
        memory = {}
        for tool in ("mp-minmax", "mp-entropy", "ort-qdq-minmax", "ort-qdq-entropy"):
            for count in (100,) if args.quick else (100, 1000):
                out = folder / f"rss-{tool}-{count}.onnx"
                memory[f"{tool}@{count}"] = _spawn(
                    tool, str(entry["path"]), str(out), str(entry[f"calib{count}"])
                )
                print(f"  rss {tool}@{count}: {memory[f'{tool}@{count}']}", file=sys.stderr)
        results["models"][name] = {"rows": rows, "calibration_memory": memory}
    return results


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; settings: {results['settings']}", ""]
    for name, model in results["models"].items():
        metric = "top-1 acc" if name == "digits_cnn" else "cos mean / min"
        lines += [
            f"### {name}",
            "",
            f"| variant | {metric} | agree | max rel | size KiB | b1 ms (p10-p90) | b8 ms (p10-p90) | quantize s | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for variant, row in model["rows"].items():
            score = (
                f"{row['accuracy']:.2%}"
                if "accuracy" in row
                else f"{row['cos_mean']:.4f} / {row['cos_min']:.4f}"
            )
            cells = []
            for batch in (1, 8):
                stats = row.get(f"latency_b{batch}")
                cells.append(
                    "-"
                    if stats is None
                    else f"{stats['median_ms']:.3f} ({stats['p10_ms']:.3f}-{stats['p90_ms']:.3f})"
                )
            wall = f"{row['seconds']:.2f}" if "seconds" in row else "-"
            rss = f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else "-"
            lines.append(
                f"| {variant} | {score} | {row['agreement']:.1%} | {row['max_rel']:.3f} | "
                f"{row['bytes'] / 1024:.0f} | {cells[0]} | {cells[1]} | {wall} | {rss} |"
            )
        lines += ["", "Calibration peak RSS (MiB, whole process) by number of samples:", ""]
        for key, record in model["calibration_memory"].items():
            lines.append(f"- {key}: {record.get('peak_rss_mb', record.get('error', '?'))}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        print(json.dumps(_quantize(*sys.argv[2:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(ROOT / "build" / "bench_quantize"))
    parser.add_argument("--calib-samples", type=int, default=100)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.runs = 15
    results = run(args)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantize.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(results)
    (out / "quantize.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
