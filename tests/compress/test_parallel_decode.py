"""Decoding tensors in threads (large models) gives the serial result and the same errors."""

from __future__ import annotations

import hashlib
import json

import pytest

from modelpress.compress import compress_model, load_compressed, mpz
from modelpress.errors import CompressionError
from tests.compress.models import cnn


@pytest.fixture
def threaded(monkeypatch):
    monkeypatch.setattr(mpz, "_PARALLEL_MIN_BYTES", 0)  # the small test model takes the threaded path
    monkeypatch.setattr(mpz.os, "cpu_count", lambda: 4)


@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_threaded_decoding_equals_serial_bit_for_bit(sparsity, monkeypatch):
    data, _ = compress_model(cnn(), sparsity=sparsity)
    _, serial = load_compressed(data)
    monkeypatch.setattr(mpz, "_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(mpz.os, "cpu_count", lambda: 4)
    _, threaded = load_compressed(data)
    assert serial.keys() == threaded.keys()
    for name in serial:
        assert serial[name].tobytes() == threaded[name].tobytes(), name


def test_a_bad_stream_fails_the_threaded_decode_with_compression_error(threaded):
    data, _ = compress_model(cnn(), sparsity=0.5)
    _, _, _, header_bytes, graph_bytes, _ = mpz._PREFIX.unpack_from(data)
    header = json.loads(data[mpz._PREFIX.size : mpz._PREFIX.size + header_bytes])
    entry = next(e for e in header["tensors"] if e["name"] == "fc_w")
    offset, length = entry["streams"]["indices"][:2]
    start = mpz._PREFIX.size + header_bytes + graph_bytes + offset
    body = bytearray(data[:-32])
    body[start : start + length] = bytes(length)  # zeros: not a DEFLATE stream of that size
    damaged = bytes(body) + hashlib.sha256(body).digest()  # a valid hash: only decoding can tell
    with pytest.raises(CompressionError, match="fc_w"):
        load_compressed(damaged)
