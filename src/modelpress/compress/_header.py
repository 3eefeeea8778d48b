"""Validation of the ``.mpz`` JSON header: every entry checked before anything is allocated.

The header is data from an untrusted file (its SHA-256 proves integrity, not good intent: anyone
can recompute it). Each entry must have the right types, lie inside the payload and inside the
weights section at a 64-byte aligned offset right after its predecessor, and declare stream
sizes that its encoding and DEFLATE's 1032:1 ceiling allow (``_coding``). So the weights
buffer and every inflated stream are bounded by bytes the file really holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from modelpress.compress import _coding
from modelpress.errors import CompressionError

__all__ = ["Entry", "parse_entries", "parse_header"]

ALIGN = 64
_SHARED_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
_MAX_CODEBOOK = 256  # 256 centroids, or 255 and the zero entry


@dataclasses.dataclass(frozen=True)
class Entry:
    """One validated header entry (see the module docstring)."""

    name: str
    encoding: str
    offset: int
    nbytes: int
    elements: int
    dtype: np.dtype | None
    codebook: tuple[int, int]
    count: int
    streams: dict[str, tuple[int, int, int]]


def parse_header(raw: bytes, where: str) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CompressionError(f"{where}: corrupt header: not UTF-8 JSON ({e}); the file is damaged") from e
    if not isinstance(header, dict):
        raise CompressionError(f"{where}: corrupt header: not a JSON object; the file is damaged")
    return header


def parse_entries(tensors: object, weights_bytes: object, payload_bytes: int, where: str) -> list[Entry]:
    if not isinstance(tensors, list) or not _is_count(weights_bytes):
        raise CompressionError(f"{where}: corrupt header: no 'tensors' list or 'weights_bytes' count")
    entries: list[Entry] = []
    end = 0
    for index, raw in enumerate(tensors):
        entry = _parse_entry(raw, payload_bytes, f"{where}: corrupt header: tensor #{index}")
        if entry.offset % ALIGN or entry.offset < end or entry.offset - end >= ALIGN:
            raise CompressionError(
                f"{where}: corrupt header: tensor '{entry.name}' at offset {entry.offset} of the weights "
                f"section breaks the layout (previous tensor ends at {end}, tensors are {ALIGN}-aligned)"
            )
        end = entry.offset + entry.nbytes
        entries.append(entry)
    if end != weights_bytes or len({e.name for e in entries}) != len(entries):
        raise CompressionError(
            f"{where}: corrupt header: the tensors end at byte {end} of a weights section declared "
            f"{weights_bytes} bytes long, or a tensor name repeats"
        )
    return entries


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_entry(raw: object, payload_bytes: int, where: str) -> Entry:
    fields = raw if isinstance(raw, dict) else {}
    name, encoding, shape = fields.get("name"), fields.get("encoding"), fields.get("shape")
    offset, nbytes, count = fields.get("offset", -1), fields.get("nbytes", -1), fields.get("count", 0)
    streams, codebook = fields.get("streams"), fields.get("codebook", [0, 0])
    valid = (
        isinstance(name, str)
        and encoding in ("raw", "dense", "sparse")
        and isinstance(shape, list)
        and all(_is_count(d) for d in shape)
        and all(_is_count(v) for v in (offset, nbytes, count))
        and isinstance(streams, dict)
        and all(isinstance(s, list) and len(s) == 4 and all(map(_is_count, s[:3])) for s in streams.values())
        and isinstance(codebook, list)
        and len(codebook) == 2
        and all(map(_is_count, codebook))
    )
    if not valid:
        raise CompressionError(f"{where}: a field is missing or has the wrong type; the file is corrupt")
    assert isinstance(name, str) and isinstance(shape, list) and isinstance(streams, dict)  # for mypy
    where = f"{where} ('{name}')"
    spans = {key: (s[0], s[1], s[2]) for key, s in streams.items()}
    for start, length in [(s[0], s[1]) for s in spans.values()] + [tuple(codebook)]:
        if start + length > payload_bytes:
            raise CompressionError(f"{where}: a stream lies outside the {payload_bytes}-byte payload")
    elements = math.prod(shape)
    dtype = _SHARED_DTYPES.get(str(fields.get("dtype"))) if encoding != "raw" else None
    expected = {"raw": {"raw": nbytes}, "dense": {"indices": elements}}.get(str(encoding))
    if encoding == "sparse":
        gaps = spans.get("gaps", (0, 0, 0))[2]
        expected = {"indices": count, "gaps": gaps} if _coding.gap_stream_can_cover(gaps, elements) else None
    sizes_ok = expected is not None and {k: s[2] for k, s in spans.items()} == expected
    shared_ok = encoding == "raw" or (
        dtype is not None
        and nbytes == elements * dtype.itemsize
        and codebook[1] % 4 == 0
        and codebook[1] <= 4 * _MAX_CODEBOOK
        and count <= elements
    )
    if not (sizes_ok and shared_ok and all(_coding.can_inflate_to(s[1], s[2]) for s in spans.values())):
        raise CompressionError(
            f"{where}: its {encoding} streams {spans}, dtype, shape {shape} or codebook {codebook} do not "
            f"agree with its {nbytes} bytes; the file is corrupt or hostile"
        )
    book = (codebook[0], codebook[1])
    return Entry(name, str(encoding), int(offset), int(nbytes), elements, dtype, book, int(count), spans)
