"""Benchmark ``modelpress optimize`` against its anchors: onnxruntime's offline optimizer and onnxslim.

For every model this script produces six variants of the same network:

* ``original``: the model as exported / shipped;
* ``ort-basic`` / ``ort-extended``: the graph onnxruntime itself writes when asked to save
  what it optimized at ``ORT_ENABLE_BASIC`` / ``ORT_ENABLE_EXTENDED`` (the extended one may
  contain ``com.microsoft`` contrib ops: it is onnxruntime's own output, so that is fair);
* ``onnxslim``: ``onnxslim.slim(src, dst)``;
* ``modelpress``: ``modelpress.optimize.optimize_file(src, dst)`` at its default level (all)
  and target (portable ONNX), numeric verification included;
* ``modelpress-ort``: the same with ``target="onnxruntime"`` (adds contrib-op fusions such as
  FusedConv): the like-for-like comparison with ``ort-extended``, whose offline output holds
  the same contrib ops. Target 1 is judged on it (portable ONNX cannot express a fused
  Conv+activation, so the portable output is shown beside it as information); target 2 on
  both.

Each tool runs in its own subprocess, so its wall time (median of ``--tool-repeats`` calls)
and peak RSS (``VmHWM``) are its own. Then every variant is timed on CPU onnxruntime (intra-op
threads fixed, spinning off so idle sessions do not steal cores) at ``ORT_DISABLE_ALL`` and
``ORT_ENABLE_ALL``, batch 1 and 8 (static-batch models: their batch only). Runs are interleaved
round-robin across all sessions of a (model, batch), in a fresh seeded order each round, after
warm-up runs, so that machine noise hits every variant alike. Latency is reported as median
and p10-p90; each latency target also gets a paired bootstrap interval of the per-round ratio,
and a miss whose interval reaches 1.00 is marked ``FAIL~`` (a tie within this machine's noise).
An ENABLE_ALL miss against a competitor whose graph onnxruntime optimizes into exactly ours
(same kernels, attributes and weights: ``enable_all_signature``) is marked ``TIE=``.

Ratios are ``competitor_median / modelpress_median`` at the same onnxruntime level and batch:
>= 1.00 means modelpress is at least as fast. Targets (pass/fail per model):

1. CNNs: modelpress@DISABLE_ALL at least as fast as ort-basic@DISABLE_ALL and
   ort-extended@DISABLE_ALL (our offline graph needs no runtime optimizer);
2. modelpress@ENABLE_ALL no slower than the best competitor@ENABLE_ALL;
3. modelpress's optimize wall time <= onnxslim's, judged like for like: onnxslim checks
   nothing numerically, so modelpress is timed with ``verify=False`` for the target, and its
   default (verified) time is reported beside it.

Usage::

    .venv/bin/python bench/optimize_vs_anchors.py              # full run, ~3-6 min on 2 cores
    .venv/bin/python bench/optimize_vs_anchors.py --quick      # smoke run, < 1 min
    .venv/bin/python bench/optimize_vs_anchors.py --models resnet_like-nofold light_resnet50

Results go to ``bench/results/optimize.json`` and ``bench/results/optimize.md`` (the table is
also printed). Torch exports are cached in ``--workdir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("original", "ort-basic", "ort-extended", "onnxslim", "modelpress", "modelpress-ort")
TOOLS = VARIANTS[1:]
ORT_LEVELS = ("disable", "all")
TORCH_MODELS = (
    "resnet_like-nofold",
    "resnet_like-fold",
    "mobilenetv2_like-nofold",
    "mobilenetv2_like-fold",
    "bert_like-nofold",
    "bert_like-fold",
)
LIGHT_MODELS = ("light_resnet50", "light_squeezenet", "light_inception_v1", "light_shufflenet")
DEFAULT_MODELS = TORCH_MODELS + LIGHT_MODELS
QUICK_MODELS = ("resnet_like-nofold", "bert_like-nofold", "light_squeezenet")
NOT_CNN = ("bert_like",)
SEQUENCE = 64  # bert_like's sequence length in the latency runs


# --------------------------------------------------------------------------------------------
# Workers: one subprocess per tool (or export), so time and peak RSS belong to that tool alone.
# --------------------------------------------------------------------------------------------


def _run_tool(tool: str, source: str, destination: str, repeats: int) -> dict:
    """Import the tool, then time ``repeats`` calls that read ``source`` and write ``destination``.

    The recorded time is the median call (its report gives the pass/verification split for
    modelpress); the peak RSS is that of the process after its first call (imports included;
    ``rss_after_import_mb`` says how much that was).
    """
    if tool == "onnxslim":
        import onnxslim

        call = lambda: onnxslim.slim(source, destination)  # noqa: E731
    elif tool.startswith("modelpress"):
        from modelpress.optimize import optimize_file

        target = "onnxruntime" if tool == "modelpress-ort" else "onnx"
        call = lambda: optimize_file(source, destination, target=target)  # noqa: E731
        unverified = lambda: optimize_file(source, destination, target=target, verify=False)  # noqa: E731
    else:
        from modelpress.runtime.session import create_session

        level = tool.removeprefix("ort-")
        call = lambda: create_session(source, level=level, optimized_model_path=destination)  # noqa: E731
    rss_after_import = _peak_rss_mb()
    calls = []  # (seconds, what the call returned)
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        # Keep modelpress's report only: holding sessions would grow later calls' memory.
        calls.append((time.perf_counter() - start, result if tool.startswith("modelpress") else None))
        if len(calls) == 1:
            peak = _peak_rss_mb()  # after the first call: the peak of one call, not of several
    seconds, result = sorted(calls, key=lambda c: c[0])[(len(calls) - 1) // 2]  # the median call
    record = {
        "seconds": seconds,
        "seconds_each": [c[0] for c in calls],
        "peak_rss_mb": peak,
        "rss_after_import_mb": rss_after_import,
    }
    if tool.startswith("modelpress"):  # split passes from numeric verification, for the analysis
        record["passes_seconds"] = sum(r.seconds for r in result.records)
        record["pipeline_seconds"] = result.seconds
        each = []
        for _ in range(repeats):
            start = time.perf_counter()
            unverified()
            each.append(time.perf_counter() - start)
        record["seconds_no_verify"] = statistics.median(each)
    return record


def _peak_rss_mb() -> float:
    """This process's peak RSS in MiB since exec.

    Linux: ``VmHWM``, which a new program starts afresh. (``ru_maxrss`` survives exec, so a
    child spawned by a big benchmark process would report the parent's size.)
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _worker_main(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "export":
        from modelpress.examples.torch_models import export_zoo

        folder, *names = rest
        export_zoo(folder, models=names)
        return
    source, destination, report, repeats = rest
    Path(report).write_text(json.dumps(_run_tool(kind, source, destination, int(repeats))))


def _spawn(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --------------------------------------------------------------------------------------------
# Producing the variants
# --------------------------------------------------------------------------------------------


def light_model_path(name: str) -> Path:
    """Path of ``light_*.onnx`` in the onnx wheel's backend test data (without importing onnx)."""
    spec = importlib.util.find_spec("onnx")
    assert spec is not None and spec.submodule_search_locations, "onnx is a dependency of modelpress"
    return (
        Path(next(iter(spec.submodule_search_locations)))
        / "backend"
        / "test"
        / "data"
        / "light"
        / f"{name}.onnx"
    )


def source_paths(models: list[str], workdir: Path) -> dict[str, Path]:
    """The original file of every model; torch models are exported (cached) in a subprocess."""
    torch_names = sorted({m.rsplit("-", 1)[0] for m in models if m in TORCH_MODELS})
    if torch_names:
        if importlib.util.find_spec("torch") is None:
            raise SystemExit("torch is not installed: drop the torch models from --models")
        done = _spawn(["export", str(workdir / "torch"), *torch_names])
        if done.returncode != 0:
            raise SystemExit(f"torch export failed:\n{done.stderr[-3000:]}")
    paths = {}
    for model in models:
        paths[model] = (
            workdir / "torch" / f"{model}.onnx" if model in TORCH_MODELS else light_model_path(model)
        )
        if not paths[model].exists():
            raise SystemExit(f"unknown model '{model}': choose from {', '.join(DEFAULT_MODELS)}")
    return paths


def produce_variants(
    model: str, source: Path, workdir: Path, repeats: int
) -> tuple[dict[str, Path], dict[str, dict]]:
    """Run every tool on ``source``; return variant paths and per-tool records (or errors)."""
    folder = workdir / "variants" / model
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"original": source}
    records: dict[str, dict] = {}
    for tool in TOOLS:
        destination = folder / f"{tool}.onnx"
        destination.unlink(missing_ok=True)
        report = folder / f"{tool}.json"
        done = _spawn([tool, str(source), str(destination), str(report), str(repeats)])
        if done.returncode != 0 or not destination.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            records[tool] = {"error": tail[0][:300]}
            print(f"  {tool}: FAILED: {tail[0][:300]}", file=sys.stderr)
            continue
        records[tool] = json.loads(report.read_text())
        paths[tool] = destination
    return paths, records


def op_counts(path: Path) -> dict[str, int]:
    """Op histogram of a model file (onnx_ir, no checker: contrib ops are fine)."""
    import onnx_ir as ir

    from modelpress.ir.stats import op_histogram

    return op_histogram(ir.load(path))


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    runs: int
    warmup: int
    threads: int
    batches: tuple[int, ...]
    tool_repeats: int


def batch_is_dynamic(path: Path) -> bool:
    """Whether the first real graph input (not an initializer listed as input) has a symbolic leading dim."""
    import onnx_ir as ir

    graph = ir.load(path).graph
    first = next(v for v in graph.inputs if v.name not in graph.initializers)
    return first.shape is not None and len(first.shape) > 0 and not isinstance(first.shape[0], int)


def measure(paths: dict[str, Path], batch: int, settings: Settings) -> dict[str, dict[str, list[float]]]:
    """Interleaved latencies (seconds) of every variant x ORT level for one batch size."""
    from modelpress.ir import io
    from modelpress.runtime.feeds import random_feeds
    from modelpress.runtime.session import create_session

    original = io.load(paths["original"])
    feeds = random_feeds(original, 0, dim_values={"batch": batch, "sequence": SEQUENCE})
    # onnxruntime's offline output of an IR<4 model (initializers listed as graph inputs) keeps
    # the inputs of initializers it folded away but drops their values: feed the originals.
    for name, value in original.graph.initializers.items():
        if value.const_value is not None:
            feeds.setdefault(name, value.const_value.numpy())
    sessions = {}
    for variant, path in paths.items():
        for level in ORT_LEVELS:
            session = create_session(path, level=level, threads=settings.threads)  # spinning off
            wanted = {i.name for i in session.get_inputs()}
            sessions[(variant, level)] = (session, {k: v for k, v in feeds.items() if k in wanted})
    for session, feed in sessions.values():
        for _ in range(settings.warmup):
            session.run(None, feed)
    keys = list(sessions)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    order = random.Random(0)
    for _ in range(settings.runs):
        # A fresh order each round: no variant always runs first, or right after a heavy one.
        order.shuffle(keys)
        for key in keys:
            session, feed = sessions[key]
            start = time.perf_counter()
            session.run(None, feed)
            times[key].append(time.perf_counter() - start)
    result: dict[str, dict[str, list[float]]] = {level: {} for level in ORT_LEVELS}
    for (variant, level), values in times.items():
        result[level][variant] = values
    return result


def summarize(values: list[float]) -> dict[str, float]:
    """Median and p10/p90 in milliseconds."""
    ms = sorted(v * 1e3 for v in values)
    deciles = statistics.quantiles(ms, n=10, method="inclusive")
    return {"median_ms": statistics.median(ms), "p10_ms": deciles[0], "p90_ms": deciles[-1], "n": len(ms)}


# --------------------------------------------------------------------------------------------
# Targets and report
# --------------------------------------------------------------------------------------------


def ratios(latency: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """competitor_median / modelpress_median per ORT level (>= 1: modelpress at least as fast)."""
    out: dict[str, dict[str, float]] = {}
    for level, by_variant in latency.items():
        ours = by_variant.get("modelpress")
        if ours is None:
            continue
        out[level] = {
            v: s["median_ms"] / ours["median_ms"] for v, s in by_variant.items() if v != "modelpress"
        }
    return out


def paired_ratio(
    competitor_ms: list[float], ours_ms: list[float], resamples: int = 2000
) -> tuple[float, float, float]:
    """Median per-round ratio competitor / ours and its 5%-95% bootstrap interval.

    Runs are interleaved, so round ``i`` of both lists saw the same machine state: their
    ratio cancels slow drifts of the machine that a ratio of medians does not.
    """
    import numpy as np

    per_round = np.asarray(competitor_ms) / np.asarray(ours_ms)
    rng = np.random.default_rng(0)
    medians = np.median(per_round[rng.integers(0, len(per_round), (resamples, len(per_round)))], axis=1)
    return float(np.median(per_round)), float(np.quantile(medians, 0.05)), float(np.quantile(medians, 0.95))


def _compare(runs: dict[str, list[float]], competitors: list[str], ours: str, info: bool) -> dict | None:
    """The target row against the slowest-for-us competitor (lowest median ratio) among ``competitors``."""
    present = [c for c in competitors if c in runs and ours in runs]
    if not present:
        return None
    ratio = {c: statistics.median(runs[c]) / statistics.median(runs[ours]) for c in present}
    worst = min(present, key=ratio.__getitem__)
    paired, low, high = paired_ratio(runs[worst], runs[ours])
    return {
        "ratio": ratio[worst],
        "against": worst,
        "paired": paired,
        "ci90": [low, high],
        "pass": ratio[worst] >= 1.0,
        "info": info,
    }


def enable_all_signature(path: Path) -> str | None:
    """``graph_signature`` at ENABLE_ALL (see there)."""
    return graph_signature(path, "all")


def graph_signature(path: Path, level: str) -> str | None:
    """A digest of the graph onnxruntime itself runs at ENABLE_ALL (``optimized_model_filepath``).

    ``level`` is ``all`` (ENABLE_ALL) or ``disable`` (the file as it is, which onnxruntime runs
    unchanged). The multiset of nodes (op type, domain, attributes, the bytes of their constant inputs),
    names left out: two variants with one digest run the very same kernels on the same
    weights, so a latency difference between them is measurement noise.
    """
    import hashlib
    import tempfile

    import onnx_ir as ir
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if level == "all"
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        try:
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            model = ir.load(options.optimized_model_filepath)
        except Exception:  # a variant onnxruntime cannot optimize has no signature
            return None
    nodes = []
    for node in model.graph:
        attributes = sorted((name, repr(attr.value)) for name, attr in node.attributes.items())
        weights = [
            hashlib.sha256(value.const_value.tobytes()).hexdigest()[:16]
            if value is not None and value.const_value is not None
            else None
            for value in node.inputs
        ]
        nodes.append(repr((node.domain, node.op_type, attributes, weights)))
    # Sorted: two topological orders of the same nodes (a residual branch first or second) run
    # the same kernels on the same weights.
    return hashlib.sha256("\n".join(sorted(nodes)).encode()).hexdigest()[:16]


def evaluate_targets(model: str, entry: dict) -> dict[str, dict]:
    """Pass/fail of the three targets for one model, with the numbers that decided each.

    A latency target passes when the ratio of medians is >= 1.00. A failed one whose paired
    90% interval still reaches 1.00 is a tie within this machine's noise (``verdict``).
    Rows marked ``info`` are shown, not judged: the portable output at DISABLE_ALL, and the
    verified optimize time.
    """
    targets: dict[str, dict] = {}
    is_cnn = not model.startswith(NOT_CNN)
    for batch, by_level in entry["runs_ms"].items():
        disabled, enabled = by_level.get("disable", {}), by_level.get("all", {})
        rivals = [v for v in enabled if not v.startswith("modelpress")]
        graphs = entry.get("enable_all_graph", {})
        for ours in ("modelpress", "modelpress-ort"):
            row = _compare(enabled, rivals, ours, False)
            if row is not None:
                row["same_graph"] = graphs.get(ours) is not None and graphs.get(ours) == graphs.get(
                    row["against"]
                )
            rows = {f"{batch} {ours}@all vs best competitor@all": row}
            if is_cnn:  # judged on the onnxruntime target: see the module docstring
                name = f"{batch} {ours}@disable vs ort-offline@disable"
                info = ours == "modelpress"
                row = _compare(disabled, ["ort-basic", "ort-extended"], ours, info)
                plain = entry.get("disable_all_graph", {})
                if row is not None:
                    row["same_graph"] = plain.get(ours) is not None and plain.get(ours) == plain.get(
                        row["against"]
                    )
                rows[name] = row
            targets.update({k: v for k, v in rows.items() if v is not None})
    tools = entry["tools"]
    for ours in ("modelpress", "modelpress-ort"):
        if "error" in tools.get(ours, {}):
            targets[f"{ours} optimizes the model"] = {
                "ratio": 0.0,
                "against": tools[ours]["error"][:120],
                "pass": False,
                "info": ours != "modelpress",
            }
    if "seconds" in tools.get("modelpress", {}) and "seconds" in tools.get("onnxslim", {}):
        slim = tools["onnxslim"]["seconds"]
        for key, info in (("seconds_no_verify", False), ("seconds", True)):
            ratio = slim / tools["modelpress"][key]
            label = "no verify" if info is False else "verified"
            targets[f"optimize time vs onnxslim ({label})"] = {
                "ratio": ratio,
                "against": "onnxslim",
                "pass": ratio >= 1.0,
                "info": info,
            }
    return targets


def benchmark_model(model: str, source: Path, workdir: Path, settings: Settings) -> dict:
    """Produce the variants of one model, count their nodes and time them."""
    print(f"[{model}] optimizing with {', '.join(TOOLS)}", file=sys.stderr)
    paths, tools = produce_variants(model, source, workdir, settings.tool_repeats)
    entry: dict = {
        "source": str(source),
        "tools": tools,
        "nodes": {},
        "ops": {},
        "latency": {},
        "ratios": {},
        "runs_ms": {},
    }
    for variant, path in paths.items():
        entry["ops"][variant] = op_counts(path)
        entry["nodes"][variant] = sum(entry["ops"][variant].values())
    entry["enable_all_graph"] = {variant: enable_all_signature(path) for variant, path in paths.items()}
    entry["disable_all_graph"] = {
        variant: graph_signature(path, "disable") for variant, path in paths.items()
    }
    batches = settings.batches if batch_is_dynamic(source) else (1,)
    for batch in batches:
        print(
            f"[{model}] timing batch {batch}: {len(paths)} variants x {len(ORT_LEVELS)} levels",
            file=sys.stderr,
        )
        raw = measure(paths, batch, settings)
        entry["runs_ms"][f"b{batch}"] = {
            level: {v: [t * 1e3 for t in times] for v, times in by_v.items()} for level, by_v in raw.items()
        }
        latency = {level: {v: summarize(t) for v, t in by_v.items()} for level, by_v in raw.items()}
        entry["latency"][f"b{batch}"] = latency
        entry["ratios"][f"b{batch}"] = ratios(latency)
    entry["targets"] = evaluate_targets(model, entry)
    return entry


def markdown(results: dict) -> str:
    """The report: node counts and optimize cost, latency with ratios, then targets."""
    lines = [
        "# modelpress optimize vs onnxruntime offline and onnxslim",
        "",
        f"{results['machine']['cpu']} ({results['machine']['cores']} cores), onnxruntime "
        f"{results['machine']['onnxruntime']}, onnxslim {results['machine']['onnxslim']}; "
        f"{results['settings']['threads']} intra-op threads, {results['settings']['runs']} interleaved runs "
        f"after {results['settings']['warmup']} warm-up, spinning off; load average "
        f"{results['machine']['load_before']:.1f} before, {results['load_after']:.1f} after. "
        "Latency: median ms [p10-p90] "
        "(ratio = competitor / modelpress; >= 1.00: modelpress at least as fast).",
        "",
        "## Nodes and optimize cost",
        "",
        "| model | "
        + " | ".join(VARIANTS)
        + " | time s (slim / mp no-verify / mp verified) | peak RSS MB (slim / mp) |",
        "|---|" + "---:|" * (len(VARIANTS) + 2),
    ]
    for model, entry in results["models"].items():
        counts = [str(entry["nodes"].get(v, "fail")) for v in VARIANTS]
        slim, ours = entry["tools"].get("onnxslim", {}), entry["tools"].get("modelpress", {})
        nan = float("nan")
        cost = (
            f"{slim.get('seconds', nan):.2f} / {ours.get('seconds_no_verify', nan):.2f}"
            f" / {ours.get('seconds', nan):.2f}"
        )
        rss = f"{slim.get('peak_rss_mb', float('nan')):.0f} / {ours.get('peak_rss_mb', float('nan')):.0f}"
        lines.append(f"| {model} | " + " | ".join(counts) + f" | {cost} | {rss} |")
    lines += ["", "## Latency", ""]
    for model, entry in results["models"].items():
        lines += _latency_table(model, entry)
    lines += [
        "## Targets",
        "",
        "ratio: competitor / modelpress (medians), against the competitor that decides the target;"
        " paired: median of the per-round ratios (runs are interleaved), with its 90% bootstrap"
        " interval. FAIL~: ratio under 1.00 but the paired interval reaches 1.00 (a tie within noise)."
        " TIE=: ratio under 1.00, but the graph onnxruntime runs at that level is identical for both"
        " (same kernels, attributes and weights in the same order): the gap cannot be the graph.",
        "",
        "| model | target | against | ratio | paired [ci90] | result |",
        "|---|---|---|---:|---|---|",
    ]
    for model, entry in results["models"].items():
        for name, target in entry["targets"].items():
            ci = target.get("ci90")
            interval = f"{target['paired']:.3f} [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "-"
            lines.append(
                f"| {model} | {name} | {target['against']} | {target['ratio']:.3f} | {interval} | {_verdict(target)} |"
            )
    lines += ["", "## Per model", "", "| model | result | failed targets |", "|---|---|---|"]
    for model, entry in results["models"].items():
        failed = {n: _verdict(t) for n, t in entry["targets"].items() if not t["pass"] and not t["info"]}
        kinds = set(failed.values())
        result = "PASS" if not failed else ("FAIL~" if kinds <= {"FAIL~", "TIE="} else "FAIL")
        listed = "; ".join(f"{n} ({v})" for n, v in failed.items()) or "-"
        lines.append(f"| {model} | {result} | {listed} |")
    return "\n".join(lines) + "\n"


def _verdict(target: dict) -> str:
    if target["pass"]:
        verdict = "PASS"
    elif target.get("same_graph"):
        verdict = "TIE="  # onnxruntime runs the identical graph for both: the gap is noise
    elif target.get("ci90") and target["ci90"][1] >= 1.0:
        verdict = "FAIL~"
    else:
        verdict = "FAIL"
    return f"{verdict.lower()} (info)" if target["info"] else verdict


def _latency_table(model: str, entry: dict) -> list[str]:
    columns = [(b, level) for b in entry["latency"] for level in ORT_LEVELS]
    lines = [
        f"### {model}",
        "",
        "| variant | " + " | ".join(f"{b} @{lvl}" for b, lvl in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for variant in VARIANTS:
        cells = []
        for batch, level in columns:
            stats = entry["latency"][batch][level].get(variant)
            if stats is None:
                cells.append("-")
                continue
            ratio = entry["ratios"][batch].get(level, {}).get(variant)
            suffix = f" ({ratio:.2f})" if ratio is not None else ""
            cells.append(f"{stats['median_ms']:.2f} [{stats['p10_ms']:.2f}-{stats['p90_ms']:.2f}]{suffix}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def machine_info() -> dict:
    """Versions and CPU of this run."""
    from importlib.metadata import version

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": version("onnxruntime"),
        "onnxslim": version("onnxslim"),
        "modelpress": version("modelpress"),
        "load_before": os.getloadavg()[0],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        help=f"default: {', '.join(DEFAULT_MODELS)}; any other light_* model of the onnx wheel works too",
    )
    parser.add_argument("--runs", type=int, default=30, help="timed runs per variant and level (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per session first (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument(
        "--tool-repeats", type=int, default=3, help="optimize calls per tool; the median is kept (default 3)"
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {', '.join(QUICK_MODELS)}, 20 runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / "optimize.json",
        help="JSON; the .md goes next to it",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "modelpress-bench",
        help="exports and optimized variants (cached torch exports)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or list(QUICK_MODELS)
        args.runs, args.warmup = min(args.runs, 20), min(args.warmup, 3)
    args.models = args.models or list(DEFAULT_MODELS)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings(args.runs, args.warmup, args.threads, tuple(args.batches), args.tool_repeats)
    start = time.perf_counter()
    sources = source_paths(args.models, args.workdir)
    results = {"machine": machine_info(), "settings": dataclasses.asdict(settings), "models": {}}
    for model in args.models:
        results["models"][model] = benchmark_model(model, sources[model], args.workdir, settings)
    results["seconds"] = time.perf_counter() - start
    results["load_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    report = markdown(results)
    args.out.with_suffix(".md").write_text(report)
    print(report)
    print(
        f"wrote {args.out} and {args.out.with_suffix('.md')} in {results['seconds']:.0f} s", file=sys.stderr
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        _worker_main(sys.argv[2:])
    else:
        main()
