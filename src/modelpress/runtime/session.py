"""onnxruntime session creation with explicit, reproducible settings.

Every session modelpress creates goes through ``create_session`` so that optimization level,
thread counts and thread spinning are always set on purpose: verification runs at
``ORT_DISABLE_ALL`` (so onnxruntime's own fusions cannot hide a broken rewrite), and
benchmarks turn spinning off so idle sessions do not steal cores from the one being timed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

import onnx_ir as ir
import onnxruntime as ort

from modelpress.errors import ModelLoadError
from modelpress.ir import io

__all__ = ["LEVELS", "OptLevel", "create_session"]

OptLevel = Literal["disable", "basic", "extended", "layout", "all"]
LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "layout": getattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def create_session(
    model: ir.Model | bytes | str | os.PathLike,
    *,
    level: OptLevel = "disable",
    threads: int | None = None,
    spinning: bool = False,
    optimized_model_path: str | os.PathLike | None = None,
    providers: list[str] | None = None,
) -> ort.InferenceSession:
    """Create an onnxruntime CPU session for ``model``.

    Args:
        model: An ``onnx_ir`` model, serialized bytes, or a path (needed for external data).
        level: onnxruntime graph optimization level; ``disable`` for verification.
        threads: intra-op threads (None lets onnxruntime choose); inter-op is always 1.
        spinning: allow idle worker threads to spin (fast, but steals cores from other sessions).
        optimized_model_path: ask onnxruntime to write the graph it optimized to this path.
        providers: execution providers; defaults to CPU.

    Raises:
        ModelLoadError: onnxruntime refused the model; its reason is in the message.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    providers = providers or ["CPUExecutionProvider"]
    try:
        if isinstance(model, ir.Model):
            return _session_from_ir(model, options, providers)
        if isinstance(model, bytes):
            return ort.InferenceSession(model, options, providers=providers)
        return ort.InferenceSession(str(Path(model)), options, providers=providers)
    except ModelLoadError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types without a common base
        raise ModelLoadError(f"onnxruntime cannot load the model: {e}") from e


def _session_from_ir(model: ir.Model, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if weights < io.PROTOBUF_LIMIT_BYTES // 2:
        return ort.InferenceSession(io.to_bytes(model), options, providers=providers)
    # Too large for one protobuf: go through a temporary file with external data. onnxruntime
    # may memory-map the data file, so the folder lives as long as the session does.
    tmp = tempfile.TemporaryDirectory(prefix="modelpress-")
    path = io.save(model, Path(tmp.name) / "model.onnx", external_data=True)
    session = ort.InferenceSession(str(path), options, providers=providers)
    session._modelpress_tmpdir = tmp  # type: ignore[attr-defined]
    return session
