"""Does the prefetching loader of ``modelpress run --input-dir`` overlap reading with inference?

A package of ``resnet_like`` (``modelpress.examples.torch_models``, dynamic batch, input
``image`` float32 [N, 3, 64, 64]) with an image pipeline (``decode_image`` -> ``resize 72`` ->
``center_crop 64`` -> ``to_tensor`` -> ``normalize``) runs over a folder of PNG files written
here from seeded noise. The same ``run_stream`` call is timed with ``prefetch_batches`` 0 (read
and pre-process each batch only when it is needed) and 2 (a loader thread up to two batches
ahead), interleaved, ``--rounds`` times each; one onnxruntime session per setting, spinning off,
``--threads`` intra-op threads (1 by default, leaving the second core to the loader: the point
of the loader is to use an otherwise idle core).

Reported: median and spread (min-max) of the wall time per setting, the median of the paired
ratios no-prefetch / prefetch (> 1: prefetching is faster), and, per setting, the time spent in
reading + pre-processing and in inference measured apart on one pass.

Usage::

    .venv/bin/python bench/run_prefetch.py                  # ~1 min on 2 cores
    .venv/bin/python bench/run_prefetch.py --images 512 --batch 16 --rounds 7
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from modelpress.examples.torch_models import export_onnx, resnet_like
from modelpress.package import build_package, load_package
from modelpress.pipeline import Pipeline
from modelpress.pipeline.preprocess import DecodeImageStep
from modelpress.runtime.session import run_session
from modelpress.runtime.stream import concatenate_outputs, read_samples, run_stream

PIPELINE = {
    "version": 1,
    "inputs": {
        "image": [
            {"decode_image": {"mode": "RGB"}},
            {"resize": {"size": 72}},
            {"center_crop": {"size": 64}},
            "to_tensor",
            {"normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
        ]
    },
    "outputs": {"logits": ["softmax", {"top_k": {"k": 5}}]},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("bench/results/run_prefetch.json"))
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = export_onnx(
            resnet_like().eval(),
            (torch.zeros(1, 3, 64, 64),),
            root / "m.onnx",
            constant_folding=True,
            input_names=["image"],
            output_names=["logits"],
        )
        package = load_package(build_package(model, root / "pkg", pipeline=Pipeline.from_dict(PIPELINE)))
        folder = root / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(buffer, format="PNG")
            (folder / f"{i:05d}.png").write_bytes(buffer.getvalue())
        sessions = {depth: package.open_session(threads=args.threads) for depth in (0, 2)}
        pipeline = package.pipeline
        assert pipeline is not None and isinstance(pipeline.inputs["image"][0], DecodeImageStep)

        def one_pass(depth: int) -> float:
            start = time.perf_counter()
            samples = read_samples(folder, ["image"], image_inputs=["image"])
            outputs = concatenate_outputs(
                run_stream(
                    samples,
                    lambda feeds: run_session(sessions[depth], feeds),
                    batch=args.batch,
                    prefetch_batches=depth,
                    preprocess=pipeline.preprocess,
                    postprocess=pipeline.postprocess,
                )
            )
            assert outputs["logits.indices"].shape == (args.images, 5)
            return time.perf_counter() - start

        one_pass(0), one_pass(2)  # warm-up
        times: dict[int, list[float]] = {0: [], 2: []}
        for round_index in range(args.rounds):
            for depth in (0, 2) if round_index % 2 == 0 else (2, 0):
                times[depth].append(one_pass(depth))
        read_s, infer_s = _split(folder, pipeline, sessions[0], args.batch)
    ratios = [a / b for a, b in zip(times[0], times[2], strict=True)]
    result = {
        "images": args.images,
        "batch": args.batch,
        "threads": args.threads,
        "rounds": args.rounds,
        "seconds": {
            str(d): {"median": statistics.median(t), "min": min(t), "max": max(t)} for d, t in times.items()
        },
        "ratio_no_prefetch_over_prefetch": {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        },
        "one_pass_split_seconds": {"read_and_preprocess": read_s, "inference_and_postprocess": infer_s},
    }
    for depth, label in ((0, "no prefetch"), (2, "prefetch 2")):
        s = result["seconds"][str(depth)]
        print(f"{label:12s} median {s['median']:.3f} s  (min {s['min']:.3f}, max {s['max']:.3f})")
    r = result["ratio_no_prefetch_over_prefetch"]
    print(f"no-prefetch / prefetch: median {r['median']:.2f}x (min {r['min']:.2f}, max {r['max']:.2f})")
    print(
        f"one pass, measured apart: read + pre-process {read_s:.3f} s, inference + post-process {infer_s:.3f} s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


def _split(folder: Path, pipeline: Pipeline, session: object, batch: int) -> tuple[float, float]:
    from modelpress.runtime.stream import iter_batches

    start = time.perf_counter()
    prepared = [
        pipeline.preprocess(b)
        for b in iter_batches(read_samples(folder, ["image"], image_inputs=["image"]), batch)
    ]
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    for feeds in prepared:
        pipeline.postprocess({k: np.asarray(v) for k, v in run_session(session, feeds).items()})
    return read_s, time.perf_counter() - start


if __name__ == "__main__":
    main()
