"""onnxruntime session creation and runs with explicit, reproducible settings.

Every session modelpress creates goes through ``create_session`` so that optimization level,
thread counts and thread spinning are always set on purpose: verification runs at
``ORT_DISABLE_ALL`` (so onnxruntime's own fusions cannot hide a broken rewrite), and
benchmarks turn spinning off so idle sessions do not steal cores from the one being timed.

``run_session`` feeds and fetches every dtype, including those onnxruntime's numpy bridge
cannot convert (bfloat16, float8): they travel as ``OrtValue`` bytes.
"""

from __future__ import annotations

import collections.abc
import ctypes
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from modelpress.errors import InvalidModelError, ModelLoadError, UsageError
from modelpress.ir import io

__all__ = ["LEVELS", "PROVIDER_PREFERENCE", "OptLevel", "choose_providers", "create_session", "run_session"]

OptLevel = Literal["disable", "basic", "extended", "layout", "all"]
LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "layout": getattr(
        ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ),
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# Accelerated execution providers first: the first available one takes the nodes it supports,
# the CPU provider (always present) the rest.
PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}


def choose_providers(choice: str | collections.abc.Sequence[str] = "auto") -> list[str]:
    """Execution providers for deployment sessions, best first, always ending with the CPU.

    ``auto`` takes every accelerated provider this onnxruntime build has (TensorRT, CUDA,
    ROCm, CoreML, DirectML, in that order) and the CPU; a name (``cpu``, ``cuda``,
    ``tensorrt`` ... or the full provider name) or a list of names asks for those.

    Raises:
        UsageError: an unknown name, or one this onnxruntime build does not have (the message
            lists those it has).
    """
    available = ort.get_available_providers()
    if isinstance(choice, str) and choice == "auto":
        return [p for p in PROVIDER_PREFERENCE if p in available] or ["CPUExecutionProvider"]
    names = [choice] if isinstance(choice, str) else list(choice)
    chosen = []
    for name in names:
        provider = _PROVIDER_ALIASES.get(name.lower(), name)
        if provider not in available:
            raise UsageError(
                f"execution provider '{name}' is not in this onnxruntime build; it has "
                f"{', '.join(available)} (install onnxruntime-gpu for CUDA/TensorRT)"
            )
        chosen.append(provider)
    return [*chosen, "CPUExecutionProvider"] if "CPUExecutionProvider" not in chosen else chosen


def create_session(
    model: ir.Model | bytes | str | os.PathLike[str],
    *,
    level: OptLevel = "disable",
    threads: int | None = None,
    inter_op_threads: int = 1,
    spinning: bool = False,
    optimized_model_path: str | os.PathLike[str] | None = None,
    providers: list[str] | None = None,
    external_initializers: collections.abc.Mapping[str, np.ndarray] | None = None,
) -> ort.InferenceSession:
    """Create an onnxruntime CPU session for ``model``.

    Args:
        model: An ``onnx_ir`` model, serialized bytes, or a path (needed for external data).
        level: onnxruntime graph optimization level; ``disable`` for verification.
        threads: intra-op threads (None lets onnxruntime choose).
        inter_op_threads: threads running independent graph branches in parallel; 1 (the
            default) runs the graph sequentially, which is fastest for most models.
        spinning: allow idle worker threads to spin (fast, but steals cores from other sessions).
        optimized_model_path: ask onnxruntime to write the graph it optimized to this path.
        providers: execution providers; defaults to CPU (see ``choose_providers``).
        external_initializers: arrays by initializer name that replace the model's tensors of
            that name (typically external tensors without data, as in a version 2 ``.mpe``
            graph). onnxruntime uses CPU arrays in place, without copying, so the session keeps
            a reference to them (and so to the buffer they view) for its whole lifetime.

    Raises:
        UsageError: unknown optimization level.
        ModelLoadError: onnxruntime refused the model; its reason is in the message.
    """
    if level not in LEVELS:
        raise UsageError(
            f"unknown onnxruntime optimization level '{level}'; choose one of: {', '.join(LEVELS)}"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    if inter_op_threads < 1:
        raise UsageError(f"inter-op threads {inter_op_threads} must be >= 1")
    options.inter_op_num_threads = inter_op_threads
    if inter_op_threads > 1:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if threads is not None:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    providers = providers or ["CPUExecutionProvider"]
    kept: tuple[object, ...] = ()
    if external_initializers:
        names = list(external_initializers)
        values = [_to_ort_value(external_initializers[name]) for name in names]
        options.add_external_initializers(names, values)
        kept = (dict(external_initializers), values)
    where = (
        "<model>" if isinstance(model, ir.Model) else "<bytes>" if isinstance(model, bytes) else str(model)
    )
    try:
        if isinstance(model, ir.Model):
            session = _session_from_ir(model, options, providers)
        elif isinstance(model, bytes | bytearray):
            session = ort.InferenceSession(bytes(model), options, providers=providers)
        else:
            session = ort.InferenceSession(str(Path(model)), options, providers=providers)
    except ModelLoadError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types without a common base
        raise ModelLoadError(
            f"{where}: onnxruntime cannot load the model: {_first_line(e)}; check the model with "
            "`modelpress info` and the onnxruntime version"
        ) from e
    if kept:
        session._modelpress_external_initializers = kept
    return session


def run_session(
    session: ort.InferenceSession,
    feeds: collections.abc.Mapping[str, np.ndarray],
    output_names: collections.abc.Sequence[str] | None = None,
) -> dict[str, object]:
    """Run ``session`` once and return its outputs by name (arrays, or lists for sequences).

    Feeds the session does not take are ignored.

    Raises:
        UsageError: a required input is missing from ``feeds``.
        InvalidModelError: onnxruntime failed while running (wrong dtype or shape of a feed,
            or a model whose shapes do not agree at run time).
    """
    inputs = session.get_inputs()
    missing = [i.name for i in inputs if i.name not in feeds]
    if missing:
        raise UsageError(
            f"no feed for input(s) {', '.join(missing)}; the model takes "
            f"{', '.join(f'{i.name} {i.type} {i.shape}' for i in inputs)}"
        )
    wanted = {
        i.name: np.asarray(feeds[i.name]) if not isinstance(feeds[i.name], list) else feeds[i.name]
        for i in inputs
    }
    names = list(output_names or [o.name for o in session.get_outputs()])
    out_types = {o.name: o.type for o in session.get_outputs()}
    try:
        if any(_needs_ort_value(v) for v in wanted.values()) or any(
            out_types.get(n, "") in _BYTES_ONLY_TYPES for n in names
        ):
            ort_feeds = {k: _to_ort_value(v) for k, v in wanted.items()}
            values = [_from_ort_value(v) for v in session.run_with_ort_values(names, ort_feeds)]
        else:
            values = session.run(names, wanted)
    except Exception as e:  # onnxruntime raises its own exception types without a common base
        raise InvalidModelError(
            f"onnxruntime failed to run the model: {_first_line(e)}; check the feeds' dtypes and "
            "shapes against the model inputs"
        ) from e
    return dict(zip(names, values, strict=True))


# Output types onnxruntime's numpy bridge cannot return: fetched as raw bytes instead.
_BYTES_ONLY_TYPES = frozenset(
    f"tensor({name})"
    for name in ("bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz", "float8e8m0")
)


def _needs_ort_value(array: object) -> bool:
    # ml_dtypes arrays (bfloat16, float8) have numpy kind "V"; onnxruntime rejects them.
    return isinstance(array, np.ndarray) and array.dtype.kind == "V"


def _to_ort_value(array: object) -> ort.OrtValue:
    if not _needs_ort_value(array):
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
    assert isinstance(array, np.ndarray)
    onnx_type = ir.DataType.from_numpy(array.dtype).value
    raw = np.ascontiguousarray(array).view(np.dtype(f"u{array.dtype.itemsize}"))
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, onnx_type)


def _from_ort_value(value: ort.OrtValue) -> object:
    if not value.is_tensor():
        return value.numpy()
    dtype = ir.DataType(value.element_type())
    if f"tensor({dtype.name.lower()})" not in _BYTES_ONLY_TYPES:
        return value.numpy()
    size = value.tensor_size_in_bytes()
    if size == 0:
        return np.zeros(value.shape(), dtype=dtype.numpy())
    data = ctypes.string_at(value.data_ptr(), size)
    return np.frombuffer(data, dtype=dtype.numpy()).reshape(value.shape()).copy()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _session_from_ir(
    model: ir.Model, options: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession:
    weights = sum(
        io.tensor_nbytes(value.const_value)
        for graph in model.graphs()
        for value in graph.initializers.values()
        if value.const_value is not None
    )
    if weights < io.PROTOBUF_LIMIT_BYTES // 2:
        return ort.InferenceSession(io.to_bytes(model), options, providers=providers)
    # Too large for one protobuf: go through a temporary file with external data. onnxruntime
    # may memory-map the data file, so the folder lives as long as the session does.
    tmp = tempfile.TemporaryDirectory(prefix="modelpress-")
    path = io.save(model, Path(tmp.name) / "model.onnx", external_data=True)
    session = ort.InferenceSession(str(path), options, providers=providers)
    session._modelpress_tmpdir = tmp
    return session
