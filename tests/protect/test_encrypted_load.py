"""Loading encrypted models: one decryption per load, the populated buffer, and ``to_model``.

``test_encrypt.py`` covers the container (round trips, keys, every kind of damage); this file
covers the load path that ``modelpress run`` takes (``open_model_session``): how often a file
is decrypted, into what memory, and that both ways of getting the buffer give the same model.
"""

from __future__ import annotations

import mmap
import os
import threading

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import ProtectionError
from modelpress.examples.cnn import build_example_cnn
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.protect import _sources
from modelpress.protect import encrypt as encrypt_module
from modelpress.protect.encrypt import (
    DecryptedModel,
    decrypt_model,
    decrypt_model_bytes,
    encrypt_model,
    load_encrypted,
)
from modelpress.protect.keys import generate_key
from modelpress.protect.obfuscate import obfuscate_model, write_obfuscated
from modelpress.runtime.feeds import random_feeds
from modelpress.runtime.run import open_model_session

RTOL = 1e-5  # issue 4: obfuscated outputs equal the original within 1e-5 relative


def _model() -> ir.Model:
    """Two MatMuls, weights of 8 KiB and 4 KiB: both go to the weights section of version 2."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [2, 32])
    h = b.op("Relu", b.op("MatMul", x, b.const(rng.standard_normal((32, 64), dtype=np.float32), "w1")))
    y = b.op("MatMul", h, b.const(rng.standard_normal((64, 16), dtype=np.float32), "w2"))
    return b.build([y])


@pytest.fixture
def decryptions(monkeypatch) -> list[str]:
    """Records what every decryption in ``modelpress.protect.encrypt`` was asked to open."""
    calls: list[str] = []
    original = encrypt_module._decrypt

    def counting(source, key):
        calls.append("<bytes>" if isinstance(source, bytes | bytearray | memoryview) else str(source))
        return original(source, key)

    monkeypatch.setattr(encrypt_module, "_decrypt", counting)
    return calls


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("mode", ["runtime", "transport"])
def test_encrypted_model_with_library_is_decrypted_once(tmp_path, decryptions, version, mode):
    model, key = build_example_cnn(), generate_key()
    opaque, _ = obfuscate_model(model.clone(), seed=0, strength="high", opaque=True)
    files = write_obfuscated(opaque, tmp_path / "cnn.onnx", key)  # the library encrypted, model plain
    sealed = encrypt_model(files.model, tmp_path / "cnn.mpe", key, format_version=version)
    assert sealed.version == version
    decryptions.clear()
    session = open_model_session(tmp_path / "cnn.mpe", key, mode=mode)
    # The model once; the library, a file of its own, once from the bytes whose digest was checked.
    assert decryptions == [str(tmp_path / "cnn.mpe"), "<bytes>"]
    feeds = random_feeds(model, seed=0)
    reference = open_model_session(io.to_bytes(model), level="disable")
    for got, want in zip(session.run(None, feeds), reference.run(None, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


@pytest.mark.parametrize("version", [1, 2])
def test_encrypted_model_without_library_is_decrypted_once(tmp_path, decryptions, version):
    key = generate_key()
    encrypt_model(_model(), tmp_path / "m.mpe", key, format_version=version)
    open_model_session(tmp_path / "m.mpe", key)
    assert decryptions == [str(tmp_path / "m.mpe")]


@pytest.mark.parametrize("version", [1, 2])
def test_to_model_equals_load_encrypted(tmp_path, version):
    key = generate_key()
    encrypt_model(_model(), tmp_path / "m.mpe", key, format_version=version)
    decrypted = decrypt_model(tmp_path / "m.mpe", key)
    assert io.to_bytes(decrypted.to_model()) == io.to_bytes(load_encrypted(tmp_path / "m.mpe", key))
    assert io.to_bytes(decrypted.to_model()) == decrypt_model_bytes(tmp_path / "m.mpe", key)


def _same_decryption(first: DecryptedModel, second: DecryptedModel) -> None:
    assert first.model_bytes == second.model_bytes
    assert first.external_initializers.keys() == second.external_initializers.keys()
    for name, array in first.external_initializers.items():
        np.testing.assert_array_equal(array, second.external_initializers[name])


@pytest.fixture
def small_steps(monkeypatch) -> None:
    """Map the buffer one page at a time, so that the small test model takes the helper thread."""
    monkeypatch.setattr(_sources, "_POPULATE_STEP", mmap.PAGESIZE)


@pytest.mark.skipif(_sources._mmap is None, reason="no helper thread on this platform")
@pytest.mark.parametrize("parallel", [False, True])
def test_buffer_mapped_ahead_gives_the_same_model(tmp_path, monkeypatch, small_steps, parallel):
    key = generate_key()
    encrypt_model(_model(), tmp_path / "m.mpe", key, chunk_bytes=1024)
    if parallel:  # several decrypting threads, each waiting for its own chunk's pages
        monkeypatch.setattr(encrypt_module, "_PARALLEL_MIN_CHUNK_BYTES", 0)
        monkeypatch.setattr(os, "cpu_count", lambda: 4)
    helpers: list[threading.Thread] = []
    real_start = threading.Thread.start

    def spying_start(thread):
        helpers.append(thread)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", spying_start)
    ahead = decrypt_model(tmp_path / "m.mpe", key)
    populating = [t for t in helpers if t.name == "modelpress-populate"]
    assert len(populating) == 1 and not populating[0].is_alive()  # joined before returning
    monkeypatch.setattr(_sources, "_mmap", None)  # e.g. another architecture: one populated mapping
    _same_decryption(ahead, decrypt_model(tmp_path / "m.mpe", key))
    monkeypatch.setattr(_sources, "_MAP_POPULATE", 0)  # e.g. macOS: pages faulted in on write
    _same_decryption(ahead, decrypt_model(tmp_path / "m.mpe", key))


@pytest.mark.skipif(_sources._mmap is None, reason="no helper thread on this platform")
def test_anonymous_buffer_writes_land_and_finish_stops_the_helper(small_steps):
    size = 64 * mmap.PAGESIZE
    with _sources.AnonymousBuffer(size) as buffer:
        buffer.wait_ready(size)
        buffer.memory[:] = bytes(range(256)) * (size // 256)
    assert buffer.memory[:256] == bytes(range(256)) and buffer.memory[-1] == 255
    early = _sources.AnonymousBuffer(size)
    early.finish()  # at once: the helper stops between steps, and waiting never hangs
    early.wait_ready(size)
    assert early.memory[: mmap.PAGESIZE] == bytes(mmap.PAGESIZE)


@pytest.mark.skipif(_sources._mmap is None, reason="no helper thread on this platform")
def test_memory_that_cannot_be_mapped_is_an_error_and_nothing_is_written(tmp_path, monkeypatch, small_steps):
    key = generate_key()
    encrypt_model(_model(), tmp_path / "m.mpe", key, chunk_bytes=1024)
    real_mmap = _sources._mmap
    calls = []

    def failing_mmap(address, length, *args):
        calls.append(length)
        return real_mmap(address, length, *args) if len(calls) <= 2 else None  # MAP_FAILED, twice

    monkeypatch.setattr(_sources, "_mmap", failing_mmap)
    monkeypatch.setattr(_sources, "_NEVER_UNMAPPED", [])
    with pytest.raises(MemoryError, match="cannot map"):
        decrypt_model(tmp_path / "m.mpe", key)
    assert len(calls) == 4  # two steps mapped; the third failed, and so did mapping it again
    assert len(_sources._NEVER_UNMAPPED) == 1  # it may hold a gap: never unmapped


@pytest.mark.skipif(_sources._mmap is None, reason="no helper thread on this platform")
def test_a_step_mapped_again_after_a_failure_still_decrypts(tmp_path, monkeypatch, small_steps):
    key = generate_key()
    encrypt_model(_model(), tmp_path / "m.mpe", key, chunk_bytes=1024)
    real_mmap = _sources._mmap
    failed = []

    def flaky_mmap(address, length, protection, flags, *args):
        if flags & _sources._MAP_POPULATE and not failed:  # the first populated step fails once
            failed.append(address)
            return None
        return real_mmap(address, length, protection, flags, *args)

    monkeypatch.setattr(_sources, "_mmap", flaky_mmap)
    recovered = decrypt_model(tmp_path / "m.mpe", key)
    monkeypatch.setattr(_sources, "_mmap", None)
    assert failed
    _same_decryption(recovered, decrypt_model(tmp_path / "m.mpe", key))


def test_damaged_model_with_library_loads_nothing(tmp_path):
    model, key = build_example_cnn(), generate_key()
    opaque, _ = obfuscate_model(model.clone(), seed=0, strength="high", opaque=True)
    files = write_obfuscated(opaque, tmp_path / "cnn.mpe", key, encrypt=True)
    data = bytearray(files.model.read_bytes())
    data[-1] ^= 1  # the last chunk's tag
    files.model.write_bytes(bytes(data))
    with pytest.raises(ProtectionError, match="failed authentication"):
        open_model_session(files.model, key)


@pytest.mark.skipif(_sources._mmap is None, reason="no helper thread on this platform")
def test_damage_is_rejected_and_the_helper_stopped_while_mapping_ahead(tmp_path, small_steps):
    key = generate_key()
    encrypt_model(_model(), tmp_path / "m.mpe", key, chunk_bytes=1024)
    data = (tmp_path / "m.mpe").read_bytes()
    rng = np.random.default_rng(0)
    for position in rng.integers(0, len(data), 300):
        damaged = bytearray(data)
        damaged[position] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(ProtectionError):
            decrypt_model(bytes(damaged), key)
    for cut in rng.integers(0, len(data), 30):
        with pytest.raises(ProtectionError):
            decrypt_model(data[:cut], key)
    assert not [t for t in threading.enumerate() if t.name == "modelpress-populate"]
