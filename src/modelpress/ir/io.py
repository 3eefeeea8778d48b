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

import contextlib
import functools
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from modelpress.errors import ModelLoadError, ModelSaveError

__all__ = [
    "MAX_TENSOR_BYTES",
    "PROTOBUF_LIMIT_BYTES",
    "check_model",
    "from_text",
    "load",
    "save",
    "tensor_nbytes",
    "to_bytes",
]

# Protobuf refuses to serialize or parse messages of 2 GiB or more.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
# Above this, `save` moves weights to external data by default (room left for the graph).
_AUTO_EXTERNAL_BYTES = int(1.8 * 2**30)
# A single tensor larger than this is treated as hostile: no real model has a 256 GiB weight.
MAX_TENSOR_BYTES = 2**38
# ONNX `TensorProto.DataType` value -> bits per element (STRING has no fixed size).
_BITS = {dt.value: dt.bitwidth for dt in ir.DataType if dt not in (ir.DataType.UNDEFINED, ir.DataType.STRING)}
# Name of the empty stand-in data file the checker sees for external tensors (see check_model).
_PLACEHOLDER = "placeholder.data"
# When a model with inline weights is too large for one protobuf, tensors over this size are
# hidden from the checker behind the placeholder.
_CHECK_INLINE_BYTES = 2**20

_LoadError = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)


def load(
    source: str | os.PathLike[str] | bytes, *, base_dir: str | os.PathLike[str] | None = None
) -> ir.Model:
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
        # The folder as the user names it (like onnxruntime), not a symlinked file's target.
        folder = Path(base_dir) if base_dir is not None else path.absolute().parent
    if folder is not None and not folder.is_dir():
        raise ModelLoadError(
            f"{where}: base_dir '{folder}' is not a folder; pass the folder holding the model's external data"
        )
    _check_structure(proto, where)
    _check_strings(proto, where)
    for tensor in _proto_tensors(proto):
        _check_tensor(tensor, where, folder)
    check_model(proto, where=where)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir raises plain exceptions on malformed graphs
        raise ModelLoadError(
            f"{where}: cannot build the graph: {e}; the file is corrupt or uses a construct onnx_ir "
            "does not support"
        ) from e
    if folder is not None:
        for ir_tensor in _ir_tensors(model):
            if isinstance(ir_tensor, ir.ExternalTensor):
                ir_tensor.base_dir = str(folder.absolute())
    return model


def from_text(text: str) -> ir.Model:
    """Parse a model written in ONNX textual syntax (used by tests and examples).

    Raises:
        ModelLoadError: the text does not parse.
    """
    try:
        proto = onnx.parser.parse_model(text)
    except onnx.parser.ParseError as e:
        raise ModelLoadError(f"<text>: not valid ONNX text: {e}; fix the syntax") from e
    return ir.serde.deserialize_model(proto)


def check_model(model: ir.Model | onnx.ModelProto, *, where: str = "<model>", full: bool = False) -> None:
    """Run ``onnx.checker`` (``full`` adds strict shape inference) and raise a named error.

    The checker resolves external-data locations against the current directory when it is
    given a message, so models with external tensors (and models too large for one protobuf)
    are checked through a temporary file whose external tensors all point at one empty
    stand-in file. The data files themselves are validated by ``load``, not here.

    Args:
        model: The model; it is not modified.
        where: What to call the model in messages (usually its path).
        full: Also run strict shape inference.

    Raises:
        ModelLoadError: the checker rejected the model; its first message line is included.
    """
    owned = isinstance(model, ir.Model)
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    try:
        has_external = any(_is_external(t) for t in _proto_tensors(proto))
        if not has_external and proto.ByteSize() < PROTOBUF_LIMIT_BYTES:
            onnx.checker.check_model(proto, full_check=full)
        else:
            if not owned:
                proto = _copy(proto)
            _check_through_file(proto, full=full)
    except (*_LoadError, RuntimeError, ValueError) as e:
        text = str(e).strip()
        first_line = text.splitlines()[0] if text else type(e).__name__
        raise ModelLoadError(
            f"{where}: not a valid ONNX model: {first_line}; "
            "re-export the model or fix the reported node or tensor"
        ) from e


def to_bytes(model: ir.Model) -> bytes:
    """Serialize a model with every weight inline, e.g. to hand to onnxruntime in memory.

    External tensors are read from disk and embedded: the bytes stand alone.

    Raises:
        ModelSaveError: the model is too large for one protobuf; save it to a path instead.
    """
    with _external_inlined(model):
        proto = ir.to_proto(model)
    size = proto.ByteSize()
    if size >= PROTOBUF_LIMIT_BYTES:
        raise ModelSaveError(
            f"<bytes>: model is {size / 2**30:.2f} GiB, over protobuf's 2 GiB limit for "
            "in-memory bytes; save it with modelpress.ir.io.save(..., external_data=True) "
            "and load it by path"
        )
    return _serialized(proto)


# Split serialization (``to_split_bytes``): the external-data location that names the weights
# buffer, and the alignment of every tensor in it (a cache line; enough for any dtype).
WEIGHTS_BUFFER_LOCATION = "<modelpress weights buffer>"
_WEIGHTS_ALIGN = 64


def to_split_bytes(model: ir.Model, *, min_bytes: int = 1024) -> tuple[bytes, bytes]:
    """Serialize a model as (graph, weights): the graph with its large weights moved out.

    Top-level initializers of ``min_bytes`` or more go to one weights buffer, each at an offset
    aligned to 64 bytes; in the graph they become external tensors whose location is
    ``WEIGHTS_BUFFER_LOCATION`` and whose offset and length point into that buffer. onnxruntime
    then parses only the small graph and takes the weights as views of the buffer
    (``buffer_weights``), instead of copying and parsing them out of a protobuf.
    ``join_split_bytes`` turns the pair back into exactly ``to_bytes(model)``.

    Not part of the pinned ``__all__``: the split layout serves ``modelpress.protect`` only.

    Raises:
        ModelSaveError: the graph alone is too large for one protobuf.
    """
    with _external_inlined(model):
        proto = ir.to_proto(model)
    pieces: list[bytes] = []
    offset = 0
    for tensor in proto.graph.initializer:
        if len(tensor.raw_data) < min_bytes:
            continue
        padding = -offset % _WEIGHTS_ALIGN
        pieces += [bytes(padding), tensor.raw_data]
        offset += padding
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        entries = {"location": WEIGHTS_BUFFER_LOCATION, "offset": offset, "length": len(pieces[-1])}
        for key, value in entries.items():
            tensor.external_data.add(key=key, value=str(value))
        tensor.ClearField("raw_data")
        offset += len(pieces[-1])
    if proto.ByteSize() >= PROTOBUF_LIMIT_BYTES:
        raise ModelSaveError("<bytes>: the graph without its weights is over protobuf's 2 GiB limit")
    return proto.SerializeToString(), b"".join(pieces)


def buffer_weights(graph: bytes, weights: memoryview) -> dict[str, np.ndarray]:
    """Read-only arrays over ``weights`` for every tensor of ``graph`` kept in the buffer (no copy).

    ``graph`` and ``weights`` are what ``to_split_bytes`` wrote. Every external reference is
    checked: only top-level initializers may point at the buffer, never at a file; each lies
    inside the buffer, aligned, and holds exactly the bytes its dtype and dims declare.

    Raises:
        ModelLoadError: the graph does not parse, or a reference breaks one of these rules.
    """
    proto = _parse_bytes(graph, "<graph>")
    _check_structure(proto, "<graph>")
    arrays: dict[str, np.ndarray] = {}
    for tensor in proto.graph.initializer:
        if not _is_external(tensor):
            continue
        name = tensor.name or "<unnamed>"
        info = {entry.key: entry.value for entry in tensor.external_data}
        if info.get("location") != WEIGHTS_BUFFER_LOCATION or name in arrays:
            raise ModelLoadError(
                f"<graph>: initializer '{name}' has external data in '{info.get('location')}', not in "
                "the weights buffer, or is named twice: the model is corrupt"
            )
        arrays[name] = _buffer_view(tensor, info, weights)
    if sum(_is_external(tensor) for tensor in _proto_tensors(proto)) != len(arrays):
        raise ModelLoadError(
            "<graph>: a tensor other than a top-level initializer has external data; only "
            "top-level initializers may live in the weights buffer: the model is corrupt"
        )
    return arrays


def join_split_bytes(graph: bytes, weights: memoryview) -> bytes:
    """The inverse of ``to_split_bytes``: the serialized model with every weight inline again.

    Raises:
        ModelLoadError: as ``buffer_weights``.
    """
    arrays = buffer_weights(graph, weights)
    proto = _parse_bytes(graph, "<graph>")
    for tensor in proto.graph.initializer:
        if tensor.name in arrays and _is_external(tensor):
            tensor.raw_data = arrays[tensor.name].tobytes()
            tensor.ClearField("data_location")
            tensor.ClearField("external_data")
    return _serialized(proto)


def _buffer_view(tensor: onnx.TensorProto, info: dict[str, str], weights: memoryview) -> np.ndarray:
    name, dims = tensor.name, list(tensor.dims)
    bits = _BITS.get(tensor.data_type)
    try:
        offset, length = int(info["offset"]), int(info["length"])
    except (KeyError, ValueError):
        offset = length = -1
    if bits is None or bits % 8 or any(d < 0 for d in dims):
        raise ModelLoadError(
            f"<graph>: tensor '{name}' (data type {tensor.data_type}, dims {dims}) cannot live in the "
            "weights buffer: the model is corrupt"
        )
    expected = math.prod(dims) * bits // 8
    if offset < 0 or offset % _WEIGHTS_ALIGN or length != expected or offset + length > len(weights):
        raise ModelLoadError(
            f"<graph>: tensor '{name}' reads bytes {offset}..{offset + length} of a {len(weights)}-byte "
            f"weights buffer (needs {expected} bytes at a {_WEIGHTS_ALIGN}-aligned offset): the model "
            "is corrupt"
        )
    dtype = ir.DataType(tensor.data_type).numpy()
    array = np.frombuffer(weights, dtype=dtype, count=expected // dtype.itemsize, offset=offset).reshape(dims)
    array.flags.writeable = False
    return array


def save(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    size_threshold_bytes: int = 1024,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` atomically to ``path`` (temporary files, then rename).

    Args:
        model: The model to write; it is not modified.
        path: Destination ``.onnx`` path. Its external data, if any, goes next to it as
            ``<name>.data``.
        external_data: ``True`` moves every initializer over ``size_threshold_bytes`` to
            the data file, ``False`` keeps all weights inline (reading external tensors from
            disk), ``None`` (default) decides by size: external only when the weights exceed
            1.8 GiB, which protobuf's 2 GiB limit could not hold.
        size_threshold_bytes: Initializers of more bytes than this go to external data.
        before_commit: Called with the staged file's path (final name, temporary folder)
            before it is moved into place; if it raises, nothing is written and the error
            propagates. Lets a caller check the very bytes it is about to publish (e.g. load
            them in onnxruntime) without serializing the model twice.

    Returns:
        The destination path.

    Raises:
        ModelSaveError: writing failed; any previous file at ``path`` (and its data file)
            is left untouched.
    """
    dest = Path(path)
    if external_data is None:
        external_data = _weight_bytes(model) > _AUTO_EXTERNAL_BYTES
    data_name = dest.name + ".data"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp") as tmp:
            staged = Path(tmp) / dest.name
            if external_data:
                # onnx_ir reads the existing external tensors (wherever they live) and writes
                # the new data file inside the temporary folder. The format is explicit: onnx
                # would otherwise pick JSON or text from a destination named *.json or *.txt.
                with _external_inlined(model, initializers=False):
                    ir.save(
                        model,
                        staged,
                        format="protobuf",
                        external_data=data_name,
                        size_threshold_bytes=size_threshold_bytes,
                    )
            else:
                staged.write_bytes(_inline_bytes(model, dest))
            staged_data = Path(tmp) / data_name
            if before_commit is not None:
                before_commit(staged)
            _commit(model, staged, dest, staged_data if staged_data.exists() else None, Path(tmp))
    except ModelSaveError:
        raise
    except (OSError, ValueError) as e:
        raise ModelSaveError(
            f"{dest}: cannot write the model: {e}; check that the folder exists, is writable "
            "and has free space"
        ) from e
    return dest


def _inline_bytes(model: ir.Model, dest: Path) -> bytes:
    with _external_inlined(model):
        proto = ir.to_proto(model)
    # ByteSize() walks the whole message (~1 s per GB): only ask when the weights alone
    # come near the limit; the graph itself is small next to 1 GiB of slack.
    if _weight_bytes(model) > PROTOBUF_LIMIT_BYTES // 2 and proto.ByteSize() >= PROTOBUF_LIMIT_BYTES:
        raise ModelSaveError(
            f"{dest}: the model is over protobuf's 2 GiB limit with weights inline; "
            "save with external_data=True (or None to decide by size)"
        )
    return _serialized(proto)


def _commit(model: ir.Model, staged: Path, dest: Path, staged_data: Path | None, tmp: Path) -> None:
    """Move the staged model (and data file) into place; restore the old data file on failure."""
    final_data = dest.parent / (dest.name + ".data")
    backup = None
    if staged_data is not None:
        _pin_readers(model, final_data)
        if final_data.exists():
            backup = tmp / "previous.data"
            try:
                os.link(final_data, backup)
            except OSError:  # no hard links on this file system
                shutil.copy2(final_data, backup)
        os.replace(staged_data, final_data)
    try:
        os.replace(staged, dest)
    except BaseException:
        if staged_data is not None:
            if backup is not None:
                os.replace(backup, final_data)
            else:
                final_data.unlink(missing_ok=True)
        raise


def _pin_readers(model: ir.Model, data_file: Path) -> None:
    """Map external tensors that read ``data_file`` before it is replaced.

    A mapped file keeps its old contents after the rename; an unmapped tensor would read the
    new file at its old offsets.
    """
    if not data_file.exists():
        return
    for tensor in _ir_tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            with contextlib.suppress(OSError):
                if os.path.samefile(tensor.path, data_file):
                    tensor.numpy()


@contextlib.contextmanager
def _external_inlined(model: ir.Model, *, initializers: bool = True) -> Iterator[None]:
    """Temporarily replace external tensors of ``model`` by in-memory copies.

    Attribute tensors are always replaced (onnx_ir's external-data writer moves initializers
    only); initializers only when ``initializers`` is true. Everything is restored on exit.
    """
    undo: list[Callable[[], None]] = []
    try:
        if initializers:
            for graph in _ir_graphs(model):
                for value in graph.initializers.values():
                    tensor = value.const_value
                    if isinstance(tensor, ir.ExternalTensor):
                        value.const_value = _in_memory(tensor)
                        undo.append(functools.partial(setattr, value, "const_value", tensor))
        for node in _ir_nodes(model):
            for name, attr in list(node.attributes.items()):
                replacement = _inlined_attr(attr)
                if replacement is not None:
                    node.attributes[name] = replacement
                    undo.append(functools.partial(node.attributes.__setitem__, name, attr))
        yield
    finally:
        for restore in reversed(undo):
            restore()


def _inlined_attr(attr: ir.Attr) -> ir.Attr | None:
    if attr.is_ref():
        return None
    if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
        return ir.AttrTensor(attr.name, _in_memory(attr.value))
    if attr.type == ir.AttributeType.TENSORS and any(isinstance(t, ir.ExternalTensor) for t in attr.value):
        tensors = [_in_memory(t) if isinstance(t, ir.ExternalTensor) else t for t in attr.value]
        return ir.AttrTensors(attr.name, tensors)
    return None


def _in_memory(tensor: ir.ExternalTensor) -> ir.TensorProtocol:
    try:
        array = tensor.numpy()
    except (OSError, ValueError) as e:
        raise ModelSaveError(
            f"{tensor.path}: cannot read external tensor '{tensor.name}': {e}; the data file "
            "was moved, truncated or deleted since the model was loaded"
        ) from e
    return ir.Tensor(array, dtype=tensor.dtype, name=tensor.name, doc_string=tensor.doc_string)


def _ir_graphs(model: ir.Model) -> Iterator[ir.Graph]:
    yield from model.graphs()
    for function in model.functions.values():
        yield from function.subgraphs()


def _ir_nodes(model: ir.Model) -> Iterator[ir.Node]:
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def _ir_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Every tensor of the model: initializers of all graphs and tensor attributes."""
    for graph in _ir_graphs(model):
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
    for node in _ir_nodes(model):
        for attr in node.attributes.values():
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.TENSOR:
                yield attr.value
            elif attr.type == ir.AttributeType.TENSORS:
                yield from attr.value


def tensor_nbytes(tensor: ir.TensorProtocol) -> int:
    """Bytes of a tensor's data, without loading external data; strings count their lengths."""
    if tensor.dtype == ir.DataType.STRING:
        return sum(len(item) for item in tensor.numpy().ravel())
    return tensor.nbytes


def _weight_bytes(model: ir.Model) -> int:
    return sum(tensor_nbytes(tensor) for tensor in _ir_tensors(model))


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def _check_through_file(proto: onnx.ModelProto, *, full: bool) -> None:
    """Check ``proto`` (modified) from a temporary file; its external tensors see one stand-in."""
    oversized = proto.ByteSize() >= PROTOBUF_LIMIT_BYTES
    with tempfile.TemporaryDirectory(prefix="modelpress-check-") as tmp:
        (Path(tmp) / _PLACEHOLDER).write_bytes(b"")
        for tensor in _proto_tensors(proto):
            if _is_external(tensor) or (oversized and len(tensor.raw_data) > _CHECK_INLINE_BYTES):
                tensor.ClearField("raw_data")
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.external_data.add(key="location", value=_PLACEHOLDER)
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(proto.SerializeToString())
        onnx.checker.check_model(str(model_path), full_check=full)


def _parse_file(path: Path) -> onnx.ModelProto:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file; check the path") from None
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the file ({e.strerror or e}); check the path") from e
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{path}: is a folder, not a model file; give the .onnx file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{path}: not a regular file; give the path of an .onnx file")
    if info.st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty (0 bytes); it is not an ONNX model")
    if info.st_size >= PROTOBUF_LIMIT_BYTES:
        raise ModelLoadError(
            f"{path}: {info.st_size / 2**30:.2f} GiB in one protobuf file, over its 2 GiB limit; "
            "ONNX models this large must keep their weights in external data"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(
            f"{path}: cannot read the file ({e.strerror or e}); check its permissions"
        ) from e
    return _parse_bytes(data, str(path))


def _parse_bytes(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{where}: no bytes; it is not an ONNX model")
    if len(data) >= PROTOBUF_LIMIT_BYTES:
        raise ModelLoadError(
            f"{where}: {len(data) / 2**30:.2f} GiB of bytes, over protobuf's 2 GiB limit; "
            "keep the weights in external data and load the model by path"
        )
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"{where}: not an ONNX model (protobuf could not decode it); the file is truncated, "
            "corrupt or of another format"
        ) from e
    return proto


def _check_structure(proto: onnx.ModelProto, where: str) -> None:
    # Random bytes can decode as an empty or garbage protobuf message: require the essentials.
    if not proto.HasField("graph") or proto.ir_version <= 0 or not proto.opset_import:
        raise ModelLoadError(
            f"{where}: not an ONNX model (no graph, IR version or opset import was found); "
            "the file is truncated, corrupt or of another format"
        )


def _check_strings(message: Message, where: str) -> None:
    """Reject text fields that are not UTF-8: protobuf hands them over as bytes, unchecked."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            values = value if _is_repeated(field) else [value]
            if any(isinstance(v, bytes) for v in values):
                raise ModelLoadError(
                    f"{where}: field '{field.full_name}' holds bytes that are not UTF-8 text; "
                    "the file is corrupt"
                )
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if _is_repeated(field) else [value]:
                _check_strings(item, where)


def _serialized(proto: onnx.ModelProto) -> bytes:
    # protobuf has no stubs here (see [tool.mypy] in pyproject.toml): state the result's type.
    data: bytes = proto.SerializeToString()
    return data


def _is_repeated(field: FieldDescriptor) -> bool:
    # `label` is deprecated in recent protobuf releases, `is_repeated` missing in older ones.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _proto_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the message: initializers, sparse parts, attributes, functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
            for sparse in attr.sparse_tensors:
                yield from (sparse.values, sparse.indices)
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _check_tensor(tensor: onnx.TensorProto, where: str, folder: Path | None) -> None:
    name = tensor.name or "<unnamed>"
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{where}: tensor '{name}' has a negative dimension {dims}; the file is corrupt")
    if tensor.data_type not in _BITS and tensor.data_type != onnx.TensorProto.STRING:
        raise ModelLoadError(
            f"{where}: tensor '{name}' has unknown data type {tensor.data_type}; the file is "
            "corrupt or needs a newer onnx"
        )
    count = math.prod(dims)
    bits = _BITS.get(tensor.data_type)
    declared = (count * bits + 7) // 8 if bits is not None else count
    if declared > MAX_TENSOR_BYTES:
        raise ModelLoadError(
            f"{where}: tensor '{name}' declares dims {dims} ({declared / 2**30:.3g} GiB), over the "
            f"{MAX_TENSOR_BYTES // 2**30} GiB cap for one tensor: the file is corrupt or hostile"
        )
    # Sub-byte types have packing rules of their own: their sizes are capped, not matched.
    expected = declared if bits is not None and bits % 8 == 0 else None
    if _is_external(tensor):
        _check_external(tensor, where, folder, expected)
    elif tensor.HasField("raw_data") and expected is not None and len(tensor.raw_data) != expected:
        dtype = ir.DataType(tensor.data_type).name
        raise ModelLoadError(
            f"{where}: tensor '{name}' declares dims {dims} of {dtype} ({expected} bytes) but "
            f"holds {len(tensor.raw_data)} bytes: the file is corrupt"
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
    if not location or os.path.isabs(location) or Path(location).drive or "\0" in location:
        raise ModelLoadError(
            f"{where}: tensor '{name}' has external-data location '{location}': it must be a "
            "relative path inside the model's folder"
        )
    try:
        root = folder.resolve()
        target = (root / location).resolve()
        inside = target == root or root in target.parents
        is_file = inside and target.is_file()
        file_size = target.stat().st_size if is_file else 0
    except (OSError, RuntimeError) as e:  # name too long, symlink loop, ...
        raise ModelLoadError(
            f"{where}: tensor '{name}' has external-data location '{location}' that cannot be "
            f"resolved ({e}); fix or remove the reference"
        ) from e
    if not inside:
        raise ModelLoadError(
            f"{where}: tensor '{name}' points outside the model's folder ('{location}' resolves "
            f"to {target}); refusing to read it (path traversal or symlink escape)"
        )
    if not is_file:
        raise ModelLoadError(
            f"{where}: tensor '{name}' needs external data file '{location}', which is missing "
            f"from {root}; copy it next to the model"
        )
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else file_size - offset
    except ValueError as e:
        raise ModelLoadError(
            f"{where}: tensor '{name}' has a non-integer external-data offset/length; the file is corrupt"
        ) from e
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
