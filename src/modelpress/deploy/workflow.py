"""``deploy``: run a recipe's whole chain and measure every stage side by side.

The chain: source (a bundled example trained here, an ONNX file, or ``convert``) -> the recipe's
stages (optimize, quantize, protect) -> one package per stage, each with the recipe's
pre/post-processing -> one interleaved benchmark of all of them on the labelled eval data ->
the deliverable package (the last stage's, its manifest carrying the measured metrics) and a
report (``report.json``, ``report.html``).

Every stage verifies its own output as the stage's command does (optimize: numeric check
against its input; quantize: error against the float model; obfuscation: outputs within
1e-5; encryption: the package loads and runs), so a deploy that finishes has checked each step.
Data in the recipe are raw inputs, what the package receives: calibration rows go through the
pipeline's pre-processing before they reach the quantizer, and the benchmark feeds the eval rows
to each stage's package, pipeline included, so accuracy and latency are end to end.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import time
import typing
from pathlib import Path

import numpy as np

from modelpress.benchmark import BenchReport, benchmark_models
from modelpress.benchmark._inputs import load_data
from modelpress.benchmark.html import render_html
from modelpress.benchmark.quality import LABELS_KEY
from modelpress.deploy.recipe import Recipe
from modelpress.errors import UsageError
from modelpress.ir import io
from modelpress.ir.stats import op_histogram
from modelpress.package import build_package
from modelpress.pipeline import Pipeline

__all__ = ["DeployReport", "StageResult", "deploy"]

Say = collections.abc.Callable[[str], None]
BenchProgress = collections.abc.Callable[[str, int, int], None]
_CALIB_BATCH = 32


@dataclasses.dataclass
class StageResult:
    """One stage's model: where it is, what it is, and what the stage reported."""

    stage: str
    model_path: Path
    package_path: Path | None
    model_bytes: int
    nodes: int | None  # None for an encrypted model (its graph is not read without the key)
    seconds: float
    details: dict[str, typing.Any]

    def to_json(self) -> dict[str, typing.Any]:
        """The fields as a JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["model_path"] = str(self.model_path)
        data["package_path"] = None if self.package_path is None else str(self.package_path)
        return data


@dataclasses.dataclass
class DeployReport:
    """What ``deploy`` produced and measured."""

    name: str
    workdir: Path
    stages: list[StageResult]
    bench: BenchReport
    package: Path
    key_file: Path | None
    seconds: float = 0.0
    report_files: list[Path] = dataclasses.field(default_factory=list)
    sample_input: Path | None = None  # one raw eval row as .npy, to try the package with

    def summary(self) -> list[dict[str, typing.Any]]:
        """One row per stage: size, nodes, accuracy, agreement, p50 per batch, speed-up."""
        rows = []
        first = self.stages[0].stage
        threads = self.bench.settings["threads"][0]
        for stage in self.stages:
            model = next(m for m in self.bench.models if m.name == stage.stage)
            row: dict[str, typing.Any] = {
                "stage": stage.stage,
                "model": stage.model_path.name,
                "size_bytes": stage.model_bytes,
                "nodes": stage.nodes,
                "accuracy": None if model.quality is None else model.quality.accuracy,
                "agreement_vs_original": None if model.quality is None else model.quality.agreement_vs_first,
                "max_abs_diff_vs_original": None
                if model.quality is None
                else model.quality.max_abs_diff_vs_first,
            }
            for batch in self.bench.settings["batches"]:
                this, base = (
                    self.bench.find(stage.stage, batch, threads),
                    self.bench.find(first, batch, threads),
                )
                row[f"p50_ms_b{batch}"] = this.latency.p50_ms if this else None
                row[f"speedup_b{batch}"] = (
                    base.latency.p50_ms / this.latency.p50_ms if this and base else None
                )
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, typing.Any]:
        """The report as JSON: the summary, each stage's details, and the benchmark."""
        return {
            "schema": "modelpress.deploy/1",
            "name": self.name,
            "workdir": str(self.workdir),
            "package": str(self.package),
            "key_file": None if self.key_file is None else str(self.key_file),
            "sample_input": None if self.sample_input is None else str(self.sample_input),
            "seconds": self.seconds,
            "summary": self.summary(),
            "stages": [s.to_json() for s in self.stages],
            "bench": self.bench.to_json(),
        }


def deploy(
    recipe: Recipe,
    workdir: str | Path,
    *,
    say: Say | None = None,
    bench_progress: BenchProgress | None = None,
) -> DeployReport:
    """Run ``recipe`` into ``workdir`` (created; earlier deploy outputs there are replaced).

    Args:
        recipe: A validated recipe (``load_recipe``).
        workdir: Folder for every file deploy writes.
        say: Called with a line as each step starts.
        bench_progress: Progress callback of the final benchmark.

    Raises:
        ModelpressError: any stage's own errors (conversion, calibration, numeric mismatch,
            protection ...); the files of the stages before it stay in ``workdir``.
    """
    start = time.perf_counter()
    say = say or (lambda _: None)
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    pipeline = _pipeline(recipe)
    calib, eval_path = _data(recipe, root / "data", say)
    source, details, seconds = _source(recipe, root, say)
    stages = [_result("original", source, seconds, details)]
    steps: list[dict[str, typing.Any]] = []
    key, key_file = None, None
    for stage, options in recipe.stages.items():
        say(f"{stage} {_options_text(options)}")
        started = time.perf_counter()
        if stage == "optimize":
            path, details = _optimize(stages[-1].model_path, root, options)
            steps.append({"step": "optimize", **{k: v for k, v in options.items() if k != "verify"}})
        elif stage == "quantize":
            path, details = _quantize(stages[-1].model_path, root, options, calib, pipeline, eval_path)
            steps.append({"step": "quantize", **options})
        elif stage == "compress":
            path, details = _compress(stages[-1].model_path, root, options)
            steps.append({"step": "compress", **options})
        else:
            path, details, key, key_file = _protect(stages[-1].model_path, root, options)
            steps.append(
                {"step": "protect", **{k: v for k, v in options.items() if k not in ("key_file", "seed")}}
            )
        stages.append(_result(stage, path, time.perf_counter() - started, details))
    packages = root / "stages"
    for index, result in enumerate(stages):
        result.package_path = build_package(
            result.model_path,
            packages / result.stage,
            pipeline=pipeline,
            steps=steps[:index],
            overwrite=True,
        )
    settings = recipe.bench
    say(
        f"bench: {len(stages)} stage packages interleaved, batch {list(settings.batch)}, "
        f"threads {list(settings.threads)}, {settings.runs} runs"
        + (f", eval data {eval_path}" if eval_path else "")
    )
    bench = benchmark_models(
        [s.package_path for s in stages if s.package_path is not None],
        batches=settings.batch,
        threads=settings.threads,
        runs=settings.runs,
        warmup=settings.warmup,
        data=eval_path,
        key=key,
        progress=bench_progress,
    )
    report = DeployReport(recipe.name, root, stages, bench, root / "package", key_file)
    report.sample_input = _sample_input(eval_path, root / "data")
    final = report.summary()[-1]
    say(f"package -> {report.package}")
    build_package(
        stages[-1].model_path,
        report.package,
        pipeline=pipeline,
        steps=steps,
        metrics={k: v for k, v in final.items() if k not in ("stage", "model") and v is not None},
        overwrite=True,
    )
    report.seconds = time.perf_counter() - start
    report.report_files = _write_reports(report, root)
    return report


def _pipeline(recipe: Recipe) -> Pipeline | None:
    if recipe.pipeline is None:
        return _example_pipeline(recipe.model.get("example"))
    if isinstance(recipe.pipeline, dict):
        return Pipeline.from_dict(recipe.pipeline, where=f"{recipe.where}: pipeline")
    return Pipeline.from_yaml(recipe.pipeline)


def _example_pipeline(example: str | None) -> Pipeline | None:
    if example != "digits":
        return None
    from modelpress.examples.digits import digits_pipeline

    pipeline: Pipeline = digits_pipeline()  # annotated typing.Any in examples/digits.py
    return pipeline


def _sample_input(eval_path: Path | None, folder: Path) -> Path | None:
    """The first eval row of a one-input model as ``sample_input.npy`` (None without eval data)."""
    if eval_path is None:
        return None
    rows = {name: value for name, value in load_data(eval_path).items() if name != LABELS_KEY}
    if len(rows) != 1:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sample_input.npy"
    np.save(path, next(iter(rows.values()))[:1])
    return path


def _data(recipe: Recipe, folder: Path, say: Say) -> tuple[dict[str, np.ndarray] | None, Path | None]:
    """Raw calibration arrays (or None) and the eval data's path for the benchmark (or None)."""
    if recipe.data.get("example") == "digits":
        from modelpress.examples.digits import write_digits_data

        say(f"data: load_digits split -> {folder}")
        calib_path, eval_path = write_digits_data(folder)
        return load_data(calib_path), eval_path
    calib = load_data(recipe.data["calib"]) if recipe.data.get("calib") else None
    return calib, recipe.data.get("eval")


def _source(recipe: Recipe, root: Path, say: Say) -> tuple[Path, dict[str, typing.Any], float]:
    started = time.perf_counter()
    spec = recipe.model
    if "example" in spec:
        from modelpress.examples.digits import export_digits_cnn

        path = root / "model.onnx"
        say(f"model: train the digits CNN on load_digits (cached per seed) -> {path}")
        path = export_digits_cnn(path)
        return path, {"source": "example digits"}, time.perf_counter() - started
    if "path" in spec:
        say(f"model: {spec['path']}")
        io.load(spec["path"])  # validate before any work
        return Path(spec["path"]), {"source": str(spec["path"])}, time.perf_counter() - started
    from modelpress.convert import convert_file

    path = root / "model.onnx"
    say(f"convert {spec['convert']} -> {path}")
    report = convert_file(spec["convert"], path, example_inputs=spec["example_input"])
    return path, report.to_json(), time.perf_counter() - started


def _optimize(source: Path, root: Path, options: dict[str, typing.Any]) -> tuple[Path, dict[str, typing.Any]]:
    from modelpress.optimize import optimize_file

    path = root / "model.opt.onnx"
    passes = options.get("passes")
    report = optimize_file(
        source,
        path,
        verify=bool(options.get("verify", True)),
        level=options.get("level", "all"),
        target=options.get("target", "onnx"),
        passes=passes.split(",") if isinstance(passes, str) else passes,
    )
    return path, report.to_json()


def _compress(source: Path, root: Path, options: dict[str, typing.Any]) -> tuple[Path, dict[str, typing.Any]]:
    from modelpress.compress import compress_file

    path = root / "model.mpz"
    report = compress_file(source, path, **options)
    return path, report.to_json()


def _quantize(
    source: Path,
    root: Path,
    options: dict[str, typing.Any],
    calib: dict[str, np.ndarray] | None,
    pipeline: Pipeline | None,
    eval_path: Path | None,
) -> tuple[Path, dict[str, typing.Any]]:
    from modelpress.quantize import QuantSpec, quantize_file
    from modelpress.quantize.spec import default_activation_dtype

    spec_options = {k: v for k, v in options.items() if k not in ("num_samples", "max_drop")}
    spec_options.setdefault("activation_dtype", default_activation_dtype())
    if "exclude_nodes" in spec_options:
        spec_options["exclude_nodes"] = frozenset(spec_options["exclude_nodes"])
    try:
        spec = QuantSpec(**spec_options)
    except TypeError as e:
        raise UsageError(f"stages.quantize: {e}") from e
    samples = None
    if calib is not None:
        samples = _calibration_samples(calib, pipeline, options.get("num_samples"))
    suffix = {"static": "int8", "dynamic": "dyn8", "weight-only": "w8", "fp16": "fp16"}.get(
        spec.mode, spec.mode
    )
    path = root / f"model.{suffix}.onnx"
    accuracy: dict[str, typing.Any] = {}
    if options.get("max_drop") is not None and eval_path is not None:
        accuracy = {
            "eval_dir": _model_ready_eval(load_data(eval_path), pipeline, root / "data" / "eval_model"),
            "max_drop": float(options["max_drop"]),
        }
    report = quantize_file(source, path, spec, samples=samples, **accuracy)
    return path, report.to_json()


def _model_ready_eval(raw: dict[str, np.ndarray], pipeline: Pipeline | None, folder: Path) -> Path:
    """The eval rows, pre-processed into model inputs, with their labels, as ``.npz`` files.

    The accuracy-aware quantizer feeds the model directly, without the pipeline. It tunes on
    these rows, so the benchmark's accuracy of that stage is measured on the data it was tuned
    on (the README says so).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.npz"):
        stale.unlink()
    labels = raw.get(LABELS_KEY)
    rows = {name: np.asarray(value) for name, value in raw.items() if name != LABELS_KEY}
    total = min(len(v) for v in rows.values())
    for index, start in enumerate(range(0, total, 64)):
        chunk = {name: value[start : start + 64] for name, value in rows.items()}
        feeds = pipeline.preprocess(chunk) if pipeline is not None else chunk
        extra = {LABELS_KEY: np.asarray(labels)[start : start + 64]} if labels is not None else {}
        np.savez(folder / f"eval_{index:04d}.npz", **feeds, **extra)  # type: ignore[arg-type]  # numpy stubs: names typed as bool
    return folder


def _calibration_samples(
    raw: dict[str, np.ndarray], pipeline: Pipeline | None, limit: int | None
) -> list[dict[str, np.ndarray]]:
    """Raw calibration rows -> pre-processed feeds in batches of ``_CALIB_BATCH`` rows."""
    rows = {name: np.asarray(value) for name, value in raw.items() if name != LABELS_KEY}
    total = min(len(v) for v in rows.values())
    if limit is not None:
        total = min(total, int(limit))
    samples = []
    for start in range(0, total, _CALIB_BATCH):
        batch = {name: value[start : min(start + _CALIB_BATCH, total)] for name, value in rows.items()}
        samples.append(pipeline.preprocess(batch) if pipeline is not None else batch)
    return samples


def _protect(
    source: Path, root: Path, options: dict[str, typing.Any]
) -> tuple[Path, dict[str, typing.Any], typing.Any, Path | None]:
    """Obfuscate and/or encrypt; an opaque obfuscation writes its operator library beside the model."""
    from modelpress.protect import KeySource, encrypt_model, generate_key, key_id, write_key_file

    details: dict[str, typing.Any] = {}
    encrypt, opaque = bool(options.get("encrypt", True)), bool(options.get("opaque", False))
    key, key_file = None, None
    if encrypt or opaque:
        key_file = options.get("key_file")
        if key_file is None:
            key_file = root / "deploy.key"
            if not key_file.exists():
                write_key_file(key_file, generate_key())
        key = KeySource.from_file(key_file)
    current = source
    if options.get("obfuscate") or opaque:
        from modelpress.protect.obfuscate import obfuscate_model, verify_obfuscation

        original = io.load(current)
        model, report = obfuscate_model(
            io.load(current),
            seed=int(options.get("seed", 0)),
            strength=options.get("obfuscate") or "high",
            opaque=opaque,
        )
        verify_obfuscation(original, model).check(1e-5, what="the obfuscated model")
        details["obfuscate"] = report.to_json()
        if opaque:
            from modelpress.protect.obfuscate.library import write_obfuscated

            name = "model.obf.mpe" if encrypt else "model.obf.onnx"
            written = write_obfuscated(model, root / name, key, encrypt=encrypt)
            details["library"] = {"file": written.library.name, "bytes": written.library_bytes}
            return written.model, details, key, Path(key_file) if key_file else None
        current = root / "model.obf.onnx"
        io.save(model, current)
    if not encrypt:
        return current, details, None, None
    assert key is not None and key_file is not None  # both set above when encrypting
    path = root / "model.mpe"
    header = encrypt_model(current, path, key)
    details["encrypt"] = {
        "key_id": key_id(key),
        "chunks": header.chunk_count,
        "plaintext_bytes": header.plaintext_bytes,
    }
    return path, details, key, Path(key_file)


def _result(stage: str, path: Path, seconds: float, details: dict[str, typing.Any]) -> StageResult:
    from modelpress.compress import is_compressed, load_compressed_model
    from modelpress.protect.encrypt import is_encrypted

    if is_encrypted(path):
        nodes = None
    else:
        model = load_compressed_model(path) if is_compressed(path) else io.load(path)
        nodes = sum(op_histogram(model).values())
    return StageResult(stage, path, None, path.stat().st_size, nodes, seconds, details)


def _options_text(options: dict[str, typing.Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items() if k != "key_file") or "(defaults)"


def _write_reports(report: DeployReport, root: Path) -> list[Path]:
    """``report.json`` and ``report.html`` in ``root``, each written whole then renamed."""
    files = []
    for name, text in (
        ("report.json", json.dumps(report.to_json(), indent=2, default=str) + "\n"),
        (
            "report.html",
            render_html(
                report.bench, title=f"modelpress deploy: {report.name}", preface=_summary_html(report)
            ),
        ),
    ):
        path = root / name
        staged = root / f".{name}.tmp"
        try:
            staged.write_text(text, encoding="utf-8")
            staged.replace(path)
        except OSError as e:
            raise UsageError(f"{path}: cannot write the report: {e}") from e
        files.append(path)
    return files


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{value:.2%}"


def _summary_html(report: DeployReport) -> list[tuple[str, list[str], list[list[typing.Any]]]]:
    rows = report.summary()
    batches = report.bench.settings["batches"]
    header = ["stage", "model", "size (KiB)", "nodes", "top-1 accuracy", "agreement vs original"]
    header += [f"p50 b{b} (ms)" for b in batches] + [f"speed-up b{b}" for b in batches]
    body = [
        [
            r["stage"],
            r["model"],
            r["size_bytes"] / 1024,
            r["nodes"],
            _percent(r["accuracy"]),
            _percent(r["agreement_vs_original"]),
        ]
        + [r[f"p50_ms_b{b}"] for b in batches]
        + [r[f"speedup_b{b}"] for b in batches]
        for r in rows
    ]
    return [("Stages side by side (end to end: pre-processing + model + post-processing)", header, body)]
