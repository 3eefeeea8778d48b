r"""The ``.mpz`` container: a Deep Compression model, decoded in memory for onnxruntime.

One ``.mpz`` file replaces the ``.onnx`` file and its data files. It holds the graph as
``modelpress.ir.io.to_split_bytes`` writes it (initializers of 1 KiB or more are external
references into a weights section) and, instead of the weights section, per tensor either a
codebook with Huffman-coded indices (weight sharing, optionally sparse positions) or the raw
bytes, DEFLATE-compressed. ``load_compressed`` rebuilds the weights section in one fresh
buffer, laid out byte for byte as ``to_split_bytes`` laid it out, so onnxruntime takes the
weights as views of it (``create_session(graph, external_initializers=weights)``) and no ONNX
is written anywhere; ``decompress_file`` writes a standard ``.onnx`` file instead.

Format (integers big-endian)::

    prefix (32 bytes)
      magic        8   b"\x89MPZ\r\n\x1a\n" (PNG-style: catches text-mode transfers; not .mpe's)
      version      u16 1
      flags        u16 0 (reserved; anything else is refused)
      header       u32 bytes of the JSON header
      graph        u64 bytes of the graph
      payload      u64 bytes of the payload
    header   UTF-8 JSON: {"weights_bytes": N, "tensors": [entry, ...]}
    graph    the serialized graph (io.to_split_bytes), weights external
    payload  codebooks (float32, little-endian) and DEFLATE streams, at offsets the entries give
    sha256   32 bytes over everything before it

An entry (one per tensor of the weights section, ascending ``offset``) has ``name``, ``dtype``,
``shape``, ``offset`` and ``nbytes`` (where the tensor lies in the weights section), ``op`` and
``bits`` (None for raw tensors), ``encoding`` and ``streams`` (name -> ``[offset, length,
decoded bytes, method]`` in the payload):

* ``raw``: stream ``raw`` holds the tensor's bytes;
* ``dense``: stream ``indices`` holds one uint8 per element into ``codebook`` (``[offset,
  length]`` in the payload; entry 0 is 0.0 when the tensor has exact zeros);
* ``sparse``: ``count`` kept values; stream ``indices`` holds one uint8 per kept value into the
  codebook, stream ``gaps`` their positions (``_coding.encode_gaps``); the rest are zeros.

Reading trusts nothing: sizes are checked against the file before it is read, the SHA-256
before the header is parsed, and every entry (types, bounds, alignment, stream sizes against
what DEFLATE can yield) before the weights buffer is allocated or a stream inflated. Every
failure is a ``CompressionError`` naming the file, the check and the tensor.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from modelpress._files import has_signature, write_atomically
from modelpress.compress import _coding
from modelpress.compress._header import Entry, parse_entries, parse_header
from modelpress.errors import CompressionError, ModelLoadError
from modelpress.ir import io

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "decode_compressed",
    "decompress_file",
    "is_compressed",
    "load_compressed",
    "load_compressed_model",
]

MAGIC = b"\x89MPZ\r\n\x1a\n"
# Decoding in threads pays from a few MiB of weights on; more than a few threads only contend.
_PARALLEL_MIN_BYTES = 4 * 2**20
_MAX_DECODE_WORKERS = 4
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">8sHHIQQ")
_HASH_BYTES = 32
_MAX_HEADER_BYTES = 64 * 2**20
Source = str | os.PathLike[str] | bytes


def pack(header: dict[str, Any], graph: bytes, payload: bytes) -> bytes:
    """Assemble a container: prefix, JSON header, graph, payload and the SHA-256 over them."""
    head = json.dumps(header, separators=(",", ":")).encode()
    body = (
        _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(head), len(graph), len(payload)) + head + graph + payload
    )
    return body + hashlib.sha256(body).digest()


def load_compressed(source: Source) -> tuple[bytes, dict[str, np.ndarray]]:
    """Decode an ``.mpz`` file (or its bytes) into what onnxruntime needs, in memory.

    Returns:
        (graph bytes, weights): the weights are read-only views of one fresh buffer laid out
        as ``io.to_split_bytes``'s weights section, by initializer name; pass both to
        ``runtime.session.create_session(graph, external_initializers=weights)``.

    Raises:
        CompressionError: the file is not an ``.mpz`` file, has an unsupported version, or is
            truncated, damaged or hostile; the message says which check failed.
        ModelLoadError: the file cannot be read (missing, a folder, no permission).
    """
    graph, _, views = decode_compressed(source)
    return graph, views


def decode_compressed(source: Source) -> tuple[bytes, memoryview, dict[str, np.ndarray]]:
    """``load_compressed`` plus the whole decoded weights section the views lie in.

    Returns:
        (graph bytes, weights section, weights by initializer name): what
        ``io.join_split_bytes(graph, weights)`` turns back into one serialized model.

    Raises:
        CompressionError, ModelLoadError: as ``load_compressed``.
    """
    graph, weights, entries = decode_container(source)
    return graph, weights, _views(graph, weights, entries, source)


def load_compressed_model(source: Source) -> ir.Model:
    """Decode an ``.mpz`` file (or its bytes) into an ``onnx_ir.Model``, weights inline.

    For tools that inspect the model (``modelpress bench`` reads its inputs); to run it,
    ``load_compressed`` is lighter (no protobuf as large as the model).

    Raises:
        CompressionError: as ``load_compressed``.
        ModelLoadError: as ``load_compressed``, or the decoded model is not valid ONNX.
    """
    graph, weights, entries = decode_container(source)
    _views(graph, weights, entries, source)  # the same checks as load_compressed
    return io.load(io.join_split_bytes(graph, weights))


def decompress_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Decode an ``.mpz`` file into a standard ``.onnx`` file, atomically (``io.save``).

    Raises:
        CompressionError: as ``load_compressed``.
        ModelLoadError: ``src`` cannot be read, or the decoded model is not valid ONNX.
        ModelSaveError: ``dst`` could not be written (nothing is left there).
    """
    graph, weights, entries = decode_container(src)
    _views(graph, weights, entries, src)  # the same checks as load_compressed, before anything is built
    return io.save(io.load(io.join_split_bytes(graph, weights)), dst)


def is_compressed(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with the ``.mpz`` signature (False when it cannot be read)."""
    return has_signature(path, MAGIC)


def write_atomic(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` through a temporary file in its folder, then rename.

    Raises:
        ModelSaveError: writing failed; any previous file at ``dest`` is untouched.
    """
    write_atomically(dest, lambda file: file.write(data), "the compressed model")


def _read(source: Source) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "<bytes>"
    path, where = Path(source), str(source)
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            prefix = file.read(_PREFIX.size)
            _check_prefix(prefix, size, where)
            return prefix + file.read(), where
    except OSError as e:
        raise ModelLoadError(f"{where}: cannot read the file ({e.strerror or e}); check the path") from e


def _check_prefix(prefix: bytes, size: int, where: str) -> tuple[int, int, int]:
    """(header, graph, payload) byte counts of a prefix checked against the file's ``size``."""
    if prefix[: len(MAGIC)] != MAGIC[: len(prefix)] or not prefix:
        raise CompressionError(
            f"{where}: not an .mpz file (it does not start with the .mpz signature); give a file "
            "written by `modelpress compress`"
        )
    if len(prefix) < _PREFIX.size:
        raise CompressionError(
            f"{where}: truncated: {size} bytes, shorter than the {_PREFIX.size}-byte prefix"
        )
    _, version, flags, header, graph, payload = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION or flags != 0:
        raise CompressionError(
            f"{where}: .mpz format version {version} (flags {flags}) is not supported; this modelpress "
            f"reads version {FORMAT_VERSION} (flags 0): upgrade modelpress, or the file is corrupt"
        )
    expected = _PREFIX.size + header + graph + payload + _HASH_BYTES
    if header > _MAX_HEADER_BYTES or graph >= io.PROTOBUF_LIMIT_BYTES or size != expected:
        what = "truncated" if size < expected else "corrupt or extended"
        raise CompressionError(
            f"{where}: {what}: the file has {size} bytes, its prefix declares {expected} (header "
            f"{header}, graph {graph}, payload {payload}, at most {_MAX_HEADER_BYTES} header bytes); "
            "copy the file again"
        )
    return header, graph, payload


def decode_container(source: Source) -> tuple[bytes, memoryview, list[Entry]]:
    """(graph, weights section, its entries) of a fully checked container (no graph checks yet)."""
    data, where = _read(source)
    header_bytes, graph_bytes, payload_bytes = _check_prefix(data[: _PREFIX.size], len(data), where)
    if hashlib.sha256(memoryview(data)[:-_HASH_BYTES]).digest() != data[-_HASH_BYTES:]:
        raise CompressionError(
            f"{where}: SHA-256 mismatch: bytes of the file were altered or damaged in transfer; copy it again"
        )
    start = _PREFIX.size + header_bytes
    header = parse_header(data[_PREFIX.size : start], where)
    graph = data[start : start + graph_bytes]
    payload = memoryview(data)[start + graph_bytes : start + graph_bytes + payload_bytes]
    weights_bytes = header.get("weights_bytes")
    entries = parse_entries(header.get("tensors"), weights_bytes, len(payload), where)
    buffer = mmap.mmap(-1, weights_bytes) if weights_bytes else bytearray()  # fresh, zeroed, page-aligned

    def decode(entry: Entry) -> None:
        _decode_entry(entry, payload, buffer, f"{where}: tensor '{entry.name}'")

    # Each tensor fills its own slice of the buffer, and inflating, hashing and numpy's take
    # release the GIL: large models decode on every core (MiniLM: 0.33 -> 0.23 s on 2 cores).
    workers = min(os.cpu_count() or 1, _MAX_DECODE_WORKERS, len(entries))
    if workers < 2 or len(buffer) < _PARALLEL_MIN_BYTES:
        for entry in entries:
            decode(entry)
    else:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="modelpress-mpz") as pool:
            # Largest first, so one big table does not start last; list() re-raises the first error.
            list(pool.map(decode, sorted(entries, key=lambda e: -e.nbytes)))
    return graph, memoryview(buffer), entries


def _decode_entry(entry: Entry, payload: memoryview, buffer: mmap.mmap | bytearray, where: str) -> None:
    def stream(key: str) -> bytes:
        start, length, decoded = entry.streams[key]
        return _coding.inflate(payload[start : start + length], decoded, f"{where}: stream '{key}'")

    if entry.encoding == "raw":
        buffer[entry.offset : entry.offset + entry.nbytes] = stream("raw")
        return
    assert entry.dtype is not None  # checked by _parse_entry
    start, length = entry.codebook
    codebook = np.frombuffer(payload[start : start + length], dtype="<f4").astype(entry.dtype)
    indices = np.frombuffer(stream("indices"), dtype=np.uint8)
    if indices.size and int(indices.max()) >= codebook.size:
        raise CompressionError(
            f"{where}: an index exceeds its {codebook.size}-entry codebook; the file is corrupt"
        )
    target = np.frombuffer(buffer, dtype=entry.dtype, count=entry.elements, offset=entry.offset)
    if entry.encoding == "dense":
        np.take(codebook, indices, out=target)
    else:
        gaps = np.frombuffer(stream("gaps"), dtype=np.uint8)
        target[_coding.decode_gaps(gaps, entry.elements, entry.count, where)] = codebook[indices]


def _views(graph: bytes, weights: memoryview, entries: list[Entry], source: Source) -> dict[str, np.ndarray]:
    """The graph's weights as views of ``weights``, checked against the header's layout."""
    where = "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else str(source)
    try:
        arrays = io.buffer_weights(graph, weights)
    except ModelLoadError as e:
        raise CompressionError(f"{where}: the graph does not match its weights section: {e}") from e
    base = np.frombuffer(weights, dtype=np.uint8).ctypes.data if len(weights) else 0
    layout = {name: (array.ctypes.data - base, array.nbytes) for name, array in arrays.items()}
    if layout != {entry.name: (entry.offset, entry.nbytes) for entry in entries}:
        raise CompressionError(
            f"{where}: the graph's external weights {sorted(layout)} are not the tensors the header lays "
            "out in the weights section (names, offsets or sizes differ); the file is corrupt"
        )
    return arrays
