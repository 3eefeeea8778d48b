r"""Encrypted models: the ``.mpe`` container (AES-256-GCM in authenticated chunks).

What is encrypted is the whole model with every weight (external-data weights are read and
embedded), so one ``.mpe`` file replaces the ``.onnx`` file and its data files. Decryption
happens in memory only: the plaintext is handed to ``modelpress.ir.io.load`` or to onnxruntime
and never written to disk. Models whose plaintext reaches protobuf's 2 GiB limit are refused:
a multi-member container for them is not implemented yet.

The plaintext is, by version:

* version 1: the serialized ONNX model, weights inline (``modelpress.ir.io.to_bytes``);
* version 2 (written by default): ``u64(graph bytes) || graph || zero padding || weights``,
  from ``modelpress.ir.io.to_split_bytes``: the graph's initializers of 1 KiB or more are
  external tensors pointing into the weights section, which starts at a 64-byte aligned
  offset and keeps every tensor 64-byte aligned. onnxruntime then parses only the small graph
  and takes the weights as views of the decrypted buffer (``decrypt_model``), instead of
  copying and parsing a protobuf as large as the model: loading is about twice as fast.

* version 3 (written for an ``.mpz`` input): the Deep Compression container
  (``modelpress.compress.mpz``) byte for byte, so the weights stay coded in the ``.mpe`` (as
  small as the ``.mpz``) and are decoded in memory after decryption, into one buffer that
  onnxruntime uses in place, as for version 2.

All versions share the container below; only the version field differs, and it is covered by
the header tag and by every chunk's associated data like every other header byte.

Container format (all integers big-endian)::

    header (64 bytes)
      magic          8   b"\x89MPE\r\n\x1a\n" (PNG-style: catches text-mode transfers)
      version        u16 1 or 2
      cipher         u8  1 = AES-256-GCM, per-file keys from HKDF-SHA256
      flags          u8  0 (reserved; anything else is refused)
      key id         8   HKDF-SHA256(key, info="modelpress .mpe key id v1"): names the key, not it
      salt           16  random per file (the file id)
      nonce prefix   8   random per file
      chunk bytes    u32 plaintext bytes per chunk (the last chunk may be shorter)
      plaintext      u64 total plaintext bytes
      chunk count    u64 ceil(plaintext / chunk bytes), at least 1
    header tag (32 bytes)  HMAC-SHA256(mac key, header)
    chunk 0 .. chunk N-1   AES-256-GCM(file key, nonce, plaintext chunk, aad) = ciphertext + 16-byte tag

Per file, ``file key || mac key = HKDF-SHA256(key, salt, info="modelpress .mpe v1 file keys")``.
Chunk ``i`` uses ``nonce = nonce prefix || u32(i)`` and ``aad = header || u64(i) || u8(i == N-1)``.
So every chunk is bound to this very header (hence to this file's salt, sizes and key id), to
its position, and to whether it is the last one: chunks cannot be altered, reordered, dropped,
duplicated, cut at a chunk boundary or moved from another file without failing authentication.
Nonces never repeat: each file has its own key, and within a file each chunk its own index.

Every failure to decrypt is a ``ProtectionError`` that says which check failed: not an
``.mpe`` file, unsupported version or cipher, a corrupt header, a wrong key (checked by key id
before any decryption), a header that fails authentication, a truncated or extended file, a
chunk that fails authentication (altered, moved, or under a header from another file). When
one is raised, no plaintext is returned.
"""

from __future__ import annotations

import dataclasses
import hmac as hmac_module
import logging
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx_ir as ir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelpress._files import has_signature, write_atomically
from modelpress.errors import CompressionError, ModelLoadError, ModelSaveError, ProtectionError, UsageError
from modelpress.ir import io
from modelpress.protect._sources import AnonymousBuffer, Source, open_source, output_buffer
from modelpress.protect.keys import Key, key_id, resolve_key

__all__ = [
    "COMPRESSED_VERSION",
    "DEFAULT_CHUNK_BYTES",
    "FORMAT_VERSION",
    "MAGIC",
    "DecryptedModel",
    "MpeHeader",
    "decrypt_model",
    "decrypt_model_bytes",
    "encrypt_model",
    "is_encrypted",
    "load_encrypted",
    "read_header",
]

logger = logging.getLogger(__name__)

MAGIC = b"\x89MPE\r\n\x1a\n"
# The version ``encrypt_model`` writes; every version in _VERSIONS is read.
FORMAT_VERSION = 2
# The version of an encrypted .mpz (chosen by the input, not by format_version).
COMPRESSED_VERSION = 3
_VERSIONS = (1, 2, COMPRESSED_VERSION)
# Version 2: the graph's length prefix, and the alignment of the weights section.
_GRAPH_LENGTH = struct.Struct(">Q")
_WEIGHTS_ALIGN = 64
DEFAULT_CHUNK_BYTES = 4 * 2**20
_CIPHER_AES_256_GCM = 1
# Chunk sizes a header may declare: small enough that a hostile header cannot make us allocate
# much before the file size has been checked.
_MIN_CHUNK_BYTES = 256
_MAX_CHUNK_BYTES = 64 * 2**20
# The plaintext is (version 1) or is turned back into (version 2) one protobuf, under 2 GiB.
_MAX_PLAINTEXT_BYTES = io.PROTOBUF_LIMIT_BYTES
_HEADER = struct.Struct(">8sHBB8s16s8sIQQ")
_HEADER_TAG_BYTES = 32
_PREFIX_BYTES = _HEADER.size + _HEADER_TAG_BYTES
_GCM_TAG_BYTES = 16
_FILE_KEYS_INFO = b"modelpress .mpe v1 file keys"
# On a failed chunk, look for it at other positions only in files of at most this many chunks.
_MAX_DIAGNOSED_CHUNKS = 1024
# Decrypt with several threads only chunks this large (and then with at most this many threads).
_PARALLEL_MIN_CHUNK_BYTES = 2**20
_MAX_WORKERS = 8


@dataclasses.dataclass(frozen=True)
class MpeHeader:
    """The header of an ``.mpe`` file (public metadata: it holds nothing secret).

    Attributes:
        version: Container format version.
        cipher: Cipher id (1 = AES-256-GCM with HKDF-SHA256 per-file keys).
        key_id: 8-byte id of the key the file was encrypted with (see ``keys.key_id``).
        salt: 16 random bytes, unique to the file; salt of its key derivation.
        nonce_prefix: 8 random bytes, the first part of every chunk's nonce.
        chunk_bytes: Plaintext bytes per chunk.
        plaintext_bytes: Size of the serialized model.
        chunk_count: Number of chunks.
    """

    version: int
    cipher: int
    key_id: bytes
    salt: bytes
    nonce_prefix: bytes
    chunk_bytes: int
    plaintext_bytes: int
    chunk_count: int

    @property
    def file_bytes(self) -> int:
        """The exact size of the whole ``.mpe`` file this header describes."""
        return _PREFIX_BYTES + self.plaintext_bytes + self.chunk_count * _GCM_TAG_BYTES

    def _pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            self.version,
            self.cipher,
            0,
            self.key_id,
            self.salt,
            self.nonce_prefix,
            self.chunk_bytes,
            self.plaintext_bytes,
            self.chunk_count,
        )

    def _chunk_plaintext_bytes(self, index: int) -> int:
        return min(self.chunk_bytes, self.plaintext_bytes - index * self.chunk_bytes)

    def _chunk_offset(self, index: int) -> int:
        return _PREFIX_BYTES + index * (self.chunk_bytes + _GCM_TAG_BYTES)


@dataclasses.dataclass(frozen=True)
class DecryptedModel:
    """A decrypted model, ready for ``create_session(model_bytes, external_initializers=...)``.

    Attributes:
        model_bytes: The serialized model: for version 2 the graph alone, whose large weights
            are external tensors supplied by ``external_initializers``; for version 1 the
            whole model with its weights inline.
        external_initializers: Read-only arrays by initializer name, views of the decrypted
            buffer (no copy); they keep the buffer alive. Empty for version 1.
    """

    model_bytes: bytes
    external_initializers: dict[str, np.ndarray]
    # Version 2: the whole weights section (the arrays above are views of it), for ``to_model``.
    _weights: memoryview | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_model(self) -> ir.Model:
        """The model as an ``onnx_ir.Model`` (``modelpress.ir.io.load``), without decrypting again.

        For version 2 the weights are copied back inline first (``io.join_split_bytes``), so
        the model no longer depends on the decrypted buffer.

        Raises:
            ModelLoadError: the decrypted model is not a valid ONNX model.
        """
        if self._weights is None:
            return io.load(self.model_bytes)
        return io.load(io.join_split_bytes(self.model_bytes, self._weights))


def encrypt_model(
    model: ir.Model | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    key: Key,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    format_version: int = FORMAT_VERSION,
) -> MpeHeader:
    """Encrypt a model into an ``.mpe`` file, atomically (temporary file, then rename).

    Args:
        model: An ``onnx_ir`` model, or the path of an ``.onnx`` file (loaded and validated
            with ``modelpress.ir.io.load``; its external data is embedded), or the path of an
            ``.mpz`` file (checked to decode, then encrypted as it is: version 3).
        out_path: The ``.mpe`` file to write; an existing file is replaced only on success.
        key: 32 key bytes or a ``KeySource``.
        chunk_bytes: Plaintext bytes per chunk (256 B to 64 MiB).
        format_version: 2 (graph and weights apart, fast to load) or 1 (for older readers);
            ignored for an ``.mpz`` input.

    Returns:
        The header written (sizes, key id).

    Raises:
        UsageError: ``chunk_bytes`` or ``format_version`` is out of range.
        ProtectionError: the key is unusable, or the model is too large for one protobuf.
        ModelLoadError: ``model`` is a path that is not a valid ONNX model.
        CompressionError: ``model`` is an ``.mpz`` file that does not decode.
        ModelSaveError: the file could not be written; nothing was left at ``out_path``.
    """
    if not _MIN_CHUNK_BYTES <= chunk_bytes <= _MAX_CHUNK_BYTES:
        raise UsageError(
            f"chunk size {chunk_bytes} is out of range; choose {_MIN_CHUNK_BYTES} to {_MAX_CHUNK_BYTES} bytes"
        )
    if format_version not in (1, 2):
        raise UsageError(f".mpe format version {format_version} cannot be written; choose 1 or 2")
    master = resolve_key(key)
    if not isinstance(model, ir.Model) and _is_mpz(model):
        plaintext, format_version = _compressed_plaintext(model), COMPRESSED_VERSION
    else:
        plaintext = _model_plaintext(model, format_version)
    header = write_atomically(
        Path(out_path),
        lambda file: _write_container(file, plaintext, master, chunk_bytes, format_version),
        "the encrypted model",
    )
    dest = Path(out_path)
    logger.info(
        "encrypted %d bytes into %s (%d chunks, key id %s)",
        header.plaintext_bytes,
        dest,
        header.chunk_count,
        header.key_id.hex(),
    )
    return header


def decrypt_model_bytes(source: str | os.PathLike[str] | bytes, key: Key) -> bytes:
    """Decrypt an ``.mpe`` file (or its bytes) into the serialized model, in memory only.

    Args:
        source: Path of the ``.mpe`` file, or its content.
        key: 32 key bytes or a ``KeySource``.

    For a version 2 file this rejoins graph and weights (a copy of the weights); to run a
    model, ``decrypt_model`` is faster.

    Returns:
        The serialized ONNX model (all weights inline), e.g. for ``create_session(bytes)``.

    Raises:
        ProtectionError: the key is unusable or wrong, or the file is not a complete,
            untampered ``.mpe`` file of a supported version; the message says which.
        ModelLoadError: a version 2 plaintext is malformed (only a key holder can make one).
    """
    header, plaintext = _decrypt(source, key)
    if header.version == 1:
        return bytes(plaintext)  # already bytes: no copy
    if header.version == COMPRESSED_VERSION:
        graph, weights, _ = _decode_mpz(plaintext, source)
        return io.join_split_bytes(graph, weights)
    return io.join_split_bytes(*_split_plaintext(plaintext))


def decrypt_model(source: str | os.PathLike[str] | bytes, key: Key) -> DecryptedModel:
    """Decrypt an ``.mpe`` file in memory into what onnxruntime needs, copying no weight.

    This is the fast way to run an encrypted model (``modelpress.runtime.run`` uses it): for a
    version 2 file, onnxruntime parses only the graph and reads the weights in place from the
    decrypted buffer, which lives as long as the arrays (and the session holding them) do.
    The buffer is anonymous memory whose pages a helper thread maps just ahead of the
    decryption (``_sources.AnonymousBuffer``); ``DecryptedModel.to_model`` turns the result
    into an ``onnx_ir.Model`` without decrypting the file again.

    Raises:
        ProtectionError: as ``decrypt_model_bytes``.
        ModelLoadError: the decrypted graph is malformed or points outside the weights.
    """
    header, plaintext = _decrypt(source, key)
    if header.version == 1:
        return DecryptedModel(bytes(plaintext), {})
    if header.version == COMPRESSED_VERSION:
        graph, weights, views = _decode_mpz(plaintext, source)
        return DecryptedModel(graph, views, weights)
    graph, weights = _split_plaintext(plaintext)
    return DecryptedModel(graph, io.buffer_weights(graph, weights), weights)


def load_encrypted(source: str | os.PathLike[str] | bytes, key: Key) -> ir.Model:
    """Decrypt an ``.mpe`` file in memory and load the model with ``modelpress.ir.io.load``.

    Raises:
        ProtectionError: as ``decrypt_model_bytes``.
        ModelLoadError: the decrypted bytes are not a valid ONNX model.
    """
    return io.load(decrypt_model_bytes(source, key))


def read_header(source: str | os.PathLike[str] | bytes) -> MpeHeader:
    """Parse and sanity-check the header of an ``.mpe`` file without the key.

    The header is *not* authenticated here (that needs the key): use it to see which key id a
    file needs, never to trust its content.

    Raises:
        ProtectionError: not an ``.mpe`` file, unsupported version or cipher, corrupt header.
    """
    with open_source(source) as opened:
        return _parse_header(opened)[0]


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with the ``.mpe`` signature (False when it cannot be read)."""
    return has_signature(path, MAGIC)


def _model_plaintext(model: ir.Model | str | os.PathLike[str], version: int) -> bytes:
    loaded = model if isinstance(model, ir.Model) else io.load(model)
    weights = sum(
        io.tensor_nbytes(value.const_value)
        for graph in loaded.graphs()
        for value in graph.initializers.values()
        if value.const_value is not None
    )
    if weights < _MAX_PLAINTEXT_BYTES:
        try:
            if version == 1:
                return io.to_bytes(loaded)
            graph, weight_bytes = io.to_split_bytes(loaded)
            head = _GRAPH_LENGTH.pack(len(graph)) + graph
            plaintext = head + bytes(-len(head) % _WEIGHTS_ALIGN) + weight_bytes
            if len(plaintext) < _MAX_PLAINTEXT_BYTES:
                return plaintext
        except ModelSaveError:
            pass  # too large once the graph is serialized: same answer as below
    raise ProtectionError(
        f"the model needs over 2 GiB with its weights inline ({weights / 2**30:.2f} GiB of weights); "
        ".mpe files are loaded through one in-memory protobuf, so models this large cannot be encrypted yet"
    )


def _is_mpz(path: str | os.PathLike[str]) -> bool:
    from modelpress.compress.mpz import MAGIC as MPZ_MAGIC  # compress imports runtime, which imports us

    return has_signature(path, MPZ_MAGIC)


def _compressed_plaintext(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an ``.mpz`` file, checked to decode (nothing broken gets encrypted)."""
    from modelpress.compress.mpz import load_compressed

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the model: {e}") from e
    load_compressed(data)
    return data


def _decode_mpz(
    plaintext: bytes | memoryview, source: str | os.PathLike[str] | bytes
) -> tuple[bytes, memoryview, dict[str, np.ndarray]]:
    """Decode a version 3 plaintext; a container that does not decode is a ProtectionError."""
    from modelpress.compress.mpz import decode_compressed

    where = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        return decode_compressed(bytes(plaintext))
    except (CompressionError, ModelLoadError) as e:  # authenticated, so only a key holder made it
        raise ProtectionError(f"{where}: the decrypted .mpz container does not decode: {e}") from e


def _split_plaintext(plaintext: bytes | memoryview) -> tuple[bytes, memoryview]:
    """(graph, weights) of a version 2 plaintext; the weights stay a view of the buffer."""
    graph_bytes = _GRAPH_LENGTH.unpack_from(plaintext)[0] if len(plaintext) >= _GRAPH_LENGTH.size else -1
    start = _GRAPH_LENGTH.size + graph_bytes
    if graph_bytes < 0 or start > len(plaintext):
        raise ModelLoadError(
            f"<decrypted>: the graph's length ({graph_bytes} bytes) does not fit in the "
            f"{len(plaintext)}-byte plaintext: the model is corrupt"
        )
    graph = bytes(plaintext[_GRAPH_LENGTH.size : start])
    return graph, memoryview(plaintext)[min(len(plaintext), start + -start % _WEIGHTS_ALIGN) :]


def _file_keys(master: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """(file key, mac key) of one file: HKDF-SHA256 of the key, salted with the file's salt."""
    derived = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=_FILE_KEYS_INFO).derive(master)
    return derived[:32], derived[32:]


def _header_tag(mac_key: bytes, raw: bytes) -> bytes:
    mac = hmac.HMAC(mac_key, hashes.SHA256())
    mac.update(raw)
    return mac.finalize()


def _nonce(header: MpeHeader, index: int) -> bytes:
    return header.nonce_prefix + struct.pack(">I", index)


def _aad(raw: bytes, index: int, count: int) -> bytes:
    return raw + struct.pack(">QB", index, index == count - 1)


def _chunk_count(plaintext_bytes: int, chunk_bytes: int) -> int:
    return max(1, -(-plaintext_bytes // chunk_bytes))


def _write_container(
    stream: BinaryIO, plaintext: bytes, master: bytes, chunk_bytes: int, version: int = FORMAT_VERSION
) -> MpeHeader:
    header = MpeHeader(
        version=version,
        cipher=_CIPHER_AES_256_GCM,
        key_id=bytes.fromhex(key_id(master)),
        salt=os.urandom(16),
        nonce_prefix=os.urandom(8),
        chunk_bytes=chunk_bytes,
        plaintext_bytes=len(plaintext),
        chunk_count=_chunk_count(len(plaintext), chunk_bytes),
    )
    raw = header._pack()
    file_key, mac_key = _file_keys(master, header.salt)
    aead = AESGCM(file_key)
    stream.write(raw)
    stream.write(_header_tag(mac_key, raw))
    view = memoryview(plaintext)
    for index in range(header.chunk_count):
        piece = view[index * chunk_bytes : (index + 1) * chunk_bytes]
        stream.write(aead.encrypt(_nonce(header, index), piece, _aad(raw, index, header.chunk_count)))
    return header


def _parse_header(source: Source) -> tuple[MpeHeader, bytes]:
    """Read the header and its tag; check all that needs no key. Returns (header, header + tag)."""
    where = source.where
    head = bytes(source.read(0, _PREFIX_BYTES, bytearray(_PREFIX_BYTES)))
    if head[: len(MAGIC)] != MAGIC:
        if head and MAGIC.startswith(head):
            raise ProtectionError(f"{where}: truncated: only {len(head)} bytes of an .mpe signature")
        raise ProtectionError(
            f"{where}: not an .mpe file (it does not start with the .mpe signature); give a file "
            "written by `modelpress protect --encrypt`, or run a plain .onnx model without a key"
        )
    if len(head) >= len(MAGIC) + 2:
        (version,) = struct.unpack_from(">H", head, len(MAGIC))
        if version not in _VERSIONS:
            raise ProtectionError(
                f"{where}: .mpe format version {version} is not supported (this modelpress reads versions "
                f"{', '.join(map(str, _VERSIONS))}); upgrade modelpress, or the file is corrupt"
            )
    if len(head) < _PREFIX_BYTES:
        raise ProtectionError(
            f"{where}: truncated: {len(head)} bytes, shorter than the {_PREFIX_BYTES}-byte .mpe header; "
            "copy the file again"
        )
    _, version, cipher, flags, kid, salt, prefix, chunk_bytes, plaintext_bytes, count = _HEADER.unpack_from(
        head
    )
    if cipher != _CIPHER_AES_256_GCM or flags != 0:
        raise ProtectionError(
            f"{where}: unsupported cipher id {cipher} / flags {flags} (this modelpress reads cipher "
            f"{_CIPHER_AES_256_GCM}, flags 0); upgrade modelpress, or the file is corrupt"
        )
    if not _MIN_CHUNK_BYTES <= chunk_bytes <= _MAX_CHUNK_BYTES or plaintext_bytes > _MAX_PLAINTEXT_BYTES:
        raise ProtectionError(
            f"{where}: corrupt header: chunk size {chunk_bytes} or plaintext size {plaintext_bytes} "
            "is out of range; the file was altered"
        )
    if count != _chunk_count(plaintext_bytes, chunk_bytes):
        expected = _chunk_count(plaintext_bytes, chunk_bytes)
        raise ProtectionError(
            f"{where}: corrupt header: chunk count mismatch: it declares {count} chunks, but "
            f"{plaintext_bytes} bytes in chunks of {chunk_bytes} make {expected}; the file was altered"
        )
    header = MpeHeader(version, cipher, kid, salt, prefix, chunk_bytes, plaintext_bytes, count)
    return header, head


def _decrypt(source: str | os.PathLike[str] | bytes, key: Key) -> tuple[MpeHeader, bytes | memoryview]:
    """Authenticate and decrypt a whole file: (its header, the plaintext)."""
    master = resolve_key(key)
    with open_source(source) as opened:
        header, head = _parse_header(opened)
        return header, _decrypt_body(opened, header, head, master)


def _decrypt_body(source: Source, header: MpeHeader, head: bytes, master: bytes) -> bytes | memoryview:
    """The plaintext, a view of a fresh buffer: ``bytes`` for version 1, page-aligned for 2."""
    where, raw = source.where, head[: _HEADER.size]
    given = key_id(master)
    if header.key_id.hex() != given:
        raise ProtectionError(
            f"{where}: wrong key: the file was encrypted with key id {header.key_id.hex()}, the key given "
            f"has key id {given} (or the header's key id was altered); use the key it was encrypted with"
        )
    file_key, mac_key = _file_keys(master, header.salt)
    if not hmac_module.compare_digest(_header_tag(mac_key, raw), head[_HEADER.size :]):
        raise ProtectionError(
            f"{where}: the header failed authentication: it was altered; the file cannot be trusted"
        )
    if source.size != header.file_bytes:
        what = (
            "truncated (cut short, or chunks dropped)"
            if source.size < header.file_bytes
            else "extended (bytes appended, or chunks duplicated)"
        )
        raise ProtectionError(
            f"{where}: {what}: the file has {source.size} bytes, its header declares {header.file_bytes} "
            f"({header.chunk_count} chunks); copy the file again (a header from another file also gives this)"
        )
    data: bytes | bytearray | mmap.mmap
    if header.version == 1 or not header.plaintext_bytes:
        data, out = output_buffer(header.plaintext_bytes)
        failure = _decrypt_all(source, header, raw, file_key, out, None)
    else:
        # Anonymous memory: page-aligned (so are the weight views), and no file backs it.
        with AnonymousBuffer(header.plaintext_bytes) as buffer:
            data, out = buffer.memory, memoryview(buffer.memory)
            failure = _decrypt_all(source, header, raw, file_key, out, buffer.wait_ready)
    if failure is not None:
        index, problem = failure
        if problem == "short":
            raise ProtectionError(f"{where}: truncated while reading chunk {index}: the file changed")
        raise _chunk_error(source, header, raw, AESGCM(file_key), index)
    if isinstance(data, bytearray):  # output_buffer's fallback: one more copy, as bytes
        return bytes(data)
    return data if isinstance(data, bytes) else memoryview(data)


def _decrypt_all(
    source: Source,
    header: MpeHeader,
    raw: bytes,
    file_key: bytes,
    out: memoryview,
    wait_ready: Callable[[int], None] | None,
) -> tuple[int, str] | None:
    try:
        return _decrypt_chunks(source, header, raw, file_key, out, wait_ready)
    finally:
        out.release()


def _decrypt_chunks(
    source: Source,
    header: MpeHeader,
    raw: bytes,
    file_key: bytes,
    out: memoryview,
    wait_ready: Callable[[int], None] | None = None,
) -> tuple[int, str] | None:
    """Decrypt every chunk into ``out``; returns (index, "short" or "tag") of the first failure.

    Large chunks are decrypted by a few threads at once, each with its own cipher object and
    read buffer; every chunk writes its own slice of ``out``. ``AESGCM.decrypt_into`` releases
    the GIL (checked with ``cryptography`` 50: other Python threads run during a call), so the
    threads overlap when a core is free; reading a chunk (``os.preadv``) releases it too.
    """
    local = threading.local()

    def decrypt_one(index: int) -> str | None:
        if not hasattr(local, "aead"):
            local.aead, local.scratch = AESGCM(file_key), bytearray(header.chunk_bytes + _GCM_TAG_BYTES)
        length = header._chunk_plaintext_bytes(index)
        sealed = source.read(header._chunk_offset(index), length + _GCM_TAG_BYTES, local.scratch)
        if len(sealed) != length + _GCM_TAG_BYTES:
            return "short"
        start = index * header.chunk_bytes
        aad = _aad(raw, index, header.chunk_count)
        if wait_ready is not None:
            wait_ready(start + length)
        try:
            _decrypt_into(local.aead, _nonce(header, index), sealed, aad, out[start : start + length])
        except InvalidTag:
            return "tag"
        return None

    workers = min(os.cpu_count() or 1, _MAX_WORKERS, header.chunk_count)
    if header.chunk_bytes < _PARALLEL_MIN_CHUNK_BYTES or workers < 2:
        problems: Iterator[str | None] = map(decrypt_one, range(header.chunk_count))
        return next(((i, p) for i, p in enumerate(problems) if p is not None), None)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="modelpress-decrypt")
    try:
        problems = pool.map(decrypt_one, range(header.chunk_count))
        return next(((i, p) for i, p in enumerate(problems) if p is not None), None)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decrypt_into(aead: AESGCM, nonce: bytes, sealed: memoryview, aad: bytes, target: memoryview) -> None:
    if _HAS_DECRYPT_INTO:
        aead.decrypt_into(nonce, sealed, aad, target)
    else:  # older cryptography: one more copy per chunk
        target[:] = aead.decrypt(nonce, bytes(sealed), aad)


_HAS_DECRYPT_INTO = hasattr(AESGCM, "decrypt_into")


def _chunk_error(source: Source, header: MpeHeader, raw: bytes, aead: AESGCM, index: int) -> ProtectionError:
    """Say why chunk ``index`` failed: moved from another position, a foreign header, or altered."""
    where, count = source.where, header.chunk_count
    scratch = bytearray(header.chunk_bytes + _GCM_TAG_BYTES)

    def chunk(position: int) -> bytes:
        length = header._chunk_plaintext_bytes(position) + _GCM_TAG_BYTES
        return bytes(source.read(header._chunk_offset(position), length, scratch))

    sealed = chunk(index)
    if count <= _MAX_DIAGNOSED_CHUNKS:
        for other in range(count):
            if other != index and _opens(aead, header, raw, other, sealed):
                return ProtectionError(
                    f"{where}: chunk {index} of {count} holds the data of chunk {other}: chunks were "
                    "reordered or duplicated; the file cannot be trusted"
                )
    if index == 0 and count >= 2 and not _opens(aead, header, raw, count - 1, chunk(count - 1)):
        return ProtectionError(
            f"{where}: neither the first nor the last chunk authenticates under this header: the header "
            "comes from another file encrypted with the same key (or the whole body was replaced)"
        )
    return ProtectionError(
        f"{where}: chunk {index} of {count} failed authentication: bytes in it were altered, or it comes "
        "from another file; the file cannot be trusted"
    )


def _opens(aead: AESGCM, header: MpeHeader, raw: bytes, index: int, sealed: bytes) -> bool:
    if len(sealed) != header._chunk_plaintext_bytes(index) + _GCM_TAG_BYTES:
        return False
    try:
        aead.decrypt(_nonce(header, index), sealed, _aad(raw, index, header.chunk_count))
    except InvalidTag:
        return False
    return True
