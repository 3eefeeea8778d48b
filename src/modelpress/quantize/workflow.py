"""``quantize``: plan, calibrate, insert Q/DQ, check the result on onnxruntime, write atomically.

Static int8 (``mode="static"``): weights int8 per channel, activations uint8/int8 per tensor
from streamed calibration, int32 biases; the QDQ model onnxruntime fuses into QLinearConv /
QGemm / QLinearMatMul at ``ORT_ENABLE_ALL``. Weight-only int8 (``mode="weight-only"``):
Conv/Gemm/MatMul weights int8 + DequantizeLinear, activations float, no calibration. Dynamic
int8 (``mode="dynamic"``, ``dynamic.py``): MatMul/Gemm weights int8 (MatMuls that share an input
packed into one), Gather (embedding) tables int8 per row, activations quantized at run time,
no calibration. Weight-only int4 (``mode="weight-only", bits=4``, ``int4.py``):
block-wise 4-bit MatMul/Gemm weights and Gather tables as onnxruntime's MatMulNBits /
GatherBlockQuantized or opset-21 blocked DequantizeLinear; round-to-nearest without data,
GPTQ (``gptq.py``) with ``samples``. Float16 (``mode="fp16"``, ``float16.py``): weights and activations
float16 where safe and supported, graph inputs/outputs float32; ``samples`` (optional) feed
its range check.

The input model is never modified, and the destination is written only after the staged file
loaded in onnxruntime at ``ORT_ENABLE_ALL`` and its error against the float model was measured
(on the calibration data, or on random feeds for weight-only without data).

Refused up front (``PreconditionError``): models that are already quantized (QuantizeLinear,
DequantizeLinear, QLinear*, *Integer*, QGemm, MatMulNBits ... present), opset < 13 (per-axis
QuantizeLinear needs 13; ``upgrade_opset=True`` converts the model first), and models with
nothing to quantize (no float32 Conv/Gemm/MatMul with constant weights).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from modelpress.errors import PreconditionError, UsageError
from modelpress.ir import io
from modelpress.ir.stats import model_stats, op_histogram
from modelpress.quantize.bfloat16 import convert_bfloat16
from modelpress.quantize.bias_correction import correct_biases
from modelpress.quantize.calibrate import observe, observer_range
from modelpress.quantize.data import CalibrationData, EvalData, ImageFolderData, open_samples
from modelpress.quantize.dynamic import apply_dynamic
from modelpress.quantize.float16 import convert_float16
from modelpress.quantize.int4 import quantize_int4
from modelpress.quantize.plan import build_plan
from modelpress.quantize.qdq import apply_plan
from modelpress.quantize.report import QuantizeReport, measure_errors, runtime_ops
from modelpress.quantize.spec import QuantSpec
from modelpress.runtime.feeds import random_feeds

__all__ = ["MIN_OPSET", "quantize_file", "quantize_model"]

# QuantizeLinear/DequantizeLinear take a per-axis scale (and the axis attribute) from opset 13;
# DynamicQuantizeLinear exists from 11; float16 Casts and kernels need nothing special.
MIN_OPSET = 13
_MIN_OPSETS = {"dynamic": 11, "fp16": 7}
_QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QGemm",
        "MatMulNBits",
        "DynamicQuantizeMatMul",
        "QAttention",
        "QEmbedLayerNormalization",
        "GatherBlockQuantized",
    }
)
Feeds = collections.abc.Mapping[str, np.ndarray]
# progress(phase, samples just done, total samples of the phase or None when unknown)
Progress = collections.abc.Callable[[str, int, int | None], None]


def quantize_model(
    model: ir.Model,
    spec: QuantSpec,
    *,
    samples: collections.abc.Iterable[Feeds] | None = None,
    upgrade_opset: bool = False,
    progress: Progress | None = None,
) -> tuple[ir.Model, QuantizeReport]:
    """Quantize a copy of ``model`` following ``spec``.

    Args:
        model: The float model; it is not modified.
        spec: What and how to quantize.
        samples: Calibration feeds (required in static mode), iterated once.
        upgrade_opset: Convert a model below opset 13 to 13 instead of refusing it.
        progress: Called as ``progress("calibrate", samples_in_batch, total)`` after each batch.

    Returns:
        The quantized model and a report without output errors (see ``quantize_file``).

    Raises:
        PreconditionError: already quantized, opset too old, or nothing to quantize.
        UsageError: static mode without samples.
        CalibrationError: bad calibration data (see ``calibrate.observe``).
    """
    start = time.perf_counter()
    _check_not_quantized(model)
    work = model.clone()
    _check_opset(work, upgrade_opset, _min_opset(spec))
    common_passes.ShapeInferencePass()(work)  # the plan reads dtypes of intermediate tensors
    if spec.mode in ("fp16", "bf16") or spec.bits == 4:
        if spec.mode == "fp16":
            report = convert_float16(work, spec, samples=samples, progress=progress)
        elif spec.mode == "bf16":
            report = convert_bfloat16(work, spec)
        else:
            report = quantize_int4(work, spec, samples=samples, progress=progress)
        report.ops_before = op_histogram(model)
        report.weight_bytes_before = model_stats(model).weight_bytes
        report.ops_after = op_histogram(work)
        report.weight_bytes_after = model_stats(work).weight_bytes
        report.seconds = time.perf_counter() - start
        return work, report
    plan = build_plan(work, spec)
    if not plan.weights:
        reasons = "; ".join(f"{node}: {why}" for node, why in list(plan.skipped.items())[:5])
        raise PreconditionError(
            "nothing to quantize: no float32 Conv/Gemm/MatMul with constant weights"
            + (f" ({reasons})" if reasons else "")
            + "; only float32 models are quantized"
        )
    report = QuantizeReport(
        mode=spec.mode,
        spec=spec.to_json(),
        op_counts=plan.op_counts(work),
        skipped=dict(plan.skipped),
        inserted={},
        ops_before=op_histogram(model),
        ops_after={},
        weight_bytes_before=model_stats(model).weight_bytes,
        weight_bytes_after=0,
    )
    batchnorms = report.ops_before.get("BatchNormalization", 0)
    if batchnorms:
        report.notes.append(
            f"{batchnorms} BatchNormalization node(s) stay float between quantized ops; run "
            "`modelpress optimize` first to fold them into the Convs"
        )
    ranges: dict[str, tuple[float, float]] = {}
    if spec.mode == "static":
        if samples is None:
            raise UsageError("static quantization needs calibration data: pass --calib DIR (.npy/.npz files)")
        calibration_start = time.perf_counter()
        total = _sample_total(samples)

        def counted(size: int) -> None:
            report.calibration_samples += size
            if progress is not None:
                progress("calibrate", size, total)

        observers = observe(work, samples, plan.calibration_targets, spec, on_batch=counted)
        ranges = {name: observer_range(obs, spec) for name, obs in observers.items()}
        del observers
        report.calibration_seconds = time.perf_counter() - calibration_start
    if spec.mode == "dynamic":
        stats = apply_dynamic(work, plan, spec)
        report.inserted = {
            "dynamic_quantize_inputs": stats.activations,
            "int8_weights": stats.weights,
            "packed_matmul_groups": stats.packed_groups,
            "int8_gather_tables": stats.gather_tables,
        }
    else:
        if spec.bias_correction:
            report.bias_correction = correct_biases(work, plan, ranges, samples, spec, progress=progress)  # type: ignore[arg-type]
        qdq_stats = apply_plan(work, plan, ranges, spec)
        report.inserted = {
            "activation_qdq_pairs": qdq_stats.activations,
            "int8_weights": qdq_stats.weights,
            "int32_biases": qdq_stats.biases,
            "clipped_bias_values": qdq_stats.clipped_bias_values,
        }
    report.ops_after = op_histogram(work)
    report.weight_bytes_after = model_stats(work).weight_bytes
    report.seconds = time.perf_counter() - start
    return work, report


def quantize_file(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    spec: QuantSpec,
    *,
    calib_dir: str | os.PathLike[str] | None = None,
    num_samples: int | None = None,
    samples: collections.abc.Iterable[Feeds] | None = None,
    upgrade_opset: bool = False,
    evaluate: bool = True,
    progress: Progress | None = None,
    calib_pipeline: object | None = None,
    eval_dir: str | os.PathLike[str] | None = None,
    max_drop: float | None = None,
    eval_metric: str = "auto",
    eval_output: str | None = None,
) -> QuantizeReport:
    """Load ``source``, quantize it (see ``quantize_model``) and save it atomically to ``destination``.

    Args:
        source: Float ONNX model.
        destination: Where to write the quantized model.
        spec: What and how to quantize.
        calib_dir: Folder of ``.npy``/``.npz`` calibration files (see ``quantize.data``).
        num_samples: Use at most this many calibration samples.
        samples: Feeds to use instead of ``calib_dir``; must be re-iterable (a list), as they
            serve calibration and then the error measurement.
        upgrade_opset: Convert a model below opset 13 instead of refusing it.
        evaluate: Measure the output error (always loads the result in onnxruntime).
        progress: ``progress(phase, samples, total)`` with phase ``calibrate`` or ``evaluate``.
        calib_pipeline: A ``Pipeline`` (or its YAML path) that turns the images of
            ``calib_dir`` (and ``eval_dir``) into model inputs (see ``quantize.data``).
        eval_dir: Accuracy-aware mode: evaluation files (``quantize.data.EvalData``).
        max_drop: Accuracy-aware mode: the metric drop allowed; the fewest nodes are kept
            float to meet it (``quantize.accuracy``). The best model found is written even
            when the budget cannot be met: check ``report.accuracy.met``.
        eval_metric: ``auto``, ``accuracy``, ``agreement`` or ``cosine``.
        eval_output: The output the metric reads (default: the first float output).

    Raises:
        UsageError: both or (static mode) neither of ``calib_dir`` and ``samples``, or
            ``samples`` is a one-shot iterator; only one of ``max_drop`` and ``eval_dir``.
        CalibrationError, PreconditionError, ModelLoadError, ModelSaveError: nothing written.
    """
    start = time.perf_counter()
    if calib_dir is not None and samples is not None:
        raise UsageError("pass calibration data either as a folder or as samples, not both")
    if samples is not None and iter(samples) is samples:
        raise UsageError(
            "samples must be re-iterable (e.g. a list): they serve calibration and the error check"
        )
    if calib_pipeline is not None and calib_dir is None:
        raise UsageError("--calib-pipeline preprocesses the images of --calib DIR: pass --calib too")
    model = io.load(source)
    data = (
        open_samples(calib_dir, model, pipeline=calib_pipeline, num_samples=num_samples)
        if calib_dir is not None
        else samples
    )
    if data is not None and num_samples is not None and calib_dir is None:
        data = _first_samples(data, num_samples)
    accuracy = None
    if max_drop is not None or eval_dir is not None:
        model, spec, accuracy = _fall_back_for_accuracy(
            model,
            spec,
            data,
            eval_dir,
            max_drop,
            calib_pipeline,
            upgrade_opset,
            eval_metric,
            eval_output,
            progress,
        )
    quantized, report = quantize_model(
        model, spec, samples=data, upgrade_opset=upgrade_opset, progress=progress
    )
    report.accuracy = accuracy
    if accuracy is not None:
        for layer in accuracy.layers:  # type: ignore[attr-defined]
            if layer.kept_float:
                report.skipped[layer.node] = f"accuracy-aware fallback: {layer.reason}"
    eval_data = data if data is not None else [random_feeds(model, seed) for seed in (0, 1, 2)]
    report.eval_data = "calibration data" if data is not None else "random feeds (seeds 0, 1, 2)"
    _drop_inferred_shapes(quantized, _declared_shapes(model))
    del model

    def check(staged: Path) -> None:
        report.runtime_ops = runtime_ops(staged)
        if evaluate:
            total = _sample_total(eval_data)
            on_batch = (lambda n: progress("evaluate", n, total)) if progress is not None else None
            report.errors, report.eval_samples = measure_errors(source, staged, eval_data, on_batch=on_batch)

    io.save(quantized, destination, before_commit=check)
    report.file_bytes_before = _file_bytes(Path(source))
    report.file_bytes_after = _file_bytes(Path(destination))
    report.input_path, report.output_path = str(source), str(destination)
    report.seconds = time.perf_counter() - start
    return report


def _fall_back_for_accuracy(
    model: ir.Model,
    spec: QuantSpec,
    data: collections.abc.Iterable[Feeds] | None,
    eval_dir: str | os.PathLike[str] | None,
    max_drop: float | None,
    pipeline: object | None,
    upgrade_opset: bool,
    metric: str,
    output: str | None,
    progress: Progress | None,
) -> tuple[ir.Model, QuantSpec, object]:
    """The prepared model (named nodes) and the spec that keeps the search's nodes float."""
    from modelpress.quantize.accuracy import name_nodes, search_fallback

    if eval_dir is None or max_drop is None:
        raise UsageError("the accuracy-aware mode takes both --max-drop X and --eval DIR")
    if data is None:
        raise UsageError("the accuracy-aware mode needs calibration data: pass --calib DIR")
    _check_not_quantized(model)
    work = model.clone()
    _check_opset(work, upgrade_opset, _min_opset(spec))
    common_passes.ShapeInferencePass()(work)
    name_nodes(work)
    eval_data = EvalData(eval_dir, work, pipeline=pipeline)
    kept, accuracy = search_fallback(
        work, spec, data, eval_data, max_drop, metric=metric, output=output, progress=progress
    )
    return work, dataclasses.replace(spec, exclude_nodes=spec.exclude_nodes | kept), accuracy


def _check_not_quantized(model: ir.Model) -> None:
    for node in model.graph.all_nodes():
        op = node.op_type
        if op in _QUANTIZED_OPS or op.startswith("QLinear") or "Integer" in op:
            raise PreconditionError(
                f"the model is already quantized: node '{node.name}' is a {op}; quantize the float "
                "model it came from instead"
            )


def _min_opset(spec: QuantSpec) -> int:
    """Opset the output needs: 21 for int4/uint4 blocked DequantizeLinear, else per mode."""
    if spec.bits == 4 and spec.weight_format == "qdq":
        return 21
    return _MIN_OPSETS.get(spec.mode, MIN_OPSET)


def _check_opset(model: ir.Model, upgrade: bool, minimum: int = MIN_OPSET) -> None:
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset >= minimum:
        return
    if not upgrade:
        why = {11: "DynamicQuantizeLinear", 21: "4-bit blocked DequantizeLinear (--format qdq)"}.get(
            minimum, "per-channel QuantizeLinear/DequantizeLinear"
        )
        raise PreconditionError(
            f"the model uses opset {opset}; quantization needs opset >= {minimum} ({why}); "
            "pass --upgrade-opset to convert it first"
        )
    from onnxscript import version_converter

    try:
        version_converter.convert_version(model, target_version=minimum, fallback=True)
    except Exception as e:  # the converters raise plain exceptions for unsupported ops
        raise PreconditionError(
            f"cannot upgrade the model from opset {opset} to {minimum}: {e}; "
            f"re-export it at opset >= {minimum}"
        ) from e


def _first_samples(samples: collections.abc.Iterable[Feeds], limit: int) -> list[Feeds]:
    chosen, left = [], limit
    for feeds in samples:
        size = len(next(iter(feeds.values())))
        chosen.append({k: v[:left] for k, v in feeds.items()} if size > left else feeds)
        left -= min(size, left)
        if left == 0:
            break
    return chosen


def _sample_total(samples: object) -> int | None:
    """Samples in ``samples`` when known without reading files, else None."""
    if isinstance(samples, CalibrationData | ImageFolderData):
        return len(samples)
    if isinstance(samples, collections.abc.Sequence):
        return sum(
            len(next(iter(f.values()))) if f and np.ndim(next(iter(f.values()))) else 1 for f in samples
        )
    return None


def _declared_shapes(model: ir.Model) -> set[str]:
    """Names of the main graph's intermediate values whose type or shape the model file declares."""
    return {
        out.name
        for node in model.graph
        for out in node.outputs
        if out.name and (out.type is not None or out.shape is not None)
    }


def _drop_inferred_shapes(model: ir.Model, declared: set[str]) -> None:
    """Forget the intermediate types and shapes the planning inferred (kept: what the input declared).

    The output then declares what the input did, and onnxruntime infers the rest itself.
    Measured (bench/quantize_vs_ort.py, this machine): with every intermediate shape declared,
    onnxruntime fuses each attention residual Add + LayerNormalization of a BERT into
    SkipLayerNormalization, whose CPU kernel is several times slower than the pair here;
    MiniLM dynamic int8 ran 20 % slower (b8) for it, and CNNs were unaffected.
    """
    for node in model.graph:
        for out in node.outputs:
            if not out.is_graph_output() and out.name not in declared:
                out.type, out.shape = None, None


def _file_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
