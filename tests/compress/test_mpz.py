"""The .mpz container: exact round trips, in-memory sessions, and every way a file can be bad."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from modelpress.compress import (
    compress_file,
    compress_model,
    decompress_file,
    is_compressed,
    load_compressed,
    mpz,
)
from modelpress.compress.prune import prune_model
from modelpress.compress.sharing import share_weights
from modelpress.errors import CompressionError, ModelLoadError, UsageError
from modelpress.ir import io
from modelpress.runtime.session import create_session, run_session
from tests.compress.models import cnn, weights

_PREFIX = struct.Struct(">8sHHIQQ")
_FEEDS = {"x": np.random.default_rng(0).standard_normal((2, 8, 4, 4)).astype(np.float32)}


@pytest.fixture(scope="module")
def packed() -> bytes:
    data, _ = compress_model(cnn(), sparsity=0.5)
    return data


def _parts(data: bytes) -> tuple[dict, bytes, bytes]:
    _, _, _, header, graph, _payload = _PREFIX.unpack_from(data)
    start = _PREFIX.size + header
    return json.loads(data[_PREFIX.size : start]), data[start : start + graph], data[start + graph : -32]


def _expected_weights(sparsity: float) -> dict[str, np.ndarray]:
    """What the decoder must produce: pruned, then codebook[indices] (computed independently)."""
    model = cnn()
    prune_model(model, sparsity)
    arrays = {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}
    for name, bits in (("conv_w", 8), ("fc_w", 5), ("shared_w", 5)):
        arrays[name] = share_weights(arrays[name], bits).decode()
    return arrays


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_round_trip_is_bit_exact(sparsity):
    data, report = compress_model(cnn(), sparsity=sparsity)
    _graph, arrays = load_compressed(data)
    expected = _expected_weights(sparsity)
    assert set(arrays) == {"conv_w", "conv_b", "fc_w", "shared_w", "head_w"} - {"conv_b"}  # 64 B bias: inline
    for name, array in arrays.items():
        assert array.tobytes() == expected[name].tobytes(), name
        assert not array.flags.writeable
    np.testing.assert_array_equal(arrays["head_w"], weights()["head_w"])  # raw: identical
    encodings = {t.name: t.encoding for t in report.tensors}
    assert encodings["head_w"] == "raw"
    if sparsity == 0.95:
        assert encodings["fc_w"] == "sparse"
    assert report.compressed_bytes == len(data) < report.original_bytes


def test_in_memory_session_equals_the_decompressed_onnx_exactly(tmp_path, packed):
    path = tmp_path / "m.mpz"
    path.write_bytes(packed)
    graph, arrays = load_compressed(path)
    in_memory = run_session(create_session(graph, external_initializers=arrays), _FEEDS)
    decompress_file(path, tmp_path / "m.onnx")
    io.check_model(io.load(tmp_path / "m.onnx"), full=True)
    from_file = run_session(create_session(tmp_path / "m.onnx"), _FEEDS)
    assert set(in_memory) == set(from_file)
    for name in in_memory:
        assert np.asarray(in_memory[name]).tobytes() == np.asarray(from_file[name]).tobytes()


def test_compress_file_writes_atomically_and_reports(tmp_path):
    src = io.save(cnn(), tmp_path / "m.onnx")
    report = compress_file(src, tmp_path / "out" / "m.mpz", sparsity=0.5, dim_values={"batch": 1})
    assert is_compressed(tmp_path / "out" / "m.mpz") and not is_compressed(src)
    assert not is_compressed(tmp_path / "missing.mpz")
    assert report.original_bytes == src.stat().st_size
    assert report.compressed_bytes == (tmp_path / "out" / "m.mpz").stat().st_size
    assert report.comparison is not None and report.comparison.max_rel > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.mpz"]  # no temporary left
    with pytest.raises(UsageError):
        compress_file(src, tmp_path / "bad.mpz", conv_bits=9)
    with pytest.raises(ModelLoadError):
        compress_file(tmp_path / "missing.onnx", tmp_path / "bad.mpz")
    assert not (tmp_path / "bad.mpz").exists()


def _fails(data: bytes, match: str | None = None) -> None:
    with pytest.raises(CompressionError, match=match):
        load_compressed(data)


def test_truncation_at_any_offset_is_refused(packed):
    for cut in [*range(0, 80), *range(80, len(packed), 37), len(packed) - 1]:
        _fails(packed[:cut])
    _fails(packed + b"\0", "extended")


def test_random_byte_flips_anywhere_are_refused(packed):
    rng = np.random.default_rng(0)
    header_end = _PREFIX.size + _PREFIX.unpack_from(packed)[3]
    regions = [
        (0, _PREFIX.size),
        (_PREFIX.size, header_end),
        (header_end, len(packed) - 32),
        (len(packed) - 32, len(packed)),
    ]
    for case in range(400):
        start, end = regions[case % len(regions)]
        damaged = bytearray(packed)
        position = int(rng.integers(start, end))
        damaged[position] ^= int(rng.integers(1, 256))
        _fails(bytes(damaged))


def test_foreign_files_and_versions_are_refused(tmp_path, packed):
    _fails(b"", "not an .mpz")
    _fails(b"\x89MPE\r\n\x1a\n" + packed[8:], "not an .mpz")
    _fails(io.to_bytes(cnn()), "not an .mpz")
    future = bytearray(packed)
    struct.pack_into(">H", future, 8, 2)
    _fails(bytes(future), "version 2")
    (tmp_path / "bad.mpz").write_bytes(packed[:-1])
    with pytest.raises(CompressionError, match="truncated"):
        decompress_file(tmp_path / "bad.mpz", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(ModelLoadError):
        load_compressed(tmp_path / "missing.mpz")


def _entry(header: dict, name: str) -> dict:
    return next(e for e in header["tensors"] if e["name"] == name)


HOSTILE = {
    "huge weights section": lambda h: h.update(weights_bytes=2**60),
    "huge raw tensor": lambda h: _entry(h, "head_w").update(nbytes=2**40),
    "huge dense shape": lambda h: _entry(h, "fc_w").update(shape=[2**30, 2**30], nbytes=2**62),
    "stream past payload": lambda h: _entry(h, "fc_w")["streams"]["indices"].__setitem__(0, 2**40),
    "wrong decoded length": lambda h: _entry(h, "fc_w")["streams"]["indices"].__setitem__(2, 16383),
    "beyond deflate ratio": lambda h: _entry(h, "head_w")["streams"]["raw"].__setitem__(2, 2**40),
    "codebook too long": lambda h: _entry(h, "fc_w")["codebook"].__setitem__(1, 4 * 300),
    "codebook past payload": lambda h: _entry(h, "fc_w")["codebook"].__setitem__(0, 2**50),
    "misaligned offset": lambda h: _entry(h, "fc_w").update(offset=_entry(h, "fc_w")["offset"] + 4),
    "negative offset": lambda h: _entry(h, "fc_w").update(offset=-64),
    "string size": lambda h: _entry(h, "fc_w").update(nbytes="65536"),
    "boolean size": lambda h: _entry(h, "head_w").update(offset=True),
    "unknown encoding": lambda h: _entry(h, "fc_w").update(encoding="lzma"),
    "unknown dtype": lambda h: _entry(h, "fc_w").update(dtype="float64"),
    "renamed tensor": lambda h: _entry(h, "head_w").update(name="other"),
    "duplicate tensor": lambda h: h["tensors"].append(dict(h["tensors"][-1])),
    "missing tensor": lambda h: h["tensors"].pop(),
    "no tensors": lambda h: h.pop("tensors"),
    "missing stream": lambda h: _entry(h, "fc_w")["streams"].clear(),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_headers_with_a_valid_hash_are_refused_before_allocating(packed, attack):
    header, graph, payload = _parts(packed)
    HOSTILE[attack](header)
    _fails(mpz.pack(header, graph, payload))


def test_hostile_sparse_entries_are_refused(packed):
    header, graph, payload = _parts(packed)
    conv = _entry(header, "conv_w")
    assert conv["encoding"] == "sparse"
    for change in ({"count": conv["count"] + 1}, {"shape": [2**40], "nbytes": 2**42}):
        hostile = json.loads(json.dumps(header))
        _entry(hostile, "conv_w").update(change)
        _fails(mpz.pack(hostile, graph, payload))


def test_indices_beyond_the_codebook_are_refused(packed):
    header, graph, payload = _parts(packed)
    _entry(header, "fc_w")["codebook"][1] = 8  # two entries left, indices up to 32
    _fails(mpz.pack(header, graph, payload), "codebook")


def test_non_json_header_is_refused(packed):
    _, graph, payload = _parts(packed)
    head = b"\xff{not json"
    body = _PREFIX.pack(mpz.MAGIC, 1, 0, len(head), len(graph), len(payload)) + head + graph + payload
    _fails(body + hashlib.sha256(body).digest(), "JSON")
