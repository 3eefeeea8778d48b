"""Encode a split model (graph + weights section) into ``.mpz`` bytes (format: ``mpz.py``).

Each tensor of the weights section becomes one header entry. A shared tensor (weight sharing
ran on it) is stored as its codebook and Huffman-coded indices, ``dense`` (one index per
element; code 0 is the exact zero when the tensor has zeros) or ``sparse`` (one index per kept
value plus the relative position gaps): both are encoded when the tensor has zeros and the
smaller is kept, which is how "sparse enough that it pays" is decided, by measurement.
Everything else is stored raw, DEFLATE-compressed. The encoder checks that each shared tensor
in the weights section is exactly ``SharedWeights.decode()``, so decoding is bit-exact.
"""

from __future__ import annotations

import collections.abc
import dataclasses

import numpy as np

from modelpress.compress import _coding, mpz
from modelpress.compress.sharing import SharedWeights
from modelpress.ir import io

__all__ = ["TensorRecord", "encode_container"]


@dataclasses.dataclass(frozen=True)
class TensorRecord:
    """How one tensor of the weights section was stored.

    Attributes:
        name: Initializer name.
        op_type: Op type of the first node using it as a weight (None when not a weight).
        encoding: ``dense`` or ``sparse`` (weight-shared), or ``raw``.
        elements: Number of values.
        sparsity: Fraction of exact zeros stored.
        bits: Codebook bits (None for raw tensors).
        codebook_size: Centroids stored (0 for raw tensors).
        original_bytes: Bytes in the weights section.
        encoded_bytes: Bytes in the payload (codebook and streams).
        methods: Per stream, ``huffman`` (Huffman-only DEFLATE) or ``deflate`` (LZ77 + Huffman).
    """

    name: str
    op_type: str | None
    encoding: str
    elements: int
    sparsity: float
    bits: int | None
    codebook_size: int
    original_bytes: int
    encoded_bytes: int
    methods: dict[str, str]

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per value, codebook included."""
        return 8 * self.encoded_bytes / self.elements if self.elements else 0.0


def encode_container(
    graph: bytes, weights: bytes, shared: dict[str, tuple[SharedWeights, str]], ops: dict[str, str]
) -> tuple[bytes, list[TensorRecord]]:
    """The ``.mpz`` bytes of ``io.to_split_bytes``'s (graph, weights) and per-tensor records.

    Args:
        graph: The graph bytes.
        weights: The weights section.
        shared: By initializer name, its weight sharing and op type; each must equal the
            tensor in the weights section once decoded.
        ops: Op type of other eligible weights (small ones, stored raw), for the records.
    """
    view = memoryview(weights)
    arrays = io.buffer_weights(graph, view)
    base = np.frombuffer(view, dtype=np.uint8).ctypes.data if len(view) else 0
    payload: list[bytes] = []
    entries: list[dict[str, object]] = []
    records: list[TensorRecord] = []
    size = 0

    def put(data: bytes) -> list[int]:
        nonlocal size
        payload.append(data)
        size += len(data)
        return [size - len(data), len(data)]

    for name, array in sorted(arrays.items(), key=lambda item: item[1].ctypes.data):
        op_type: str | None
        entry: dict[str, object] = {
            "name": name,
            "dtype": array.dtype.name,
            "shape": list(array.shape),
            "offset": array.ctypes.data - base,
            "nbytes": array.nbytes,
        }
        if name in shared:
            sharing, op_type = shared[name]
            assert np.array_equal(sharing.decode().view(np.uint8), array.view(np.uint8)), name
            stored, methods = _shared_entry(sharing, put)
            entry |= stored | {"op": op_type, "bits": sharing.bits}
            codebook_size, bits = sharing.codebook.size, sharing.bits
        else:
            raw, method = _coding.deflate_best(array.tobytes())
            entry |= {"encoding": "raw", "op": ops.get(name), "bits": None}
            entry["streams"] = {"raw": [*put(raw), array.nbytes, method]}
            methods, codebook_size, bits, op_type = {"raw": method}, 0, None, ops.get(name)
        entries.append(entry)
        streams = entry["streams"]
        assert isinstance(streams, dict)
        encoded = sum(s[1] for s in streams.values()) + 4 * codebook_size
        zeros = 1 - np.count_nonzero(array) / array.size if array.size else 0.0
        record = (name, op_type, str(entry["encoding"]), array.size, zeros, bits, codebook_size)
        records.append(TensorRecord(*record, array.nbytes, encoded, methods))
    header = {"weights_bytes": len(weights), "tensors": entries}
    return mpz.pack(header, graph, b"".join(payload)), records


def _shared_entry(
    sharing: SharedWeights, put: collections.abc.Callable[[bytes], list[int]]
) -> tuple[dict[str, object], dict[str, str]]:
    """The smaller of the dense and sparse encodings: (entry fields, stream methods)."""
    codebook = sharing.codebook.astype("<f4")
    candidates = []
    has_zeros = sharing.positions.size < sharing.size
    if not has_zeros or codebook.size < 256:
        dense = np.zeros(sharing.size, dtype=np.uint8)
        dense[sharing.positions] = sharing.indices + has_zeros
        book = np.concatenate([np.zeros(1, "<f4"), codebook]) if has_zeros else codebook
        candidates.append(("dense", book, {"indices": dense}))
    if has_zeros:
        gaps = _coding.encode_gaps(sharing.positions, sharing.size)
        candidates.append(("sparse", codebook, {"indices": sharing.indices, "gaps": gaps}))
    best: tuple[int, str, np.ndarray, dict[str, tuple[bytes, str, int]]] | None = None
    for encoding, book, streams in candidates:
        coded = {key: (*_coding.deflate_best(data.tobytes()), data.size) for key, data in streams.items()}
        total = 4 * book.size + sum(len(c[0]) for c in coded.values())
        if best is None or total < best[0]:
            best = (total, encoding, book, coded)
    assert best is not None
    _, encoding, book, coded = best
    fields: dict[str, object] = {"encoding": encoding, "codebook": put(book.tobytes())}
    fields["streams"] = {key: [*put(data), decoded, method] for key, (data, method, decoded) in coded.items()}
    if encoding == "sparse":
        fields["count"] = int(sharing.positions.size)
    return fields, {key: method for key, (_, method, _) in coded.items()}
