"""`.mpz` files run where `.onnx` files do: open_model_session, `modelpress run` and `bench`."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.compress import compress_file, decompress_file, load_compressed_model
from modelpress.ir import io
from modelpress.runtime.run import open_model_session
from modelpress.runtime.session import create_session, run_session
from tests.compress.models import cnn

_X = np.random.default_rng(5).standard_normal((3, 8, 4, 4)).astype(np.float32)


def _compressed(tmp_path):
    source = io.save(cnn(), tmp_path / "m.onnx")
    compress_file(source, tmp_path / "m.mpz", sparsity=0.5, dim_values={"batch": 1})
    decompress_file(tmp_path / "m.mpz", tmp_path / "back.onnx")
    return tmp_path / "m.mpz", tmp_path / "back.onnx"


def test_open_model_session_decodes_mpz_in_memory(tmp_path):
    mpz, back = _compressed(tmp_path)
    expected = run_session(create_session(back, level="all"), {"x": _X})
    for source in (mpz, mpz.read_bytes()):  # a path, or the bytes a package hands over
        got = run_session(open_model_session(source, level="all"), {"x": _X})
        assert got.keys() == expected.keys()
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])  # the same weights, bit for bit
    assert len(load_compressed_model(mpz).graph) == len(io.load(back).graph)


def test_cli_run_and_bench_take_mpz(tmp_path):
    mpz, back = _compressed(tmp_path)
    np.save(tmp_path / "x.npy", _X)
    runner = CliRunner()
    result = runner.invoke(
        app, ["run", str(mpz), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]
    )
    assert result.exit_code == 0, result.output
    expected = run_session(create_session(back, level="all"), {"x": _X})
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), next(iter(expected.values())))
    report = tmp_path / "bench.json"
    result = runner.invoke(
        app, ["bench", str(back), str(mpz), "--runs", "3", "--warmup", "1", "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    kinds = {m["name"]: m["kind"] for m in json.loads(report.read_text())["models"]}
    assert kinds == {"back.onnx": "onnx", "m.mpz": "mpz"}


def test_a_damaged_mpz_fails_to_run_with_exit_11(tmp_path):
    mpz, _ = _compressed(tmp_path)
    data = bytearray(mpz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    mpz.write_bytes(bytes(data))
    np.save(tmp_path / "x.npy", _X)
    result = CliRunner().invoke(
        app, ["run", str(mpz), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]
    )
    assert result.exit_code == 11, result.output
    assert not (tmp_path / "y.npy").exists()
