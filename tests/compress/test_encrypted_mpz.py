"""An encrypted `.mpz` (`.mpe` format version 3): as small as the `.mpz`, decoded in memory after decryption."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.compress import compress_file, decompress_file
from modelpress.errors import CompressionError, ProtectionError, UsageError
from modelpress.ir import io
from modelpress.protect import generate_key
from modelpress.protect.encrypt import (
    COMPRESSED_VERSION,
    decrypt_model,
    decrypt_model_bytes,
    encrypt_model,
    load_encrypted,
)
from modelpress.runtime.run import open_model_session
from modelpress.runtime.session import create_session, run_session
from tests.compress.models import cnn

_X = np.random.default_rng(9).standard_normal((2, 8, 4, 4)).astype(np.float32)


@pytest.fixture
def files(tmp_path):
    mpz = tmp_path / "m.mpz"
    compress_file(io.save(cnn(), tmp_path / "m.onnx"), mpz, sparsity=0.5, dim_values={"batch": 1})
    decompress_file(mpz, tmp_path / "back.onnx")
    return mpz, tmp_path / "back.onnx"


def test_encrypting_an_mpz_keeps_it_small_and_it_runs_bit_exact(tmp_path, files):
    mpz, back = files
    key = generate_key()
    header = encrypt_model(mpz, tmp_path / "m.mpe", key)
    assert header.version == COMPRESSED_VERSION
    assert header.plaintext_bytes == mpz.stat().st_size  # the coded weights stay coded
    expected = run_session(create_session(back, level="all"), {"x": _X})
    got = run_session(open_model_session(tmp_path / "m.mpe", key, level="all"), {"x": _X})
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array)
    assert decrypt_model_bytes(tmp_path / "m.mpe", key) == io.to_bytes(io.load(back))
    assert len(load_encrypted(tmp_path / "m.mpe", key).graph) == len(io.load(back).graph)
    decrypted = decrypt_model(tmp_path / "m.mpe", key)
    assert len(decrypted.to_model().graph) == len(io.load(back).graph)
    assert mpz.read_bytes()[-64:] not in (tmp_path / "m.mpe").read_bytes()  # ciphertext, not the .mpz


def test_wrong_key_damage_and_misuse(tmp_path, files):
    mpz, _ = files
    key = generate_key()
    encrypt_model(mpz, tmp_path / "m.mpe", key)
    with pytest.raises(ProtectionError, match="wrong key"):
        open_model_session(tmp_path / "m.mpe", generate_key())
    data = bytearray((tmp_path / "m.mpe").read_bytes())
    data[-20] ^= 1
    with pytest.raises(ProtectionError):
        decrypt_model(bytes(data), key)
    with pytest.raises(UsageError, match="1 or 2"):
        encrypt_model(mpz, tmp_path / "x.mpe", key, format_version=3)
    broken = bytearray(mpz.read_bytes())
    broken[len(broken) // 2] ^= 1
    (tmp_path / "broken.mpz").write_bytes(bytes(broken))
    with pytest.raises(CompressionError):  # nothing broken gets encrypted
        encrypt_model(tmp_path / "broken.mpz", tmp_path / "y.mpe", key)
    assert not (tmp_path / "y.mpe").exists()


def test_cli_compress_then_protect_then_run(tmp_path, files):
    mpz, back = files
    runner = CliRunner()
    assert runner.invoke(app, ["keygen", "-o", str(tmp_path / "k.key")]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "protect",
            str(mpz),
            "-o",
            str(tmp_path / "m.mpe"),
            "--encrypt",
            "--key-file",
            str(tmp_path / "k.key"),
        ],
    )
    assert result.exit_code == 0, result.output
    np.save(tmp_path / "x.npy", _X)
    result = runner.invoke(
        app,
        [
            "run",
            str(tmp_path / "m.mpe"),
            "--key-file",
            str(tmp_path / "k.key"),
            "--input",
            str(tmp_path / "x.npy"),
            "-o",
            str(tmp_path / "y.npy"),
        ],
    )
    assert result.exit_code == 0, result.output
    expected = run_session(create_session(back, level="all"), {"x": _X})
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), next(iter(expected.values())))
    result = runner.invoke(app, ["protect", str(mpz), "-o", str(tmp_path / "o.onnx"), "--obfuscate"])
    assert result.exit_code == 2 and ".mpz" in result.output
