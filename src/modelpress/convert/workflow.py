"""``convert``: a PyTorch or scikit-learn model to ONNX, verified against its framework, written atomically.

Steps: resolve the source (``modelpress.convert.source``), export it into a temporary folder,
load the export as untrusted ONNX (``modelpress.ir.io.load``: checker, size caps), then save it
to the destination through ``io.save``, whose ``before_commit`` hook runs the staged file on
onnxruntime (graph optimizations off) and compares every output with the source framework's on
the same example inputs:

* two seeded random batches at the example shape, and, with a dynamic batch, one more at
  another batch size (2, or 3 when the example batch is 2), which catches shapes the tracer
  froze from the example;
* PyTorch outputs and scikit-learn regression/transform outputs: max error relative to the
  output's scale <= ``rtol`` (default 1e-4; integer outputs exactly);
* scikit-learn classifiers: labels equal (a row where the source's two best probabilities tie
  within the tolerance may differ), probabilities within ``PROBABILITY_ATOL`` (1e-5) absolute.

When a check fails, ``NumericMismatchError`` is raised and nothing is written. An ``.onnx``
source is only validated and re-saved: there is no other framework to compare with.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import tempfile
import time
import typing
from pathlib import Path

import numpy as np
import onnx_ir as ir

from modelpress.convert import _verify, sklearn_export, torch_export
from modelpress.convert.source import InputSpec, Source, example_feeds, load_source, parse_input_spec
from modelpress.errors import ConversionError, InvalidModelError, ModelLoadError, UsageError
from modelpress.ir import io
from modelpress.ir.stats import ValueSummary, model_stats

__all__ = ["DEFAULT_RTOL", "PROBABILITY_ATOL", "ConversionReport", "convert_file", "convert_source"]

DEFAULT_RTOL = 1e-4
# Class probabilities live in [0, 1]: an absolute bound is the meaningful one. float32
# evaluation of a float64-fitted model stays well within it.
PROBABILITY_ATOL = 1e-5

# (what ran, feeds, the source's outputs by graph output name; None = not comparable)
_Reference = tuple[str, dict[str, np.ndarray], dict[str, "np.ndarray | None"]]


@dataclasses.dataclass
class ConversionReport:
    """What convert did: the source, the model's interface and ops, the numeric checks."""

    source: str
    kind: str
    framework: str
    output_path: str
    inputs: list[ValueSummary]
    outputs: list[ValueSummary]
    ops: dict[str, int]
    checks: list[_verify.OutputCheck]
    file_bytes: int
    seconds: float
    dynamic_batch: bool

    @property
    def nodes(self) -> int:
        """Node count of the converted model."""
        return sum(self.ops.values())

    def to_json(self) -> dict[str, typing.Any]:
        """A JSON-serializable summary (what ``--json`` prints)."""
        data = dataclasses.asdict(self)
        data["nodes"] = self.nodes
        data["checks"] = [check.to_json() for check in self.checks]
        return data


@dataclasses.dataclass
class _Converted:
    model: ir.Model
    references: list[_Reference]
    rules: dict[str, dict[str, typing.Any]]  # output -> keyword arguments of the check
    framework: str


def convert_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    example_inputs: collections.abc.Sequence[str | InputSpec] = (),
    trust_pickle: bool = False,
    dynamic_batch: bool = True,
    output_names: collections.abc.Sequence[str] | None = None,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
) -> ConversionReport:
    """Convert ``source`` to ONNX at ``output``, verified on onnxruntime against the source.

    Args:
        source: ``package.module:factory`` (returning an ``nn.Module`` or a fitted estimator),
            a saved PyTorch module (``.pt``/``.pth``), a joblib/pickle estimator, or ``.onnx``.
        output: Destination ``.onnx`` path; written only when every check passed.
        example_inputs: ``NAME=1x3x224x224[:float32]`` specs (or ``InputSpec``), one per
            ``forward()`` argument in order; optional for scikit-learn (one matrix).
        trust_pickle: Allow unpickling a saved file, which runs code from it.
        dynamic_batch: Make axis 0 symbolic (PyTorch; scikit-learn models always have one).
        output_names: Graph output names (default from the model).
        rtol: Largest accepted error relative to each output's scale.
        seed: Seed of the random example inputs.

    Raises:
        UsageError: bad source, options or example inputs.
        ConversionError: the exporter refused the model (unsupported operator named) or the
            exported graph does not run on onnxruntime.
        NumericMismatchError: an output differs from the source beyond its tolerance.
        ModelLoadError, ModelSaveError: the export is not valid ONNX, or writing failed.
    """
    start = time.perf_counter()
    specs = _parse_specs(example_inputs)
    if rtol < 0:
        raise UsageError(f"rtol {rtol} is negative; give a tolerance >= 0")
    src = load_source(source, trust_pickle=trust_pickle)
    return convert_source(
        src,
        output,
        example_inputs=specs,
        dynamic_batch=dynamic_batch,
        output_names=output_names,
        rtol=rtol,
        seed=seed,
        started=start,
    )


def convert_source(
    src: Source,
    output: str | os.PathLike[str],
    *,
    example_inputs: collections.abc.Sequence[str | InputSpec] = (),
    dynamic_batch: bool = True,
    output_names: collections.abc.Sequence[str] | None = None,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
    started: float | None = None,
) -> ConversionReport:
    """``convert_file`` for a source already in memory (``load_source``, or a live module).

    For callers that change a model before exporting it (``compress.retrain`` retrains a
    torch module): the same export, checks against the source and atomic write.

    Args:
        src: The resolved source (``Source(kind, obj, description)``).
        output: Destination ``.onnx`` path; written only when every check passed.
        example_inputs: As ``convert_file``.
        dynamic_batch: As ``convert_file``.
        output_names: As ``convert_file``.
        rtol: As ``convert_file``.
        seed: As ``convert_file``.
        started: ``time.perf_counter()`` when the work began (default: now), for the report.

    Raises:
        As ``convert_file``, except the errors of reading a source.
    """
    start = time.perf_counter() if started is None else started
    specs = _parse_specs(example_inputs)
    if rtol < 0:
        raise UsageError(f"rtol {rtol} is negative; give a tolerance >= 0")
    with tempfile.TemporaryDirectory(prefix="modelpress-convert-") as tmp:
        if src.kind == "torch":
            converted = _convert_torch(src, specs, Path(tmp), dynamic_batch, output_names, rtol, seed)
        elif src.kind == "sklearn":
            converted = _convert_sklearn(src, specs, output_names, rtol, seed)
        else:
            converted = _Converted(src.obj, [], {}, "onnx")
        checks: list[_verify.OutputCheck] = []

        def verify(staged: Path) -> None:
            checks.extend(_run_checks(staged, converted))
            _verify.raise_on_failure(checks, source=src.description, framework=converted.framework)

        path = io.save(converted.model, output, before_commit=verify)
    stats = model_stats(converted.model)
    return ConversionReport(
        source=src.description,
        kind=src.kind,
        framework=converted.framework,
        output_path=str(path),
        inputs=stats.inputs,
        outputs=stats.outputs,
        ops=stats.ops,
        checks=checks,
        file_bytes=path.stat().st_size,
        seconds=time.perf_counter() - start,
        dynamic_batch=dynamic_batch if src.kind == "torch" else src.kind == "sklearn",
    )


def _parse_specs(example_inputs: collections.abc.Sequence[str | InputSpec]) -> list[InputSpec]:
    specs = [s if isinstance(s, InputSpec) else parse_input_spec(s) for s in example_inputs]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"example input(s) {', '.join(duplicates)} given more than once")
    return specs


def _other_batch(specs: collections.abc.Sequence[InputSpec]) -> int:
    """The batch size of the extra check: 2, or 3 when the example batch already is 2."""
    batches = {s.shape[0] for s in specs if s.shape}
    return 3 if batches == {2} else 2


def _batch_label(seed: int, specs: collections.abc.Sequence[InputSpec]) -> str:
    batches = sorted({s.shape[0] for s in specs if s.shape})
    return f"seed {seed}, batch {'/'.join(map(str, batches)) or '-'}"


def _convert_torch(
    src: Source,
    specs: list[InputSpec],
    tmp: Path,
    dynamic_batch: bool,
    output_names: collections.abc.Sequence[str] | None,
    rtol: float,
    seed: int,
) -> _Converted:
    import torch

    if not specs:
        raise UsageError(
            f"{src.description}: a PyTorch module needs its example inputs: give --example-input "
            "NAME=1x3x224x224[:float32] once per forward() argument, in order"
        )
    feeds = example_feeds(specs, seed)
    default_names, outputs = torch_export.run_torch(src.obj, feeds)
    names = _output_names(output_names, default_names, src.description)
    path = torch_export.export_torch(
        src.obj, specs, feeds, tmp / "export.onnx", output_names=names, dynamic_batch=dynamic_batch
    )
    model = io.load(path)
    references: list[_Reference] = [
        (_batch_label(seed, specs), feeds, dict(zip(names, outputs, strict=True)))
    ]
    variants = [(seed + 1, specs)]
    if dynamic_batch and any(s.shape for s in specs):
        batch = _other_batch(specs)
        variants.append((seed + 2, [s.with_batch(batch) for s in specs]))
    for variant_seed, variant_specs in variants:
        variant_feeds = example_feeds(variant_specs, variant_seed)
        try:
            _, variant_outputs = torch_export.run_torch(src.obj, variant_feeds)
        except UsageError as e:
            raise UsageError(
                f"{src.description}: {e}; the module itself does not accept this batch size: convert with "
                "a static batch (--static-batch)"
            ) from e
        label = _batch_label(variant_seed, variant_specs)
        references.append((label, variant_feeds, dict(zip(names, variant_outputs, strict=True))))
    rules = {name: {"rtol": rtol} for name in names}
    return _Converted(model, references, rules, f"torch {torch.__version__}")


def _output_names(given: collections.abc.Sequence[str] | None, default: list[str], where: str) -> list[str]:
    if not given:
        return default
    if len(given) != len(default) or len(set(given)) != len(given):
        raise UsageError(
            f"{where}: {len(given)} output name(s) given ({', '.join(given)}) but the model returns "
            f"{len(default)} tensor(s); give one distinct name per output"
        )
    return list(given)


def _convert_sklearn(
    src: Source,
    specs: list[InputSpec],
    output_names: collections.abc.Sequence[str] | None,
    rtol: float,
    seed: int,
) -> _Converted:
    import skl2onnx
    import sklearn

    if len(specs) > 1:
        raise UsageError(f"{src.description}: a scikit-learn model takes one input; {len(specs)} were given")
    estimator = src.obj
    spec = sklearn_export.input_spec_for(estimator, specs[0] if specs else None, src.description)
    model = io.load(sklearn_export.export_sklearn(estimator, spec, src.description))
    default = [value.name or f"output_{i}" for i, value in enumerate(model.graph.outputs)]
    names = _output_names(output_names, default, src.description)
    for value, name in zip(model.graph.outputs, names, strict=True):
        value.name = name
    references: list[_Reference] = []
    for variant_seed, variant in (
        (seed, spec),
        (seed + 1, spec),
        (seed + 2, spec.with_batch(_other_batch([spec]))),
    ):
        feeds = example_feeds([variant], variant_seed)
        outputs = sklearn_export.run_sklearn(estimator, feeds[spec.name], len(names))
        references.append(
            (_batch_label(variant_seed, [variant]), feeds, dict(zip(names, outputs, strict=True)))
        )
    rules: dict[str, dict[str, typing.Any]] = {name: {"rtol": rtol} for name in names}
    if sklearn_export.is_classifier(estimator) and len(names) >= 2:
        has_proba = hasattr(estimator, "predict_proba")
        rules[names[0]] = {"labels": True, "scores_from": names[1] if has_proba else None}
        if has_proba:
            rules[names[1]] = {"atol": PROBABILITY_ATOL}
    framework = f"scikit-learn {sklearn.__version__} (skl2onnx {skl2onnx.__version__})"
    return _Converted(model, references, rules, framework)


def _run_checks(staged: Path, converted: _Converted) -> list[_verify.OutputCheck]:
    from modelpress.runtime.session import create_session, run_session

    if not converted.references:
        return []
    try:
        session = create_session(staged)
    except ModelLoadError as e:
        raise ConversionError(f"onnxruntime cannot load the converted model: {e}") from e
    checks = []
    for label, feeds, expected in converted.references:
        try:
            actual = run_session(session, feeds)
        except InvalidModelError as e:
            raise ConversionError(
                f"the converted model fails on onnxruntime at {label}: {e}. If only the extra batch "
                "size fails, forward() turned the example's batch size into a constant (e.g. "
                "int(x.shape[0])): keep sizes symbolic (x.shape[0], x.flatten(1)) or convert with "
                "--static-batch"
            ) from e
        for name, reference in expected.items():
            checks.append(_check_one(name, label, reference, actual[name], converted.rules[name], expected))
    return checks


def _check_one(
    name: str,
    label: str,
    reference: np.ndarray | None,
    actual: object,
    rule: dict[str, typing.Any],
    expected: dict[str, np.ndarray | None],
) -> _verify.OutputCheck:
    if reference is None:
        return _verify.OutputCheck(
            name, label, 0.0, 0.0, None, "not compared", True, "no matching source method"
        )
    if rule.get("labels"):
        scores = expected.get(rule["scores_from"]) if rule.get("scores_from") else None
        return _verify.check_labels(
            name, label, reference, np.asarray(actual), ref_scores=scores, tie_tolerance=PROBABILITY_ATOL
        )
    return _verify.check_close(
        name, label, reference, np.asarray(actual), rtol=rule.get("rtol"), atol=rule.get("atol")
    )
