"""A model obfuscated into opaque operators travels in a package with its operator library."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.errors import PackageError
from modelpress.examples import build_example_cnn
from modelpress.package import build_package, load_package
from modelpress.protect import generate_key
from modelpress.protect.obfuscate import obfuscate_model
from modelpress.protect.obfuscate.library import write_obfuscated
from modelpress.runtime.feeds import random_feeds
from modelpress.runtime.session import create_session, run_session


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("mode", ["runtime", "transport"])
def test_package_carries_the_library_and_runs_in_both_modes(tmp_path, encrypt, mode):
    model = build_example_cnn()
    feeds = random_feeds(model, 0)
    expected = run_session(create_session(model), feeds)
    opaque, _ = obfuscate_model(model.clone(), seed=3, opaque=True)
    key = generate_key()
    written = write_obfuscated(opaque, tmp_path / ("m.mpe" if encrypt else "m.onnx"), key, encrypt=encrypt)
    package = load_package(build_package(written.model, tmp_path / "pkg"))
    assert sorted(package.manifest.files) == sorted([package.manifest.model, "model.mplib"])
    session = package.open_session(key, mode=mode)
    for name, value in run_session(session, feeds).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6)


def test_a_tampered_library_in_a_package_is_refused(tmp_path):
    opaque, _ = obfuscate_model(build_example_cnn(), seed=3, opaque=True)
    written = write_obfuscated(opaque, tmp_path / "m.onnx")
    root = build_package(written.model, tmp_path / "pkg")
    data = bytearray((root / "model.mplib").read_bytes())
    data[len(data) // 2] ^= 1
    (root / "model.mplib").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"model\.mplib"):
        load_package(root)


def test_an_obfuscated_model_without_its_library_is_not_packaged(tmp_path):
    opaque, _ = obfuscate_model(build_example_cnn(), seed=3, opaque=True)
    written = write_obfuscated(opaque, tmp_path / "m.onnx")
    written.library.unlink()
    with pytest.raises(PackageError, match=r"its library m\.mplib is not beside it"):
        build_package(written.model, tmp_path / "pkg")
