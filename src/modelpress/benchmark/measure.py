"""Measure models side by side on onnxruntime: latency, throughput, load time, size, peak RSS.

For each thread count, every model gets its own session (through ``create_session``, so thread
spinning is off: an idle session cannot steal cores from the one being timed). Each model is
then loaded, checked and warmed up at every batch size one after the other, which is also when
its peak RSS is taken. The timed runs are interleaved round-robin across the models, the
starting model rotating every round, so that noise (frequency scaling, other processes)
hits all of them alike rather than the one that happened to run at that moment.

A run is end to end: a package's pre-processing, the inference and its post-processing, each
timed apart with ``time.perf_counter``; a bare model spends it all in inference.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib.metadata
import os
import platform
import time
import typing
from pathlib import Path

import numpy as np
import onnx_ir as ir

from modelpress.benchmark._inputs import input_names, load_data, make_inputs
from modelpress.benchmark.quality import LABELS_KEY, Quality, collect_outputs, compare_quality
from modelpress.benchmark.report import STAGES, BenchReport, Measurement, ModelResult
from modelpress.benchmark.stats import latency_stats
from modelpress.compress.mpz import is_compressed, load_compressed_model
from modelpress.errors import ModelLoadError, ProtectionError, UsageError
from modelpress.ir import io
from modelpress.package import Package, load_package
from modelpress.protect.encrypt import is_encrypted, load_encrypted
from modelpress.protect.keys import Key
from modelpress.runtime.run import open_model_session
from modelpress.runtime.session import OptLevel, run_session

__all__ = ["RSS_METHOD", "ProgressFn", "benchmark_models"]

# progress(description, runs done, runs in all): called after every run, timed or not.
ProgressFn = collections.abc.Callable[[str, int, int], None]
RSS_METHOD = (
    "rise of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs) over its "
    "resident set (VmRSS) just before the model's session is created, while the session is created "
    "and warmed up at every batch size; the largest rise over thread counts"
)
Session = typing.Any  # an onnxruntime.InferenceSession: only runtime/ imports onnxruntime


@dataclasses.dataclass
class _Target:
    """One model to measure, opened and validated once."""

    name: str
    path: Path
    kind: str
    model: ir.Model
    model_bytes: int
    package: Package | None

    def open_session(self, key: Key | None, level: OptLevel, threads: int) -> Session:
        if self.package is not None:
            return self.package.open_session(key, level=level, threads=threads)
        return open_model_session(self.path, key, level=level, threads=threads)

    def run(self, session: Session, raw: dict[str, np.ndarray]) -> tuple[dict[str, object], list[float]]:
        """One end-to-end run: the raw model outputs and the seconds spent in each stage."""
        pipeline = self.package.pipeline if self.package is not None else None
        if pipeline is None:  # nothing to split: no clock reads around empty stages
            start = time.perf_counter()
            outputs = run_session(session, raw)
            return outputs, [0.0, time.perf_counter() - start, 0.0]
        start = time.perf_counter()
        feeds = pipeline.preprocess(raw)
        preprocessed = time.perf_counter()
        outputs = run_session(session, feeds)
        inferred = time.perf_counter()
        pipeline.postprocess({name: np.asarray(value) for name, value in outputs.items()})
        done = time.perf_counter()
        return outputs, [preprocessed - start, inferred - preprocessed, done - inferred]


def benchmark_models(
    paths: collections.abc.Sequence[str | os.PathLike[str]],
    *,
    batches: collections.abc.Sequence[int] = (1,),
    threads: collections.abc.Sequence[int] = (1,),
    runs: int = 50,
    warmup: int = 5,
    data: str | os.PathLike[str] | None = None,
    key: Key | None = None,
    level: OptLevel = "all",
    progress: ProgressFn | None = None,
) -> BenchReport:
    """Benchmark models or packages side by side; the first one is the baseline of the ratios.

    Args:
        paths: Model files (``.onnx``, encrypted ``.mpe``) or package folders.
        batches: Batch sizes; each binds the leading dynamic dim of every input.
        threads: onnxruntime intra-op thread counts (one session per model and count).
        runs: Timed runs per model, batch size and thread count.
        warmup: Untimed runs before them (after one untimed check run).
        data: A folder of ``.npy``/``.npz`` inputs, or one ``.npz``; random feeds when None.
        key: The key of encrypted models (one key for all of them).
        level: onnxruntime graph optimization level.
        progress: Called after every run with a description and the runs done and in all.

    Raises:
        UsageError: bad settings, unusable data, or inputs a package pipeline cannot process.
        ModelLoadError: a model is missing or unreadable. ProtectionError: a missing or wrong
            key. PackageError: a package fails its manifest check.
    """
    _check_settings(paths, batches, threads, runs, warmup)
    dataset = load_data(data) if data is not None else None
    targets = _open_targets(paths, key)
    total = len(threads) * len(batches) * len(targets) * (runs + warmup + 1)
    counter = _Counter(total, progress)
    load_ms: dict[str, list[float]] = {t.name: [] for t in targets}
    peak_rss: dict[str, float | None] = {t.name: None for t in targets}
    reference: dict[tuple[str, int], dict[str, object]] = {}
    evaluated: dict[str, dict[str, np.ndarray]] = {}
    measurements = []
    for n_threads in threads:
        sessions, inputs = {}, {}
        for target in targets:
            window = _RssWindow()
            start = time.perf_counter()
            sessions[target.name] = target.open_session(key, level, n_threads)
            load_ms[target.name].append((time.perf_counter() - start) * 1e3)
            for batch in batches:
                raw = make_inputs(target.model, batch, dataset, where=target.name)
                inputs[target.name, batch] = raw
                outputs = _warm_up(target, sessions[target.name], raw, warmup, counter)
                reference.setdefault((target.name, batch), outputs)
            peak_rss[target.name] = _max_or_none(peak_rss[target.name], window.rise_mb())
            if dataset is not None and target.name not in evaluated:
                evaluated[target.name] = _evaluate(target, sessions[target.name], dataset, max(batches))
        for batch in batches:
            times = _timed_rounds(targets, sessions, inputs, batch, runs, counter, f"b{batch} t{n_threads}")
            for target in targets:
                diff = _max_abs_diff(reference[target.name, batch], reference[targets[0].name, batch])
                stages = np.asarray(times[target.name])  # runs x STAGES, seconds
                measurements.append(
                    Measurement(
                        model=target.name,
                        batch=batch,
                        threads=n_threads,
                        latency=latency_stats(stages.sum(axis=1).tolist(), batch),
                        stages_ms={
                            s: float(v) * 1e3 for s, v in zip(STAGES, stages.mean(axis=0), strict=True)
                        },
                        max_abs_diff_vs_first=None if target is targets[0] else diff,
                    )
                )
        del sessions  # free this thread count's sessions before the next ones load
    models = [
        ModelResult(
            name=t.name,
            path=str(t.path),
            kind=t.kind,
            model_bytes=t.model_bytes,
            load_ms=float(np.mean(load_ms[t.name])),
            peak_rss_mb=peak_rss[t.name],
            pipeline=t.package is not None and t.package.pipeline is not None,
            quality=_quality(evaluated, t.name, targets[0].name, dataset),
        )
        for t in targets
    ]
    settings = {
        "batches": list(batches),
        "threads": list(threads),
        "runs": runs,
        "warmup": warmup,
        "level": level,
        "data": None if data is None else str(data),
        "interleaved": "round-robin",
        "spinning": False,
    }
    return BenchReport(models, measurements, settings, _environment(), RSS_METHOD)


def _evaluate(
    target: _Target, session: Session, dataset: dict[str, np.ndarray], chunk: int
) -> dict[str, np.ndarray]:
    names = input_names(target.model)
    missing = [name for name in names if name not in dataset]
    if missing:
        raise UsageError(f"{target.name}: --data has no array for input(s) {', '.join(missing)}")
    return collect_outputs(lambda feeds: target.run(session, feeds)[0], dataset, names, chunk)


def _quality(
    evaluated: dict[str, dict[str, np.ndarray]], name: str, first: str, dataset: dict[str, np.ndarray] | None
) -> Quality | None:
    if name not in evaluated or dataset is None:
        return None
    baseline = None if name == first else evaluated[first]
    return compare_quality(evaluated[name], baseline, dataset.get(LABELS_KEY), where=name)


class _Counter:
    """Counts runs and reports them to the progress callback."""

    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.total, self.done, self.progress = total, 0, progress

    def step(self, description: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(description, self.done, self.total)


def _warm_up(
    target: _Target, session: Session, raw: dict[str, np.ndarray], warmup: int, counter: _Counter
) -> dict[str, object]:
    """One check run (its outputs are returned for the comparison), then ``warmup`` more."""
    try:
        outputs, _ = target.run(session, raw)
    except UsageError as e:
        raise UsageError(
            f"{target.name}: {e}; random arrays may not suit its pre-processing: give raw inputs with --data"
        ) from e
    counter.step(f"warm-up {target.name}")
    for _ in range(warmup):
        target.run(session, raw)
        counter.step(f"warm-up {target.name}")
    return outputs


def _timed_rounds(
    targets: list[_Target],
    sessions: dict[str, Session],
    inputs: dict[tuple[str, int], dict[str, np.ndarray]],
    batch: int,
    runs: int,
    counter: _Counter,
    label: str,
) -> dict[str, list[list[float]]]:
    """``runs`` rounds; each runs every model once, starting one model later than the last round."""
    times: dict[str, list[list[float]]] = {t.name: [] for t in targets}
    for round_index in range(runs):
        shift = round_index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            _, stages = target.run(sessions[target.name], inputs[target.name, batch])
            times[target.name].append(stages)
            counter.step(f"{label} {target.name}")
    return times


def _open_targets(paths: collections.abc.Sequence[str | os.PathLike[str]], key: Key | None) -> list[_Target]:
    targets: list[_Target] = []
    for raw_path in paths:
        path = Path(raw_path)
        name = path.name or str(path)
        repeats = sum(1 for t in targets if t.path.name == path.name)
        targets.append(_open_target(path, f"{name}#{repeats + 1}" if repeats else name, key))
    return targets


def _open_target(path: Path, name: str, key: Key | None) -> _Target:
    if path.is_dir():
        package = load_package(path)
        model_bytes = package.read_model()
        if package.is_encrypted:
            model = load_encrypted(model_bytes, _need_key(key, path))
        elif package.manifest.model.endswith(".mpz"):
            model = load_compressed_model(model_bytes)
        else:
            model = io.load(model_bytes)
        return _Target(name, path, "package", model, len(model_bytes), package)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file or package folder")
    if is_encrypted(path):
        return _Target(
            name, path, "mpe", load_encrypted(path, _need_key(key, path)), path.stat().st_size, None
        )
    if is_compressed(path):
        return _Target(name, path, "mpz", load_compressed_model(path), path.stat().st_size, None)
    return _Target(name, path, "onnx", io.load(path), path.stat().st_size, None)


def _need_key(key: Key | None, path: Path) -> Key:
    if key is None:
        raise ProtectionError(f"{path}: the model is encrypted (.mpe); give its key with --key-file")
    return key


def _check_settings(
    paths: collections.abc.Sequence[object],
    batches: collections.abc.Sequence[int],
    threads: collections.abc.Sequence[int],
    runs: int,
    warmup: int,
) -> None:
    if not paths:
        raise UsageError("no model to benchmark; give one or more model files or package folders")
    for label, sizes in (("batch size", batches), ("thread count", threads)):
        if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise UsageError(f"{label}s {list(sizes)}: give one or more integers >= 1")
    if runs < 1 or warmup < 0:
        raise UsageError(f"runs={runs}, warmup={warmup}: give runs >= 1 and warmup >= 0")


def _max_abs_diff(outputs: dict[str, object], baseline: dict[str, object]) -> float | None:
    """Largest |a - b| over the outputs both have, by name, with equal shapes and numeric dtypes."""
    diffs = []
    for name, value in outputs.items():
        other = baseline.get(name)
        a, b = np.asarray(value), np.asarray(other)
        if other is None or a.shape != b.shape or a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
            continue
        diffs.append(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0)))
    return max(diffs) if diffs else None


def _max_or_none(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class _RssWindow:
    """The rise of this process's peak RSS from now on (Linux only; None elsewhere)."""

    def __init__(self) -> None:
        try:
            # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0, proc(5)).
            Path("/proc/self/clear_refs").write_text("5")
            self.base_kb = _status_kb("VmRSS")
        except OSError:
            self.base_kb = None

    def rise_mb(self) -> float | None:
        peak_kb = _status_kb("VmHWM")
        if self.base_kb is None or peak_kb is None:
            return None
        return max(peak_kb - self.base_kb, 0) / 1024


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _environment() -> dict[str, object]:
    try:
        ort_version = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:  # e.g. onnxruntime-gpu
        ort_version = None
    return {
        "python": platform.python_version(),
        "onnxruntime": ort_version,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
