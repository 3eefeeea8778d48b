"""Latency cost of the library-free obfuscation transforms (issue 4): the target is <= 1%.

Permuting and rescaling hidden channels (``modelpress.protect.obfuscate``) only rewrites
weights: the graph, its ops and every tensor shape stay the same, so onnxruntime should run
the transformed model exactly as fast as the original. This script measures that on the
torch zoo's CNNs (``resnet_like``, ``mobilenetv2_like``, exported with the exporter's constant
folding on and off). For each model it times four variants:

* ``original``: the export;
* ``original-copy``: the same model saved again: an A/A control whose "overhead" is this
  machine's noise floor for identical graphs (session order, allocation, caches);
* ``permuted+rescaled``: ``PermuteChannelsPass`` then ``RescaleChannelsPass`` (seeded);
* ``obfuscated-high``: ``obfuscate_model(strength="high")`` (the same plus anonymized names).

Each transformed variant is first checked against the original (``verify_obfuscation``,
rtol 1e-5). Then all variants are timed on CPU onnxruntime at ``ORT_ENABLE_ALL`` (so its own
fusions apply to every variant alike), ``--threads`` intra-op threads, spinning off, for
each batch size: after warm-up, ``--runs`` rounds, each round running every variant once in
a fresh seeded order, so that machine noise hits all variants alike. Reported: median and
p10-p90 latency, the overhead ``median(variant) / median(original) - 1``, and the median of
the per-round ratios with its 90% bootstrap interval (runs are interleaved, so a round's
ratio cancels slow drifts). Verdict per variant: ``PASS`` when the paired overhead is <= 1%;
``PASS~`` when it is above but the interval reaches 1% (a tie within this machine's noise);
``FAIL`` otherwise.

Usage::

    .venv/bin/python bench/obfuscate_transforms.py              # ~1 min on 2 cores
    .venv/bin/python bench/obfuscate_transforms.py --runs 200 --models resnet_like-fold

Results go to ``bench/results/obfuscate_transforms.json`` and ``.md`` (the table is also
printed). Torch exports are cached in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet_like-fold", "resnet_like-nofold", "mobilenetv2_like-fold", "mobilenetv2_like-nofold")
VARIANTS = ("original", "original-copy", "permuted+rescaled", "obfuscated-high")
TARGET_OVERHEAD = 0.01
SEED = 0


def produce_variants(source: Path, workdir: Path) -> tuple[dict[str, Path], dict]:
    """Write the transformed variants of ``source``; return their paths and what the passes did."""
    from modelpress.ir import io
    from modelpress.ir.stats import op_histogram
    from modelpress.protect.obfuscate import (
        PermuteChannelsPass,
        RescaleChannelsPass,
        obfuscate_model,
        verify_obfuscation,
    )

    original = io.load(source)
    transformed = original.clone()
    permuted = PermuteChannelsPass(SEED)(transformed).modified
    rescaled = RescaleChannelsPass(SEED + 1)(transformed).modified
    full, report = obfuscate_model(original.clone(), seed=SEED, strength="high")
    paths = {"original": source, "original-copy": io.save(original, workdir / f"{source.stem}.copy.onnx")}
    info: dict = {"groups": report.groups, "permuted": report.permuted, "rescaled": report.rescaled}
    for variant, model in (("permuted+rescaled", transformed), ("obfuscated-high", full)):
        assert op_histogram(model) == op_histogram(original), f"{variant} changed the ops"
        comparison = verify_obfuscation(original, model, dim_values={"batch": 2})
        info[f"{variant}_max_rel"] = comparison.max_rel
        paths[variant] = io.save(model, workdir / f"{source.stem}.{variant.replace('+', '_')}.onnx")
    info["changed"] = {"permute": permuted, "rescale": rescaled}
    return paths, info


def measure(paths: dict[str, Path], batch: int, args: argparse.Namespace) -> dict[str, list[float]]:
    """Interleaved latencies (seconds) of every variant at ORT_ENABLE_ALL for one batch size."""
    from modelpress.ir import io
    from modelpress.runtime.feeds import random_feeds
    from modelpress.runtime.session import create_session

    feeds = random_feeds(io.load(paths["original"]), 0, dim_values={"batch": batch})
    sessions = {v: create_session(p, level="all", threads=args.threads) for v, p in paths.items()}
    for session in sessions.values():
        for _ in range(args.warmup):
            session.run(None, feeds)
    times: dict[str, list[float]] = {v: [] for v in sessions}
    order, keys = random.Random(0), list(sessions)
    for _ in range(args.runs):
        order.shuffle(keys)  # no variant always runs first, or right after another
        for variant in keys:
            start = time.perf_counter()
            sessions[variant].run(None, feeds)
            times[variant].append(time.perf_counter() - start)
    return times


def paired(variant: list[float], original: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """Median per-round ratio variant / original and its 5%-95% bootstrap interval."""
    per_round = np.asarray(variant) / np.asarray(original)
    rng = np.random.default_rng(0)
    medians = np.median(per_round[rng.integers(0, len(per_round), (resamples, len(per_round)))], axis=1)
    return float(np.median(per_round)), float(np.quantile(medians, 0.05)), float(np.quantile(medians, 0.95))


def summarize(times: dict[str, list[float]]) -> dict[str, dict]:
    """Latency summary and overhead of each variant against the original."""
    out = {}
    for variant, values in times.items():
        ms = sorted(v * 1e3 for v in values)
        deciles = statistics.quantiles(ms, n=10, method="inclusive")
        entry = {
            "median_ms": statistics.median(ms),
            "p10_ms": deciles[0],
            "p90_ms": deciles[-1],
            "n": len(ms),
        }
        if variant != "original":
            ratio, low, high = paired(values, times["original"])
            entry["overhead"] = statistics.median(values) / statistics.median(times["original"]) - 1
            entry["paired_overhead"], entry["ci90"] = ratio - 1, [low - 1, high - 1]
            within = ratio - 1 <= TARGET_OVERHEAD
            entry["verdict"] = "PASS" if within else "PASS~" if low - 1 <= TARGET_OVERHEAD else "FAIL"
        out[variant] = entry
    return out


def markdown(results: dict) -> str:
    settings = results["settings"]
    lines = [
        "# Obfuscation transforms: latency at onnxruntime ORT_ENABLE_ALL",
        "",
        f"{settings['machine']}; onnxruntime {settings['onnxruntime']}; {settings['threads']} intra-op threads, "
        f"{settings['runs']} interleaved runs after {settings['warmup']} warm-up runs. Target: overhead <= "
        f"{TARGET_OVERHEAD:.0%} (paired: median of per-round ratios, 90% bootstrap interval).",
        "",
        "| model | batch | variant | median ms [p10-p90] | overhead (medians) | paired overhead [90% CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, entry in results["models"].items():
        for batch, by_variant in entry["latency"].items():
            for variant, s in by_variant.items():
                spread = f"{s['median_ms']:.3f} [{s['p10_ms']:.3f}-{s['p90_ms']:.3f}]"
                if variant == "original":
                    lines.append(f"| {model} | {batch} | {variant} | {spread} | | | |")
                    continue
                ci = f"{s['paired_overhead']:+.2%} [{s['ci90'][0]:+.2%}, {s['ci90'][1]:+.2%}]"
                lines.append(
                    f"| {model} | {batch} | {variant} | {spread} | {s['overhead']:+.2%} | {ci} | {s['verdict']} |"
                )
    lines += ["", "Groups (found / permuted / rescaled) and max relative error of each variant:", ""]
    for model, entry in results["models"].items():
        info = entry["transforms"]
        lines.append(
            f"- {model}: {info['groups']} / {info['permuted']} / {info['rescaled']}; "
            f"permuted+rescaled {info['permuted+rescaled_max_rel']:.1e}, obfuscated-high {info['obfuscated-high_max_rel']:.1e}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "modelpress-bench-obfuscate"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "obfuscate_transforms")
    args = parser.parse_args()
    if args.runs < 30:
        parser.error("--runs must be at least 30 (the medians need them)")

    import onnxruntime

    from modelpress.examples.torch_models import export_zoo

    args.workdir.mkdir(parents=True, exist_ok=True)
    names = sorted({m.split("-")[0] for m in args.models})
    sources = export_zoo(args.workdir / "zoo", models=names, seed=SEED)
    results: dict = {
        "settings": {
            "machine": f"{platform.processor() or platform.machine()} ({platform.system()})",
            "onnxruntime": onnxruntime.__version__,
            "threads": args.threads,
            "runs": args.runs,
            "warmup": args.warmup,
        },
        "models": {},
    }
    for model in args.models:
        paths, info = produce_variants(sources[model], args.workdir)
        latency = {str(batch): summarize(measure(paths, batch, args)) for batch in args.batches}
        results["models"][model] = {"transforms": info, "latency": latency}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
