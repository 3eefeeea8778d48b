"""Encrypted models (.mpe): round trip, keys, and every kind of damage rejected with ProtectionError.

The damage tests work on a small model cut into 1 KiB chunks (about a dozen chunks), so that
flips, truncations and chunk moves hit every part of the container: magic, version, header
fields, header tag, each chunk's ciphertext and tag, chunk boundaries. They run on both
container versions: 1 (the model inline) and 2 (graph and weights apart).
"""

from __future__ import annotations

import ctypes
import gc
import os
import pathlib
import stat
import struct

import numpy as np
import onnx_ir as ir
import pytest

from modelpress import protect
from modelpress.errors import ModelLoadError, ModelSaveError, ProtectionError, UsageError
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.protect import encrypt as encrypt_module
from modelpress.protect import keys as keys_module
from modelpress.protect.encrypt import (
    decrypt_model,
    decrypt_model_bytes,
    encrypt_model,
    load_encrypted,
    read_header,
)
from modelpress.protect.keys import KeySource, generate_key, key_id
from modelpress.runtime.session import create_session, run_session

CHUNK = 1024
PREFIX = 96  # header (64) + header tag (32)
TAG = 16


def _model(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [2, 32])
    h = b.op("Relu", b.op("MatMul", x, b.const(rng.standard_normal((32, 64), dtype=np.float32), "w1")))
    y = b.op("MatMul", h, b.const(rng.standard_normal((64, 16), dtype=np.float32), "w2"))
    return b.build([y])


@pytest.fixture(scope="module")
def key() -> bytes:
    return generate_key()


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def sealed(request, tmp_path_factory, key) -> tuple[bytes, bytes]:
    """(serialized model, .mpe bytes) of the small model in 1 KiB chunks, in each format version."""
    model = _model()
    path = tmp_path_factory.mktemp("mpe") / "model.mpe"
    encrypt_model(model, path, key, chunk_bytes=CHUNK, format_version=request.param)
    return io.to_bytes(model), path.read_bytes()


def _chunks(data: bytes) -> tuple[bytes, list[bytes]]:
    header = read_header(data)
    pieces = []
    for index in range(header.chunk_count):
        start = PREFIX + index * (CHUNK + TAG)
        pieces.append(data[start : start + min(CHUNK, header.plaintext_bytes - index * CHUNK) + TAG])
    return data[:PREFIX], pieces


def _rejected(data: bytes, key: bytes, match: str | None = None) -> str:
    with pytest.raises(ProtectionError, match=match) as info:
        decrypt_model_bytes(data, key)
    return str(info.value)


# --- round trip ---------------------------------------------------------------------------


def test_decrypt_gives_back_the_exact_serialized_model(sealed, key):
    plaintext, data = sealed
    assert decrypt_model_bytes(data, key) == plaintext
    assert len(_chunks(data)[1]) >= 10
    assert read_header(data).file_bytes == len(data)


def test_encrypted_model_runs_with_identical_outputs(tmp_path, key):
    model = _model(1)
    path = tmp_path / "m.mpe"
    encrypt_model(model, path, key)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 32), dtype=np.float32)}
    expected = run_session(create_session(model), feeds)
    got = run_session(create_session(decrypt_model_bytes(path, key)), feeds)
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    loaded = load_encrypted(path, key)
    assert io.to_bytes(loaded) == io.to_bytes(model)


def test_model_path_with_external_data_is_encrypted_with_weights_inlined(tmp_path, key):
    source = io.save(_model(2), tmp_path / "src" / "model.onnx", external_data=True, size_threshold_bytes=16)
    assert (tmp_path / "src" / "model.onnx.data").exists()
    header = encrypt_model(source, tmp_path / "out" / "model.mpe", key)
    plaintext = decrypt_model_bytes(tmp_path / "out" / "model.mpe", key)
    assert plaintext == io.to_bytes(io.load(source))
    assert header.plaintext_bytes >= len(plaintext) - 2 * 12 * 32  # no longer than the graph
    io.load(plaintext)  # stands alone: no base_dir, no external data needed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.mpe"]


def test_header_describes_the_file(sealed, key):
    plaintext, data = sealed
    header = read_header(data)
    assert header.version in (1, 2) and (header.cipher, header.chunk_bytes) == (1, CHUNK)
    if header.version == 1:
        assert header.plaintext_bytes == len(plaintext)
    assert header.chunk_count == -(-header.plaintext_bytes // CHUNK)
    assert header.key_id.hex() == key_id(key)
    assert data[:8] == protect.encrypt.MAGIC


def test_each_encryption_uses_a_fresh_salt_and_nonce_prefix(tmp_path, key):
    model = _model()
    first = encrypt_model(model, tmp_path / "a.mpe", key)
    second = encrypt_model(model, tmp_path / "b.mpe", key)
    assert first.salt != second.salt and first.nonce_prefix != second.nonce_prefix
    assert (tmp_path / "a.mpe").read_bytes()[PREFIX:] != (tmp_path / "b.mpe").read_bytes()[PREFIX:]


def test_is_encrypted(tmp_path, sealed):
    (tmp_path / "m.mpe").write_bytes(sealed[1])
    io.save(_model(), tmp_path / "m.onnx")
    assert protect.is_encrypted(tmp_path / "m.mpe")
    assert not protect.is_encrypted(tmp_path / "m.onnx")
    assert not protect.is_encrypted(tmp_path / "missing.mpe")


def test_decryption_without_decrypt_into_or_ctypes_gives_the_same_bytes(sealed, key, monkeypatch):
    plaintext, data = sealed
    monkeypatch.setattr(encrypt_module, "_HAS_DECRYPT_INTO", False)
    assert decrypt_model_bytes(data, key) == plaintext
    monkeypatch.delattr(ctypes, "pythonapi")
    assert decrypt_model_bytes(data, key) == plaintext


@pytest.mark.parametrize("on_disk", [False, True])
def test_parallel_decryption_gives_the_same_bytes_and_the_first_failing_chunk(
    tmp_path, sealed, key, monkeypatch, on_disk
):
    plaintext, data = sealed
    monkeypatch.setattr(encrypt_module, "_PARALLEL_MIN_CHUNK_BYTES", 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)

    def source(blob: bytes):
        if not on_disk:
            return blob
        (tmp_path / "m.mpe").write_bytes(blob)
        return tmp_path / "m.mpe"

    assert decrypt_model_bytes(source(data), key) == plaintext
    damaged = bytearray(data)
    for index in (9, 4):  # two damaged chunks: the first one is reported
        damaged[PREFIX + index * (CHUNK + TAG) + 3] ^= 1
    with pytest.raises(ProtectionError, match=r"chunk 4 of \d+ failed authentication"):
        decrypt_model_bytes(source(bytes(damaged)), key)


def test_file_that_shrinks_while_being_read(tmp_path, sealed, key, monkeypatch):
    from modelpress.protect import _sources

    path = tmp_path / "m.mpe"
    path.write_bytes(sealed[1])
    real_read = _sources._FileSource.read

    def shrinking_read(self, offset, length, scratch):
        view = real_read(self, offset, length, scratch)
        return view[: length - 1] if offset > PREFIX * 20 else view

    monkeypatch.setattr(_sources._FileSource, "read", shrinking_read)
    with pytest.raises(ProtectionError, match="truncated while reading chunk"):
        decrypt_model_bytes(path, key)


# --- encryption: options and atomic writes -------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [0, 255, 64 * 2**20 + 1])
def test_chunk_size_out_of_range_is_a_usage_error(tmp_path, key, chunk_bytes):
    with pytest.raises(UsageError, match="chunk size"):
        encrypt_model(_model(), tmp_path / "m.mpe", key, chunk_bytes=chunk_bytes)
    assert not list(tmp_path.iterdir())


def test_failed_encryption_leaves_the_destination_untouched(tmp_path, key, monkeypatch):
    dest = tmp_path / "m.mpe"
    dest.write_bytes(b"previous")
    with pytest.raises(ProtectionError, match="not a 256-bit key"):
        encrypt_model(_model(), dest, key[:31])
    calls = []

    def failing_aad(raw, index, count):
        calls.append(index)
        if len(calls) == 3:
            raise OSError("disk full")
        return raw + bytes(9)

    monkeypatch.setattr(encrypt_module, "_aad", failing_aad)
    with pytest.raises(ModelSaveError, match="disk full"):
        encrypt_model(_model(), dest, key, chunk_bytes=CHUNK)
    assert dest.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.mpe"]


def test_invalid_model_path_is_a_load_error(tmp_path, key):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        encrypt_model(tmp_path / "bad.onnx", tmp_path / "m.mpe", key)
    assert not (tmp_path / "m.mpe").exists()


def test_model_over_the_protobuf_limit_is_refused_clearly(tmp_path, key, monkeypatch):
    monkeypatch.setattr(encrypt_module, "_MAX_PLAINTEXT_BYTES", 1000)
    with pytest.raises(ProtectionError, match="cannot be encrypted yet"):
        encrypt_model(_model(), tmp_path / "m.mpe", key)
    assert not (tmp_path / "m.mpe").exists()


# --- keys ---------------------------------------------------------------------------------


def test_wrong_key_is_reported_by_key_id_before_decrypting(sealed, key, monkeypatch):
    other = generate_key()
    monkeypatch.setattr(encrypt_module, "_decrypt_into", None)  # decrypting would now crash
    message = _rejected(sealed[1], other, "wrong key")
    assert key_id(key) in message and key_id(other) in message
    assert key.hex() not in message and other.hex() not in message


def test_key_id_is_stable_and_reveals_nothing_of_the_key(key):
    assert key_id(key) == key_id(KeySource.from_callable(lambda: key))
    assert len(key_id(key)) == 16
    assert key_id(key) not in key.hex()


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: k,
        lambda k: k.hex() + "\n",
        lambda k: "  " + k.hex().upper(),
        lambda k: __import__("base64").b64encode(k) + b"\n",
    ],
    ids=["raw", "hex", "hex-upper", "base64"],
)
def test_key_file_formats(tmp_path, sealed, key, encode):
    value = encode(key)
    path = tmp_path / "k.key"
    path.write_bytes(value if isinstance(value, bytes) else value.encode())
    assert decrypt_model_bytes(sealed[1], KeySource.from_file(path)) == sealed[0]


@pytest.mark.parametrize(
    "content",
    [b"", b"short", b"z" * 64, b"ab" * 33, bytes(range(31)), bytes(range(33)), b"\xff" * 40, b"0" * 5000],
)
def test_bad_key_files_are_rejected_without_echoing_them(tmp_path, content):
    path = tmp_path / "k.key"
    path.write_bytes(content)
    with pytest.raises(ProtectionError, match=r"k\.key") as info:
        KeySource.from_file(path).load()
    if len(content) > 8:
        assert content.decode("latin-1") not in str(info.value)


def test_missing_key_file_and_unset_variable(tmp_path, monkeypatch):
    with pytest.raises(ProtectionError, match="no such file"):
        KeySource.from_file(tmp_path / "none.key").load()
    monkeypatch.delenv("MP_TEST_KEY", raising=False)
    with pytest.raises(ProtectionError, match=r"MP_TEST_KEY.*not set"):
        KeySource.from_env("MP_TEST_KEY").load()


def test_key_from_environment_variable(sealed, key, monkeypatch):
    monkeypatch.setenv("MP_TEST_KEY", key.hex())
    assert decrypt_model_bytes(sealed[1], KeySource.from_env("MP_TEST_KEY")) == sealed[0]
    monkeypatch.setenv("MP_TEST_KEY", "not a key")
    with pytest.raises(ProtectionError, match="environment variable 'MP_TEST_KEY': not a 256-bit key"):
        decrypt_model_bytes(sealed[1], KeySource.from_env("MP_TEST_KEY"))


def test_key_from_a_callable_like_a_kms(sealed, key):
    calls = []

    def kms() -> bytes:
        calls.append(1)
        return key

    source = KeySource.from_callable(kms)
    assert decrypt_model_bytes(sealed[1], source) == sealed[0]
    assert calls == [1]
    assert key.hex() not in repr(source) and "kms" in repr(source)
    assert decrypt_model_bytes(sealed[1], KeySource.from_callable(lambda: key.hex())) == sealed[0]

    def broken() -> bytes:
        raise TimeoutError("kms unreachable")

    with pytest.raises(ProtectionError, match="key provider 'vault' failed: TimeoutError: kms unreachable"):
        decrypt_model_bytes(sealed[1], KeySource.from_callable(broken, name="vault"))
    with pytest.raises(ProtectionError, match="expected bytes or str"):
        KeySource.from_callable(lambda: 42).load()  # type: ignore[arg-type, return-value]


def test_key_of_the_wrong_type_or_length(sealed):
    with pytest.raises(ProtectionError, match="not a 256-bit key"):
        decrypt_model_bytes(sealed[1], b"\x00" * 16)
    with pytest.raises(ProtectionError, match="KeySource"):
        decrypt_model_bytes(sealed[1], "a" * 64)  # type: ignore[arg-type]


def test_write_key_file_is_private_and_never_overwrites_by_accident(tmp_path):
    first, second = generate_key(), generate_key()
    path = protect.write_key_file(tmp_path / "keys" / "k.key", first)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == first.hex() + "\n"
    assert protect.key_file_warning(path) is None
    with pytest.raises(UsageError, match="--force"):
        protect.write_key_file(path, second)
    assert KeySource.from_file(path).load() == first
    protect.write_key_file(path, second, overwrite=True)
    assert KeySource.from_file(path).load() == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["k.key"]


def test_loose_key_file_permissions_are_accepted_with_a_warning(tmp_path, key, caplog):
    path = protect.write_key_file(tmp_path / "k.key", key)
    path.chmod(0o644)
    warning = protect.key_file_warning(path)
    assert warning is not None and "chmod 600" in warning and "0644" in warning
    with caplog.at_level("WARNING", logger=keys_module.__name__):
        assert KeySource.from_file(path).load() == key
    assert "chmod 600" in caplog.text and key.hex() not in caplog.text


# --- damage: every one is a ProtectionError ------------------------------------------------


def test_not_an_mpe_file(tmp_path, key):
    io.save(_model(), tmp_path / "m.onnx")
    _rejected((tmp_path / "m.onnx").read_bytes(), key, "not an .mpe file")
    _rejected(b"", key, "not an .mpe file")
    with pytest.raises(ProtectionError, match="no such file"):
        decrypt_model_bytes(tmp_path / "missing.mpe", key)
    with pytest.raises(ProtectionError, match="folder"):
        decrypt_model_bytes(tmp_path, key)


def test_unsupported_version_and_cipher(sealed, key):
    data = bytearray(sealed[1])
    data[8:10] = (4).to_bytes(2, "big")
    _rejected(bytes(data), key, "version 4 is not supported")
    for other in {1, 2, 3} - {read_header(sealed[1]).version}:  # another supported version
        data[8:10] = other.to_bytes(2, "big")
        _rejected(bytes(data), key, "header failed authentication")
    data = bytearray(sealed[1])
    data[10] = 7
    _rejected(bytes(data), key, "unsupported cipher id 7")
    data = bytearray(sealed[1])
    data[11] = 1
    _rejected(bytes(data), key, "flags 1")


def test_header_fields_altered(sealed, key):
    data = bytearray(sealed[1])
    data[56:64] = (99).to_bytes(8, "big")  # chunk count
    _rejected(bytes(data), key, "chunk count mismatch")
    data = bytearray(sealed[1])
    data[44:48] = (2**31).to_bytes(4, "big")  # chunk size
    _rejected(bytes(data), key, "corrupt header")
    data = bytearray(sealed[1])
    data[20] ^= 1  # salt
    _rejected(bytes(data), key, "header failed authentication")
    data = bytearray(sealed[1])
    data[70] ^= 1  # header tag
    _rejected(bytes(data), key, "header failed authentication")


def test_thousands_of_random_byte_flips_are_all_rejected(sealed, key):
    data = sealed[1]
    rng = np.random.default_rng(1234)
    positions = np.concatenate([np.arange(PREFIX), rng.integers(0, len(data), size=10_000)])
    messages = set()
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= int(rng.integers(1, 256))
        message = _rejected(bytes(damaged), key)
        messages.add(message.split(":")[1].strip().split(" ")[0])
    assert len(positions) > 10_000
    assert {"chunk", "wrong", "the"} <= messages  # chunk tags, key id, header tag all exercised


def test_truncation_at_every_chunk_boundary_and_random_points(sealed, key):
    data = sealed[1]
    boundaries = [PREFIX + i * (CHUNK + TAG) for i in range(len(_chunks(data)[1]))]
    cuts = [0, 1, 7, 8, 9, 10, 63, 64, PREFIX - 1, len(data) - TAG, len(data) - 1]
    cuts += [b + delta for b in boundaries for delta in (-1, 0, 1)]
    cuts += list(np.random.default_rng(5).integers(0, len(data), size=300))
    for cut in cuts:
        _rejected(data[:cut], key)
    assert "truncated" in _rejected(data[: boundaries[-1]], key)
    assert "extended" in _rejected(data + b"\0", key)


def test_chunks_reordered_dropped_or_duplicated(sealed, key):
    head, pieces = _chunks(sealed[1])
    count = len(pieces)
    full = pieces[:-1]  # the last chunk is shorter
    for i in range(len(full) - 1):
        swapped = [*full]
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        message = _rejected(head + b"".join([*swapped, pieces[-1]]), key)
        assert f"holds the data of chunk {i + 1}" in message
    for i in range(count):
        _rejected(head + b"".join(pieces[:i] + pieces[i + 1 :]), key, "truncated")
        _rejected(head + b"".join(pieces[: i + 1] + pieces[i:]), key, "extended")
    duplicated = [*full[:-1], full[0], pieces[-1]]  # same size: chunk 0 in place of chunk n-2
    assert "holds the data of chunk 0" in _rejected(head + b"".join(duplicated), key)
    _rejected(head + b"".join([pieces[-1], *full]), key)  # last chunk moved first


def test_header_or_chunks_from_another_file_with_the_same_key(tmp_path, sealed, key):
    version = read_header(sealed[1]).version
    encrypt_model(_model(), tmp_path / "other.mpe", key, chunk_bytes=CHUNK, format_version=version)
    other = (tmp_path / "other.mpe").read_bytes()
    assert len(other) == len(sealed[1]) and other[:PREFIX] != sealed[1][:PREFIX]
    assert decrypt_model_bytes(other, key) == sealed[0]
    _rejected(other[:PREFIX] + sealed[1][PREFIX:], key, "header comes from another file")
    head, pieces = _chunks(sealed[1])
    _, foreign = _chunks(other)
    for i in range(len(pieces)):
        mixed = [*pieces]
        mixed[i] = foreign[i]
        _rejected(head + b"".join(mixed), key, f"chunk {i} of {len(pieces)} failed authentication")


def test_a_damaged_file_on_disk_loads_nothing(tmp_path, sealed, key):
    damaged = bytearray(sealed[1])
    damaged[-5] ^= 0x40
    (tmp_path / "m.mpe").write_bytes(bytes(damaged))
    with pytest.raises(ProtectionError, match="failed authentication"):
        load_encrypted(tmp_path / "m.mpe", key)


# --- version 2: graph and weights apart, weights used in place -----------------------------


def test_version_2_is_the_default_and_weights_are_aligned_read_only_views(tmp_path, key):
    model = _model(3)
    header = encrypt_model(model, tmp_path / "m.mpe", key)
    assert header.version == protect.FORMAT_VERSION == 2
    decrypted = decrypt_model(tmp_path / "m.mpe", key)
    weights = decrypted.external_initializers
    assert sorted(weights) == ["w1", "w2"]
    assert len(decrypted.model_bytes) < 1024  # the graph alone
    for name, array in weights.items():
        np.testing.assert_array_equal(array, model.graph.initializers[name].const_value.numpy())
        assert not array.flags.writeable and not array.flags.owndata
        assert array.ctypes.data % 64 == 0
    assert weights["w1"].base is not None  # a view of the decrypted buffer


def test_version_1_files_still_load_through_decrypt_model(tmp_path, key):
    model = _model(4)
    encrypt_model(model, tmp_path / "m.mpe", key, format_version=1)
    decrypted = decrypt_model(tmp_path / "m.mpe", key)
    assert decrypted.external_initializers == {}
    assert decrypted.model_bytes == io.to_bytes(model)
    with pytest.raises(UsageError, match="format version 3"):
        encrypt_model(model, tmp_path / "n.mpe", key, format_version=3)


def test_session_keeps_the_decrypted_buffer_alive(tmp_path, key):
    model = _model(5)
    encrypt_model(model, tmp_path / "m.mpe", key)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 32), dtype=np.float32)}
    expected = run_session(create_session(model, level="all"), feeds)
    decrypted = decrypt_model(tmp_path / "m.mpe", key)
    session = create_session(
        decrypted.model_bytes, level="all", external_initializers=decrypted.external_initializers
    )
    del decrypted
    gc.collect()
    for _ in range(3):
        np.testing.assert_array_equal(run_session(session, feeds)[next(iter(expected))], *expected.values())


def _sealed_plaintext(tmp_path, key, plaintext: bytes) -> pathlib.Path:
    """An authentic version 2 file around any plaintext (what only a key holder can make)."""
    path = tmp_path / "crafted.mpe"
    with path.open("wb") as file:
        encrypt_module._write_container(file, plaintext, key, CHUNK, 2)
    return path


def _v2_plaintext(graph: bytes, weights: bytes) -> bytes:
    head = struct.pack(">Q", len(graph)) + graph
    return head + bytes(-len(head) % 64) + weights


def _split_model(**external: str) -> tuple[bytes, bytes]:
    """The small model's v2 graph and weights, with w1's external-data entries overridden."""
    import onnx

    graph, weights = io.to_split_bytes(_model())
    proto = onnx.ModelProto.FromString(graph)
    for tensor in proto.graph.initializer:
        if tensor.name == "w1":
            for entry in tensor.external_data:
                entry.value = external.get(entry.key, entry.value)
    return proto.SerializeToString(), weights


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"offset": "8"}, "aligned"),
        ({"offset": str(10**9)}, "reads bytes"),
        ({"length": "12"}, "reads bytes"),
        ({"offset": "x"}, "reads bytes"),
        ({"location": "../../etc/passwd"}, "not in the weights buffer"),
    ],
)
def test_malformed_version_2_plaintext_is_a_load_error(tmp_path, key, override, match):
    path = _sealed_plaintext(tmp_path, key, _v2_plaintext(*_split_model(**override)))
    with pytest.raises(ModelLoadError, match=match):
        decrypt_model(path, key)
    with pytest.raises(ModelLoadError, match=match):
        decrypt_model_bytes(path, key)


def test_version_2_graph_length_out_of_range_is_a_load_error(tmp_path, key):
    graph, weights = _split_model()
    for plaintext in (struct.pack(">Q", 10**6) + graph, b"\x00" * 4):
        with pytest.raises(ModelLoadError, match=r"graph's length|not an ONNX model"):
            decrypt_model(_sealed_plaintext(tmp_path, key, plaintext), key)
    assert decrypt_model_bytes(_sealed_plaintext(tmp_path, key, _v2_plaintext(graph, weights)), key) == (
        io.to_bytes(_model())
    )


# --- nothing in plaintext on disk ---------------------------------------------------------


def _weight_blocks(model: ir.Model) -> list[bytes]:
    """Every aligned 32-byte block of every weight: any 64-byte run of a weight contains one."""
    blocks = []
    for value in model.graph.initializers.values():
        raw = value.const_value.tobytes()
        blocks += [raw[i : i + 32] for i in range(0, len(raw) - 31, 32)]
    return blocks


def _leaks(data: bytes, blocks: list[bytes]) -> int:
    return sum(block in data for block in blocks)


def test_no_plaintext_weights_in_anything_encryption_writes(tmp_path, key, monkeypatch):
    model = _model(7)
    blocks = _weight_blocks(model)
    source = io.save(model, tmp_path / "plain" / "model.onnx", external_data=True, size_threshold_bytes=16)
    assert _leaks((tmp_path / "plain" / "model.onnx.data").read_bytes(), blocks) == len(
        blocks
    )  # the scan works

    staged_files: dict[str, bytes] = {}
    real_replace = os.replace

    def spying_replace(src, dst, *args, **kwargs):
        folder = pathlib.Path(src).parent
        for path in folder.rglob("*"):
            if path.is_file():
                staged_files[str(path)] = path.read_bytes()
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spying_replace)
    out = tmp_path / "out"
    encrypt_model(source, out / "model.mpe", key, chunk_bytes=CHUNK)
    encrypt_model(model, out / "model2.mpe", key)
    monkeypatch.undo()
    assert len(staged_files) == 2  # the temporary folders held just the staged .mpe files
    written = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert sorted(pathlib.Path(p).name for p in written) == ["model.mpe", "model2.mpe"]
    for name, data in {**staged_files, **written}.items():
        assert _leaks(data, blocks) == 0, name


PUBLIC_API = {
    "modelpress.protect.encrypt": [
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
    ],
    "modelpress.protect.keys": [
        "KEY_BYTES",
        "Key",
        "KeySource",
        "generate_key",
        "key_file_warning",
        "key_id",
        "resolve_key",
        "write_key_file",
    ],
    "modelpress.runtime.run": [
        "bind_inputs",
        "load_array",
        "open_model_session",
        "run_model_file",
        "save_outputs",
    ],
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_public_api_is_pinned(module_name):
    module = __import__(module_name, fromlist=["__all__"])
    assert sorted(module.__all__) == sorted(PUBLIC_API[module_name])
    for name in module.__all__:
        assert hasattr(module, name), name


def test_package_exports_exist():
    for name in protect.__all__:
        assert hasattr(protect, name), name
