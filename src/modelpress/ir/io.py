"""Load, validate and save ONNX models: the only module of modelpress that touches protobuf.

Model files are untrusted input (STYLE.md §5). ``load`` reads the graph without its external
weights, checks every external-data reference (no absolute paths, no escape from the model's
folder through ``..`` or symlinks, offset + length inside the file), checks every tensor's
declared size against a cap and against the bytes actually present, runs ``onnx.checker``,
and only then builds the ``onnx_ir`` model, whose external tensors stay lazy (memory-mapped
on first use), so a model over 2 GB loads in bounded memory. Every failure is a
``ModelLoadError`` naming the file and the reason; protobuf tracebacks never reach the user.

``save`` writes into a temporary folder next to the destination and renames into place, so a
failure never leaves a half-written model; tensors go to one external-data file when the
model's weights would push the protobuf past its 2 GB limit, or when the caller asks.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from modelpress.errors import ModelLoadError, ModelSaveError

__all__ = [
    "MAX_TENSOR_BYTES",
    "PROTOBUF_LIMIT_BYTES",
    "check_model",
    "from_text",
    "load",
    "save",
    "to_bytes",
]

# Protobuf refuses to serialize messages of 2 GiB or more.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
# Above this, `save` moves weights to external data by default (room left for the graph).
_AUTO_EXTERNAL_BYTES = int(1.8 * 2**30)
# A single tensor larger than this is treated as hostile: no real model has a 256 GiB weight.
MAX_TENSOR_BYTES = 2**38
# ONNX `TensorProto.DataType` -> item size in bytes, for the dtypes whose size is fixed.
_ITEMSIZE = {
    dt.value: dt.itemsize
    for dt in ir.DataType
    if dt not in (ir.DataType.UNDEFINED, ir.DataType.STRING) and dt.itemsize >= 1
}


def load(source: str | os.PathLike | bytes, *, base_dir: str | os.PathLike | None = None) -> ir.Model:
    """Read an ONNX model from a path or from serialized bytes, validating it as untrusted.

    Args:
        source: Path of a ``.onnx`` file, or the serialized model bytes.
        base_dir: Folder that external-data locations are relative to. Defaults to the model
            file's folder; required when ``source`` is bytes that reference external data.

    Returns:
        The model as an ``onnx_ir.Model``; external weights stay on disk until used.

    Raises:
        ModelLoadError: the file is missing, empty, truncated, not ONNX, fails the ONNX
            checker, declares absurd tensor sizes, or references external data outside its
            folder. The message names the file and the reason.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        where = "<bytes>"
        proto = _parse_bytes(bytes(source), where)
        folder = Path(base_dir) if base_dir is not None else None
    else:
        path = Path(source)
        where = str(path)
        proto = _parse_file(path)
        folder = Path(base_dir) if base_dir is not None else path.resolve().parent
    _check_structure(proto, where)
    _check_tensors(proto, where, folder)
    check_model(proto, where=where, base_dir=folder)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir raises plain exceptions on malformed graphs
        raise ModelLoadError(f"{where}: cannot build the graph: {e}") from e
    if folder is not None:
        ir.external_data.set_base_dir(model.graph, folder)
    return model


def from_text(text: str) -> ir.Model:
    """Parse a model written in ONNX textual syntax (used by tests and examples)."""
    try:
        proto = onnx.parser.parse_model(text)
    except onnx.parser.ParseError as e:
        raise ModelLoadError(f"<text>: not valid ONNX text: {e}") from e
    return ir.serde.deserialize_model(proto)


def check_model(
    model: ir.Model | onnx.ModelProto,
    *,
    where: str = "<model>",
    full: bool = False,
    base_dir: Path | None = None,
) -> None:
    """Run ``onnx.checker`` (``full`` adds strict shape inference) and raise a named error.

    Models whose serialized form would pass the protobuf limit are checked through a
    temporary file, the only way the checker accepts them.

    Raises:
        ModelLoadError: the checker rejected the model; its message is included.
    """
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    try:
        if proto.ByteSize() < PROTOBUF_LIMIT_BYTES:
            onnx.checker.check_model(proto, full_check=full)
        else:  # pragma: no cover - exercised by the >2 GB benchmark only
            with tempfile.TemporaryDirectory() as tmp:
                onnx.save_model(proto, os.path.join(tmp, "m.onnx"), save_as_external_data=True)
                onnx.checker.check_model(os.path.join(tmp, "m.onnx"), full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{where}: not a valid ONNX model: {first_line}") from e
    del base_dir  # external files are validated by _check_tensors; the checker sees locations only


def to_bytes(model: ir.Model) -> bytes:
    """Serialize a model (weights inline) to bytes, e.g. to hand to onnxruntime in memory.

    Raises:
        ModelSaveError: the model is too large for one protobuf; save it to a path instead.
    """
    proto = ir.to_proto(model)
    size = proto.ByteSize()
    if size >= PROTOBUF_LIMIT_BYTES:
        raise ModelSaveError(
            f"model is {size / 2**30:.2f} GiB, over protobuf's 2 GiB limit for in-memory bytes; "
            "save it with modelpress.ir.io.save(..., external_data=True) and load it by path"
        )
    return proto.SerializeToString()


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    size_threshold_bytes: int = 1024,
) -> Path:
    """Write ``model`` atomically to ``path`` (temporary files, then rename).

    Args:
        model: The model to write; it is not modified.
        path: Destination ``.onnx`` path. Its external data, if any, goes next to it as
            ``<name>.data``.
        external_data: ``True`` moves every tensor over ``size_threshold_bytes`` to the data
            file, ``False`` keeps all weights inline, ``None`` (default) decides by size:
            external only when the weights exceed 1.8 GiB.
        size_threshold_bytes: Smallest tensor moved to external data.

    Returns:
        The destination path.

    Raises:
        ModelSaveError: writing failed; any previous file at ``path`` is left untouched.
    """
    dest = Path(path)
    if external_data is None:
        external_data = _weight_bytes(model) > _AUTO_EXTERNAL_BYTES
    data_name = dest.name + ".data"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
            tmp_model = Path(tmp) / dest.name
            if external_data:
                # Existing external tensors may live in the file we are about to replace:
                # onnx_ir reads them before writing, and we write into the temp dir anyway.
                ir.save(model, tmp_model, external_data=data_name,
                        size_threshold_bytes=size_threshold_bytes)
                if (Path(tmp) / data_name).exists():
                    os.replace(Path(tmp) / data_name, dest.parent / data_name)
            else:
                proto = ir.to_proto(model)
                _materialize_external(proto, model)
                if proto.ByteSize() >= PROTOBUF_LIMIT_BYTES:
                    raise ModelSaveError(
                        f"{dest}: the model is over protobuf's 2 GiB limit with weights inline; "
                        "save with external_data=True"
                    )
                tmp_model.write_bytes(proto.SerializeToString())
            os.replace(tmp_model, dest)
    except ModelSaveError:
        raise
    except (OSError, ValueError) as e:
        raise ModelSaveError(f"{dest}: cannot write the model: {e}") from e
    return dest


def _materialize_external(proto: onnx.ModelProto, model: ir.Model) -> None:
    """Inline tensors that ``ir.to_proto`` kept as external references."""
    by_name = {v.name: v.const_value for v in model.graph.initializers.values()}
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            value = by_name[tensor.name]
            assert value is not None
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = value.tobytes()


def _weight_bytes(model: ir.Model) -> int:
    total = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            total += value.const_value.nbytes
    return total


def _parse_file(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path}: the file is empty (0 bytes); it is not an ONNX model")
    if size >= PROTOBUF_LIMIT_BYTES:
        raise ModelLoadError(
            f"{path}: {size / 2**30:.2f} GiB in one protobuf file, over its 2 GiB limit; "
            "ONNX models this large must keep their weights in external data"
        )
    return _parse_bytes(path.read_bytes(), str(path))


def _parse_bytes(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{where}: no bytes; it is not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"{where}: not an ONNX model (protobuf could not decode it: truncated or corrupt file?)"
        ) from e
    return proto


def _check_structure(proto: onnx.ModelProto, where: str) -> None:
    # Random bytes can decode as an empty or garbage protobuf message: require the essentials.
    if not proto.HasField("graph") or proto.ir_version <= 0 or not proto.opset_import:
        raise ModelLoadError(
            f"{where}: not an ONNX model (no graph, IR version or opset import was found; "
            "the file may be truncated, corrupt or of another format)"
        )


def _iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from _iter_tensors(sub)


def _check_tensors(proto: onnx.ModelProto, where: str, folder: Path | None) -> None:
    # Model-local functions carry no initializers, only nodes: the main graph holds them all.
    for tensor in _iter_tensors(proto.graph):
        _check_tensor(tensor, where, folder)


def _check_tensor(tensor: onnx.TensorProto, where: str, folder: Path | None) -> None:
    name = tensor.name or "<unnamed>"
    if any(d < 0 for d in tensor.dims):
        raise ModelLoadError(f"{where}: tensor '{name}' has a negative dimension {list(tensor.dims)}")
    count = math.prod(tensor.dims)
    itemsize = _ITEMSIZE.get(tensor.data_type)
    expected = None
    if itemsize is not None:
        expected = count * itemsize if itemsize >= 1 else None
        if expected is not None and expected > MAX_TENSOR_BYTES:
            raise ModelLoadError(
                f"{where}: tensor '{name}' declares dims {list(tensor.dims)} "
                f"({expected / 2**30:.0f} GiB), over the {MAX_TENSOR_BYTES // 2**30} GiB cap for one "
                "tensor: the file is corrupt or hostile"
            )
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        _check_external(tensor, where, folder, expected)
    elif tensor.HasField("raw_data") and expected is not None and len(tensor.raw_data) != expected:
        dt = ir.DataType(tensor.data_type).name
        raise ModelLoadError(
            f"{where}: tensor '{name}' declares dims {list(tensor.dims)} of {dt} "
            f"({expected} bytes) but holds {len(tensor.raw_data)} bytes: the file is corrupt"
        )


def _check_external(tensor: onnx.TensorProto, where: str, folder: Path | None, expected: int | None) -> None:
    name = tensor.name or "<unnamed>"
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if folder is None:
        raise ModelLoadError(
            f"{where}: tensor '{name}' keeps its data in external file '{location}', but the model "
            "was given as bytes without base_dir; pass base_dir= or load it by path"
        )
    if not location or os.path.isabs(location) or Path(location).drive:
        raise ModelLoadError(
            f"{where}: tensor '{name}' has external-data location '{location}': it must be a "
            "relative path inside the model's folder"
        )
    root = folder.resolve()
    target = (root / location).resolve()
    if root != target and root not in target.parents:
        raise ModelLoadError(
            f"{where}: tensor '{name}' points outside the model's folder ('{location}' resolves "
            f"to {target}); refusing to read it (path traversal or symlink escape)"
        )
    if not target.is_file():
        raise ModelLoadError(
            f"{where}: tensor '{name}' needs external data file '{location}', which is missing "
            f"from {root}; copy it next to the model"
        )
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError as e:
        raise ModelLoadError(f"{where}: tensor '{name}' has a non-integer offset/length") from e
    file_size = target.stat().st_size
    if length is None:
        length = file_size - offset
    if offset < 0 or length < 0 or offset + length > file_size:
        raise ModelLoadError(
            f"{where}: tensor '{name}' reads bytes {offset}..{offset + length} of '{location}', "
            f"which has {file_size} bytes: the data file is truncated or does not belong to this model"
        )
    if expected is not None and length != expected:
        raise ModelLoadError(
            f"{where}: tensor '{name}' declares {expected} bytes but its external data holds "
            f"{length}: the file is corrupt"
        )

