"""A package can hold a Deep Compression model: built, verified, run and benchmarked like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from modelpress.cli.main import app
from modelpress.compress import compress_file, decompress_file
from modelpress.errors import PackageError
from modelpress.ir import io
from modelpress.package import build_package, load_package
from modelpress.runtime.session import create_session, run_session
from tests.compress.models import cnn

_X = np.random.default_rng(7).standard_normal((2, 8, 4, 4)).astype(np.float32)


@pytest.fixture
def mpz(tmp_path):
    compress_file(io.save(cnn(), tmp_path / "m.onnx"), tmp_path / "m.mpz", dim_values={"batch": 1})
    return tmp_path / "m.mpz"


def test_package_holds_the_mpz_and_runs_it(tmp_path, mpz):
    package = load_package(build_package(mpz, tmp_path / "pkg"))
    assert (
        package.manifest.model == "model.mpz"
        and (tmp_path / "pkg" / "model.mpz").read_bytes() == mpz.read_bytes()
    )
    decompress_file(mpz, tmp_path / "back.onnx")
    expected = run_session(create_session(tmp_path / "back.onnx", level="all"), {"x": _X})
    got = package.run([_X])
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array)
    report = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app, ["bench", str(tmp_path / "pkg"), "--runs", "3", "--warmup", "1", "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["models"][0]["kind"] == "package"


def test_a_damaged_mpz_is_not_packaged_and_a_tampered_one_not_run(tmp_path, mpz):
    data = bytearray(mpz.read_bytes())
    data[-40] ^= 1
    (tmp_path / "bad.mpz").write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["package", str(tmp_path / "bad.mpz"), "-o", str(tmp_path / "bad")])
    assert result.exit_code == 11, result.output
    assert not (tmp_path / "bad").exists()
    build_package(mpz, tmp_path / "pkg")
    (tmp_path / "pkg" / "model.mpz").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"model\.mpz"):
        load_package(tmp_path / "pkg").run([_X])
