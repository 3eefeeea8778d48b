"""`modelpress keygen`, `protect` and `run`: happy paths, errors and exit codes, keys never shown."""

from __future__ import annotations

import json
import stat

import numpy as np
import onnx_ir as ir
import pytest
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.protect import KeySource, decrypt_model_bytes, key_id, read_header

W = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)


def _model() -> ir.Model:
    b = GraphBuilder()
    x = b.input("x", ir.DataType.FLOAT, [1, 4])
    y = b.op("MatMul", x, b.const(W, "w"))
    return b.build([y, b.op("Relu", y)])


def _run(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def work(tmp_path):
    model = io.save(_model(), tmp_path / "model.onnx")
    x = tmp_path / "x.npy"
    np.save(x, np.array([[1, 2, 3, 4]], dtype=np.float32))
    result = _run("keygen", "-o", tmp_path / "k.key")
    assert result.exit_code == 0, result.output
    key = KeySource.from_file(tmp_path / "k.key").load()
    return tmp_path, model, x, key


def _protect(tmp_path, model, *extra: object):
    return _run(
        "protect", model, "-o", tmp_path / "model.mpe", "--encrypt", "--key-file", tmp_path / "k.key", *extra
    )


def test_keygen_writes_a_private_key_and_never_prints_it(tmp_path):
    result = _run("keygen", "-o", tmp_path / "k.key")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "k.key").read_text()
    assert len(text) == 65 and text.endswith("\n")
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    key = bytes.fromhex(text.strip())
    assert text.strip() not in result.output and text.strip().upper() not in result.output
    assert key_id(key) in result.output


def test_keygen_refuses_to_overwrite_without_force(work):
    tmp_path, _, _, key = work
    result = _run("keygen", "-o", tmp_path / "k.key")
    assert result.exit_code == 2
    assert "--force" in result.output
    assert KeySource.from_file(tmp_path / "k.key").load() == key
    result = _run("keygen", "-o", tmp_path / "k.key", "--force")
    assert result.exit_code == 0, result.output
    assert KeySource.from_file(tmp_path / "k.key").load() != key


def test_protect_encrypts_and_reports(work):
    tmp_path, model, _, key = work
    result = _protect(tmp_path, model)
    assert result.exit_code == 0, result.output
    assert key_id(key) in result.output and key.hex() not in result.output
    assert decrypt_model_bytes(tmp_path / "model.mpe", key) == io.to_bytes(io.load(model))
    result = _protect(tmp_path, model, "--json", "--chunk-bytes", 256)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    header = read_header(tmp_path / "model.mpe")
    assert report["chunks"] == header.chunk_count > 1
    assert report["file_bytes"] == (tmp_path / "model.mpe").stat().st_size
    assert report["key_id"] == key_id(key)


def test_protect_with_key_from_environment(work):
    tmp_path, model, _, key = work
    result = _run(
        "protect",
        model,
        "-o",
        tmp_path / "e.mpe",
        "--encrypt",
        "--key-env",
        "MP_KEY",
        env={"MP_KEY": key.hex()},
    )
    assert result.exit_code == 0, result.output
    assert decrypt_model_bytes(tmp_path / "e.mpe", key) == io.to_bytes(io.load(model))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "a key is needed"),
        (("--key-file", "k.key", "--key-env", "V"), "either --key-file or --key-env"),
        (("--key-file", "k.key", "--strength", "extreme", "--obfuscate"), "unknown obfuscation strength"),
    ],
)
def test_protect_usage_errors(work, extra, message):
    tmp_path, model, _, _ = work
    extra = tuple(tmp_path / e if e == "k.key" else e for e in extra)
    result = _run("protect", model, "-o", tmp_path / "o.mpe", "--encrypt", *extra)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o.mpe").exists()


def test_protect_without_a_protection_is_a_usage_error(work):
    tmp_path, model, _, _ = work
    result = _run("protect", model, "-o", tmp_path / "o.mpe", "--key-file", tmp_path / "k.key")
    assert result.exit_code == 2
    assert "choose a protection" in result.output
    assert not (tmp_path / "o.mpe").exists()


def test_obfuscate_writes_an_equivalent_model_without_the_original_names(work):
    from modelpress.runtime.compare import compare_models

    tmp_path, model, _, _ = work
    result = _run("protect", model, "-o", tmp_path / "o.onnx", "--obfuscate", "--seed", "7", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert "seed" not in report  # the seed inverts the permutation: never shown
    original, obfuscated = io.load(model), io.load(tmp_path / "o.onnx")
    assert compare_models(original, obfuscated, seeds=(0, 1)).max_rel <= 1e-5
    interface = {v.name for v in (*original.graph.inputs, *original.graph.outputs)}
    internal = {n.name for n in original.graph} | {
        v.name for n in original.graph for v in n.outputs if v.name not in interface
    }
    kept = {n.name for n in obfuscated.graph} | {v.name for n in obfuscated.graph for v in n.outputs}
    assert internal.isdisjoint(kept)


def test_obfuscate_and_encrypt_together(work):
    tmp_path, model, _, _ = work
    result = _run(
        "protect",
        model,
        "-o",
        tmp_path / "o.mpe",
        "--obfuscate",
        "--encrypt",
        "--key-file",
        tmp_path / "k.key",
    )
    assert result.exit_code == 0, result.output
    key = KeySource.from_file(tmp_path / "k.key")
    obfuscated = io.load(decrypt_model_bytes(tmp_path / "o.mpe", key))
    assert {n.name for n in obfuscated.graph}.isdisjoint({n.name for n in io.load(model).graph})


def test_protect_errors_have_their_exit_codes(work):
    tmp_path, model, _, _ = work
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    result = _run(
        "protect",
        tmp_path / "bad.onnx",
        "-o",
        tmp_path / "o.mpe",
        "--encrypt",
        "--key-file",
        tmp_path / "k.key",
    )
    assert result.exit_code == 3
    (tmp_path / "bad.key").write_text("not a key\n")
    result = _run("protect", model, "-o", tmp_path / "o.mpe", "--encrypt", "--key-file", tmp_path / "bad.key")
    assert result.exit_code == 7
    assert "ProtectionError" in result.output and "not a 256-bit key" in result.output
    result = _run("protect", model, "-o", tmp_path / "o.mpe", "--encrypt", "--key-env", "MP_UNSET_KEY")
    assert result.exit_code == 7
    assert "MP_UNSET_KEY" in result.output
    assert not (tmp_path / "o.mpe").exists()


def test_loose_key_file_permissions_warn_on_stderr(work):
    tmp_path, model, _, key = work
    (tmp_path / "k.key").chmod(0o644)
    result = _protect(tmp_path, model)
    assert result.exit_code == 0, result.output
    assert "chmod 600" in result.stderr and key.hex() not in result.output


def _expected(x):
    y = x @ W
    return y, np.maximum(y, 0)


def test_run_encrypted_model_prints_json(work):
    tmp_path, model, x, key = work
    assert _protect(tmp_path, model).exit_code == 0
    result = _run("run", tmp_path / "model.mpe", "--key-file", tmp_path / "k.key", "--input", x)
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.stdout)["outputs"]
    expected = _expected(np.load(x))
    assert len(outputs) == 2
    for got, want in zip(outputs.values(), expected, strict=True):
        assert got["dtype"] == "float32" and got["shape"] == [1, 3]
        np.testing.assert_allclose(np.array(got["data"], dtype=np.float32), want, rtol=1e-6)
    assert key.hex() not in result.output


def test_run_writes_npz_and_npy(work):
    tmp_path, model, x, _ = work
    assert _protect(tmp_path, model).exit_code == 0
    result = _run(
        "run",
        tmp_path / "model.mpe",
        "--key-file",
        tmp_path / "k.key",
        "--input",
        f"x={x}",
        "-o",
        tmp_path / "y.npz",
    )
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "y.npz") as archive:
        for name, want in zip(archive.files, _expected(np.load(x)), strict=True):
            np.testing.assert_allclose(archive[name], want, rtol=1e-6)
    result = _run("run", model, "--input", x, "-o", tmp_path / "y.npy")
    assert result.exit_code == 2 and "has 2 outputs" in result.output
    assert not (tmp_path / "y.npy").exists()


def test_run_plain_model_with_key_from_env_is_fine(work):
    _, model, x, key = work
    result = _run("run", model, "--input", x, "--key-env", "MP_KEY", env={"MP_KEY": key.hex()})
    assert result.exit_code == 0, result.output
    assert "outputs" in json.loads(result.stdout)


def test_run_refuses_encrypted_model_without_key_wrong_key_or_damage(work):
    tmp_path, model, x, _ = work
    assert _protect(tmp_path, model).exit_code == 0
    result = _run("run", tmp_path / "model.mpe", "--input", x, "-o", tmp_path / "y.npz")
    assert result.exit_code == 7 and "encrypted" in result.output
    assert _run("keygen", "-o", tmp_path / "other.key").exit_code == 0
    result = _run(
        "run",
        tmp_path / "model.mpe",
        "--key-file",
        tmp_path / "other.key",
        "--input",
        x,
        "-o",
        tmp_path / "y.npz",
    )
    assert result.exit_code == 7 and "wrong key" in result.output
    data = bytearray((tmp_path / "model.mpe").read_bytes())
    data[-3] ^= 1
    (tmp_path / "model.mpe").write_bytes(bytes(data))
    result = _run(
        "run",
        tmp_path / "model.mpe",
        "--key-file",
        tmp_path / "k.key",
        "--input",
        x,
        "-o",
        tmp_path / "y.npz",
    )
    assert result.exit_code == 7 and "failed authentication" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "y.npz").exists()


def test_run_input_errors(work):
    tmp_path, model, x, _ = work
    result = _run("run", model, "--input", f"nope={x}")
    assert result.exit_code == 2 and "no input named nope" in result.output
    result = _run("run", model, "--input", tmp_path / "missing.npy")
    assert result.exit_code == 2 and "no such input file" in result.output
    result = _run("run", model)
    assert result.exit_code == 2 and "no feed for input" in result.output


def _opaque(tmp_path, model, *extra: object):
    return _run("protect", model, "-o", tmp_path / "o.onnx", "--obfuscate", "--opaque", "--seed", 3, *extra)


@pytest.mark.parametrize("mode", ["runtime", "transport"])
def test_opaque_obfuscation_writes_a_library_and_runs_in_both_modes(work, mode):
    tmp_path, model, x, _ = work
    result = _opaque(tmp_path, model, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["library"] == str(tmp_path / "o.mplib") and report["library_encrypted"] is False
    assert "seed" not in report and report["regions"]
    result = _run("run", tmp_path / "o.onnx", "--input", x, "--mode", mode, "-o", tmp_path / "y.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "y.npz") as archive:
        for name, want in zip(archive.files, _expected(np.load(x)), strict=True):
            np.testing.assert_allclose(archive[name], want, rtol=1e-5)


def test_opaque_obfuscation_with_a_key_encrypts_the_library(work):
    tmp_path, model, x, key = work
    result = _opaque(tmp_path, model, "--key-file", tmp_path / "k.key")
    assert result.exit_code == 0, result.output
    assert "o.mplib" in result.output and "encrypted" in result.output
    assert (tmp_path / "o.mplib").read_bytes().startswith(b"\x89MPE")
    result = _run("run", tmp_path / "o.onnx", "--input", x)
    assert result.exit_code == 7 and "library is encrypted" in result.output
    result = _run(
        "run", tmp_path / "o.onnx", "--input", x, "--key-file", tmp_path / "k.key", "--mode", "transport"
    )
    assert result.exit_code == 0, result.output
    assert key.hex() not in result.output


def test_opaque_obfuscation_errors(work):
    tmp_path, model, x, _ = work
    result = _run("protect", model, "-o", tmp_path / "o.onnx", "--opaque")
    assert result.exit_code == 2 and "add --obfuscate" in result.output
    assert _opaque(tmp_path, model).exit_code == 0
    result = _run("run", tmp_path / "o.onnx", "--input", x, "--mode", "fast")
    assert result.exit_code == 2 and "unknown run mode" in result.output
    (tmp_path / "o.mplib").unlink()
    result = _run("run", tmp_path / "o.onnx", "--input", x)
    assert result.exit_code == 7 and "operator library not found" in result.output
    assert "Traceback" not in result.output
