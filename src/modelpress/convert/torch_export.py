"""PyTorch ``nn.Module`` -> ONNX with the legacy TorchScript exporter, and the module's reference run.

The export is ``torch.onnx.export(dynamo=False, opset_version=17, do_constant_folding=True)``
through ``modelpress.examples.torch_models.export_onnx``: tracing on the example inputs, axis 0
of every input and output symbolic (``batch``) unless a static batch is asked for. Tracing
records one path through ``forward``: Python branches on tensor values, ``.item()`` and shapes
computed from the example's batch size are frozen into the graph, which is why the converted
model is verified again at another batch size (``modelpress.convert.workflow``).

An operator the exporter cannot translate raises ``ConversionError`` naming the ATen operator
(e.g. ``aten::linalg_svd``) with the ways around it. torch's C++ code prints the traced graph
to the process's stdout when an export fails; that text is captured and logged at debug level,
since the library never prints.

torch is an optional extra: it is imported inside the functions only.
"""

from __future__ import annotations

import collections.abc
import contextlib
import logging
import os
import re
import sys
import tempfile
import typing
from pathlib import Path

import numpy as np

from modelpress.convert.source import InputSpec
from modelpress.errors import ConversionError, UsageError

if typing.TYPE_CHECKING:
    import torch

__all__ = ["OPSET", "export_torch", "run_torch"]

logger = logging.getLogger(__name__)

# Opset 17 (the toolkit's default everywhere): LayerNormalization exists, all of onnxruntime's
# CPU kernels cover it.
OPSET = 17
_OPERATOR = re.compile(r"operator '([^']+)'")
_ADDED_IN = re.compile(r"added in version (\d+)")


def _torch() -> typing.Any:
    try:
        import torch
    except ImportError as e:
        raise UsageError("converting a PyTorch model needs torch; pip install 'modelpress[torch]'") from e
    return torch


def run_torch(
    module: torch.nn.Module, feeds: collections.abc.Mapping[str, np.ndarray]
) -> tuple[list[str], list[np.ndarray]]:
    """Run ``module`` (eval mode, no gradients) on ``feeds`` in order; outputs flattened.

    Returns:
        Default output names (``output`` for one tensor, ``output_0``... for a tuple or list,
        the keys of a dict) and the output arrays, in the exporter's order.

    Raises:
        UsageError: the module failed on these inputs (wrong shapes or dtypes for it).
        ConversionError: an output is not a tensor (ONNX outputs must be tensors).
    """
    torch = _torch()
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values())
    module.eval()
    try:
        with torch.no_grad():
            result = module(*tensors)
    except Exception as e:  # user code: any exception type
        shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in feeds.items())
        raise UsageError(
            f"the module failed on the example inputs ({shapes}): {type(e).__name__}: {_first_line(e)}; "
            "check the --example-input names, order, shapes and dtypes against forward()"
        ) from e
    names, leaves = _flatten(result, "output")
    return names, [t.detach().cpu().numpy() for t in leaves]


def _flatten(result: object, prefix: str) -> tuple[list[str], list[typing.Any]]:
    """Tensors of a (nested) tuple/list/dict output in the exporter's order, with names."""
    torch = _torch()
    if isinstance(result, torch.Tensor):
        return [prefix], [result]
    if isinstance(result, collections.abc.Mapping):
        items = [(str(k), v) for k, v in result.items()]
    elif isinstance(result, tuple | list):
        items = [(f"{prefix}_{i}", v) for i, v in enumerate(result)]
    else:
        raise ConversionError(
            f"forward() returned a {type(result).__name__} at '{prefix}'; ONNX outputs must be tensors "
            "(return a tensor, or a tuple/list/dict of tensors)"
        )
    names: list[str] = []
    leaves: list[typing.Any] = []
    for name, value in items:
        sub_names, sub_leaves = _flatten(value, name)
        names += sub_names
        leaves += sub_leaves
    return names, leaves


def export_torch(
    module: torch.nn.Module,
    specs: collections.abc.Sequence[InputSpec],
    feeds: collections.abc.Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    output_names: collections.abc.Sequence[str],
    dynamic_batch: bool = True,
) -> Path:
    """Export ``module`` traced on ``feeds`` to ``path`` (written directly by torch).

    Args:
        module: The model; switched to eval mode.
        specs: The inputs, in ``forward``'s order; their names become graph input names.
        feeds: Example arrays for ``specs``, traced through the model.
        path: Destination of the raw export (a temporary file: the caller validates it).
        output_names: Graph output names, one per tensor the module returns.
        dynamic_batch: Make axis 0 of every non-scalar input and output symbolic (``batch``).

    Raises:
        ConversionError: the exporter failed; an unsupported operator is named, with a hint.
    """
    torch = _torch()
    from torch.onnx.errors import UnsupportedOperatorError

    from modelpress.examples.torch_models import export_onnx

    tensors = tuple(torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in specs)
    dynamic_dims = {s.name: {0: "batch"} for s in specs if s.shape}
    dynamic_dims.update({name: {0: "batch"} for name in output_names})
    with _captured_output() as captured:
        try:
            return export_onnx(
                module.eval(),
                tensors,
                path,
                constant_folding=True,
                dynamic_batch=dynamic_batch,
                input_names=[s.name for s in specs],
                output_names=list(output_names),
                dynamic_dims=dynamic_dims,
            )
        except UnsupportedOperatorError as e:
            logger.debug("exporter output:\n%s", captured())
            raise _unsupported(e) from e
        except Exception as e:  # tracing and symbolic errors have no common base
            logger.debug("exporter output:\n%s", captured())
            raise ConversionError(
                f"torch.onnx.export failed: {type(e).__name__}: {_first_line(e)}; if forward() has "
                "data-dependent control flow, move it out of the module or make it tensor ops "
                "(torch.where), then convert again"
            ) from e


def _unsupported(error: Exception) -> ConversionError:
    text = str(error)
    match = _OPERATOR.search(text)
    operator = match.group(1) if match else "<unknown>"
    added = _ADDED_IN.search(text)
    newer = f"; ONNX can express it from opset {added.group(1)}" if added else ""
    return ConversionError(
        f"operator '{operator}' is not supported by the PyTorch ONNX exporter at opset {OPSET}{newer}. "
        f"Hint: register a custom symbolic (torch.onnx.register_custom_op_symbolic('{operator}', ...)), "
        "rewrite that part of forward() with supported operators, or move it into pre/post-processing "
        "outside the exported module"
    )


@contextlib.contextmanager
def _captured_output() -> collections.abc.Iterator[collections.abc.Callable[[], str]]:
    """Redirect file descriptors 1 and 2 (where torch's C++ code writes) to a temporary file.

    torch prints the traced graph to stdout when an export fails. Yields a function returning
    what was written so far.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved: list[tuple[int, int]] = []
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
        except OSError:  # no such descriptor (embedded interpreter): leave the others redirected
            pass

        def read() -> str:
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield read
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
