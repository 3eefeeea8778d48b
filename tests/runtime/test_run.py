"""runtime.run: running plain and encrypted model files on arrays, and array files in and out."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import ModelLoadError, ProtectionError, UsageError
from modelpress.ir import io
from modelpress.ir.build import GraphBuilder
from modelpress.protect import encrypt_model, generate_key
from modelpress.runtime.run import load_array, open_model_session, run_model_file, save_outputs


def _two_input_model() -> ir.Model:
    b = GraphBuilder()
    a = b.input("a", ir.DataType.FLOAT, [2, 3])
    c = b.input("c", ir.DataType.FLOAT, [2, 3])
    total = b.op("Add", a, c)
    return b.build([total, b.op("Mul", total, b.const(np.float32(2.0), "two"))])


@pytest.fixture
def files(tmp_path):
    key = generate_key()
    plain = io.save(_two_input_model(), tmp_path / "m.onnx")
    encrypt_model(plain, tmp_path / "m.mpe", key)
    return plain, tmp_path / "m.mpe", key


A = np.arange(6, dtype=np.float32).reshape(2, 3)
C = np.ones((2, 3), dtype=np.float32)


def _expected(a, c):
    return [a + c, (a + c) * 2]


@pytest.mark.parametrize("encrypted", [False, True])
def test_positional_named_and_mapping_inputs(files, encrypted):
    plain, sealed, key = files
    path = sealed if encrypted else plain
    for outputs in (
        run_model_file(path, [A, C], key),
        run_model_file(path, {"c": C, "a": A}, key),
        run_model_file(path, [A], key, named={"c": C}),
        run_model_file(path, [C], key, named={"a": A}),
    ):
        assert len(outputs) == 2
        for got, want in zip(outputs.values(), _expected(A, C), strict=True):
            np.testing.assert_array_equal(got, want)


def test_binding_errors(files):
    plain, _, _ = files
    with pytest.raises(UsageError, match="no input named z; its inputs are a, c"):
        run_model_file(plain, named={"z": A})
    with pytest.raises(UsageError, match="3 unnamed inputs given, but only 2"):
        run_model_file(plain, [A, C, C])
    with pytest.raises(UsageError, match="no feed for input"):
        run_model_file(plain, [A])


def test_encrypted_file_needs_its_key(files):
    _, sealed, _ = files
    with pytest.raises(ProtectionError, match="encrypted"):
        open_model_session(sealed)
    with pytest.raises(ProtectionError, match="wrong key"):
        open_model_session(sealed, generate_key())


def test_plain_file_is_validated(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError):
        open_model_session(tmp_path / "bad.onnx")
    with pytest.raises(ModelLoadError, match="no such file"):
        open_model_session(tmp_path / "missing.onnx")


def test_load_array_never_unpickles(tmp_path):
    np.save(tmp_path / "a.npy", A)
    np.testing.assert_array_equal(load_array(tmp_path / "a.npy"), A)
    np.save(tmp_path / "o.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match=r"not a readable \.npy"):
        load_array(tmp_path / "o.npy")
    np.savez(tmp_path / "z.npz", a=A)
    with pytest.raises(UsageError, match=r"\.npz"):
        load_array(tmp_path / "z.npz")
    with pytest.raises(UsageError, match="no such input file"):
        load_array(tmp_path / "none.npy")


def test_save_outputs(tmp_path):
    outputs = {"y": A, "z": C}
    with pytest.raises(UsageError, match="has 2 outputs"):
        save_outputs(outputs, tmp_path / "o.npy")
    with pytest.raises(UsageError, match=r"\.npy \(one output\) or \.npz"):
        save_outputs(outputs, tmp_path / "o.txt")
    save_outputs({"y": A}, tmp_path / "o.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), A)
    save_outputs(outputs, tmp_path / "sub" / "o.npz")
    with np.load(tmp_path / "sub" / "o.npz") as archive:
        assert sorted(archive.files) == ["y", "z"]
        np.testing.assert_array_equal(archive["z"], C)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["o.npy", "o.npz", "sub"]
