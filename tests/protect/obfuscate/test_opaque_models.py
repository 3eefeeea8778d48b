"""Opaque-operator obfuscation end to end: library files, both run modes, bad input, the zoo and leak scans."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from modelpress.errors import ProtectionError, UsageError
from modelpress.examples.cnn import build_example_cnn
from modelpress.ir import io
from modelpress.ir.stats import op_histogram
from modelpress.protect import generate_key
from modelpress.protect.obfuscate import (
    OPAQUE_PASSES,
    CompressSubgraphsPass,
    ScrambleWeightsPass,
    attach_library,
    has_library,
    library_path,
    obfuscate_model,
    verify_obfuscation,
    write_obfuscated,
)
from modelpress.protect.obfuscate._scramble import correlation
from modelpress.runtime.feeds import random_feeds
from modelpress.runtime.run import open_model_session, run_model_file
from tests.protect.obfuscate.conftest import DIM_VALUES, HAS_TORCH
from tests.protect.obfuscate.leaks import (
    RUN_BYTES,
    leaked_names,
    leaked_op_types,
    long_op_types_in,
    longest_common_run,
    original_tensors,
)

MAX_CORRELATION = 0.1  # issue 4: |corr(stored, original)| of every scrambled weight
RTOL = 1e-5  # issue 4: obfuscated outputs equal the original within 1e-5 relative, both modes


def _opaque(model: ir.Model, seed: int = 0, strength: str = "high") -> ir.Model:
    after, report = obfuscate_model(model.clone(), seed=seed, strength=strength, opaque=True)
    assert [r.name for r in report.records][-5:] == [*OPAQUE_PASSES, "anonymize-names"]
    assert report.opaque and report.regions
    json.dumps(report.to_json())
    return after


@pytest.fixture
def written(tmp_path):
    """(original, WrittenFiles) of the example CNN, library not encrypted."""
    model = build_example_cnn()
    return model, write_obfuscated(_opaque(model), tmp_path / "cnn.onnx")


def _mode(path, mode: str, key=None) -> ir.Model:
    loaded = io.load(path)
    assert has_library(loaded)
    return attach_library(loaded, model_path=path, key=key, mode=mode)


# --- files and modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["runtime", "transport"])
def test_both_modes_compute_the_original(written, mode):
    model, files = written
    assert files.library == library_path(files.model) == files.model.with_suffix(".mplib")
    attached = _mode(files.model, mode)
    verify_obfuscation(model, attached, rtol=RTOL)
    if mode == "transport":
        assert op_histogram(attached) == op_histogram(model) and not attached.functions


def test_model_file_alone_holds_no_function_and_no_standard_op(written):
    model, files = written
    stored = io.load(files.model)
    assert not stored.functions
    assert leaked_op_types(model, files.model.read_bytes()) == []
    assert all(node.domain for node in stored.graph)


@pytest.mark.parametrize("mode", ["runtime", "transport"])
def test_open_model_session_finds_the_library_beside_the_model(written, mode):
    model, files = written
    session = open_model_session(files.model, mode=mode)
    feeds = random_feeds(model, seed=0)
    got = run_model_file(files.model, feeds, mode=mode)
    assert list(got) == [o.name for o in session.get_outputs()]
    want = open_model_session(io.to_bytes(model), level="disable").run(None, feeds)
    for array, expected in zip(got.values(), want, strict=True):
        np.testing.assert_allclose(array, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


def test_encrypted_library_and_model(tmp_path):
    model, key = build_example_cnn(), generate_key()
    files = write_obfuscated(_opaque(model), tmp_path / "cnn.mpe", key, encrypt=True)
    assert files.library_encrypted
    for mode in ("runtime", "transport"):
        session = open_model_session(files.model, key, mode=mode)
        feeds = random_feeds(model, seed=1)
        reference = open_model_session(io.to_bytes(model), level="disable")
        for got, want in zip(session.run(None, feeds), reference.run(None, feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def test_same_seed_same_files(tmp_path):
    model = build_example_cnn()
    first = write_obfuscated(_opaque(model, seed=5), tmp_path / "a.onnx")
    again = write_obfuscated(_opaque(model, seed=5), tmp_path / "b.onnx")
    assert first.model.read_bytes() == again.model.read_bytes()
    assert first.library.read_bytes() == again.library.read_bytes()


# --- bad input ------------------------------------------------------------------------------------------


def test_missing_library_is_a_protection_error(written):
    _, files = written
    files.library.unlink()
    with pytest.raises(ProtectionError, match=r"operator library not found.*\.mplib"):
        open_model_session(files.model)


def test_tampered_library_is_a_protection_error(written):
    _, files = written
    data = bytearray(files.library.read_bytes())
    data[len(data) // 2] ^= 1
    files.library.write_bytes(bytes(data))
    with pytest.raises(ProtectionError, match="does not match the model"):
        open_model_session(files.model, mode="transport")


def test_library_of_another_model_is_a_protection_error(tmp_path, written):
    _, files = written
    other = write_obfuscated(_opaque(build_example_cnn(seed=1), seed=1), tmp_path / "other.onnx")
    files.library.write_bytes(other.library.read_bytes())
    with pytest.raises(ProtectionError, match="belongs to another model"):
        open_model_session(files.model)


def test_encrypted_library_needs_the_right_key(tmp_path):
    key = generate_key()
    files = write_obfuscated(_opaque(build_example_cnn()), tmp_path / "cnn.onnx", key)
    with pytest.raises(ProtectionError, match="library is encrypted; give its key"):
        open_model_session(files.model)
    with pytest.raises(ProtectionError, match="wrong key"):
        open_model_session(files.model, generate_key())
    data = bytearray(files.library.read_bytes())
    data[-5] ^= 1
    files.library.write_bytes(bytes(data))
    with pytest.raises(ProtectionError, match="does not match the model"):
        open_model_session(files.model, key)


def test_model_bytes_without_library_and_bad_mode(written):
    _, files = written
    with pytest.raises(ProtectionError, match="came as bytes"):
        open_model_session(files.model.read_bytes())
    session = open_model_session(files.model.read_bytes(), library=files.library)
    assert session.get_outputs()
    with pytest.raises(UsageError, match="unknown run mode"):
        open_model_session(files.model, mode="fast")


def test_write_refuses_encrypt_without_key_and_a_model_named_like_its_library(tmp_path):
    model = _opaque(build_example_cnn())
    with pytest.raises(UsageError, match="needs a key"):
        write_obfuscated(model, tmp_path / "m.mpe", encrypt=True)
    with pytest.raises(UsageError, match="library's name"):
        write_obfuscated(model, tmp_path / "m.mplib")
    assert list(tmp_path.iterdir()) == []


# --- the models of issue 4 -----------------------------------------------------------------------------


def _check_no_leaks(model: ir.Model, files) -> None:
    model_data, library_data = files.model.read_bytes(), files.library.read_bytes()
    originals = original_tensors(model)
    for name, data in (("model", model_data), ("library", library_data)):
        run = longest_common_run(originals, data)
        assert run < RUN_BYTES, f"the {name} file holds a {run}-byte run of an original weight"
        assert long_op_types_in(model, data) == [] or (name == "library" and not files.library_encrypted)
    assert leaked_names(model, model_data) == []
    assert leaked_op_types(model, model_data) == []
    if not files.library_encrypted:
        assert leaked_names(model, library_data) == []
    else:
        interface = {v.name for v in (*model.graph.inputs, *model.graph.outputs)}
        names = {n.name for n in model.graph} | {v.name for n in model.graph for v in n.outputs}
        assert [n for n in names - interface if n and len(n) >= 8 and n.encode() in library_data] == []


def _check_scrambling(model: ir.Model) -> None:
    """Every weight the opaque ops take is stored with |corr| < 0.1 to its original."""
    compressed = model.clone()
    CompressSubgraphsPass()(compressed)
    originals = {n: v.const_value.numpy() for n, v in compressed.graph.initializers.items()}  # type: ignore[union-attr]
    ScrambleWeightsPass(0)(compressed)
    worst = max(
        abs(correlation(compressed.graph.initializers[n].const_value.numpy(), a))  # type: ignore[union-attr]
        for n, a in originals.items()
    )
    assert worst < MAX_CORRELATION, f"a scrambled weight keeps |correlation| {worst:.3f}"


def _end_to_end(model: ir.Model, tmp_path, *, encrypted: bool) -> None:
    key = generate_key() if encrypted else None
    files = write_obfuscated(_opaque(model), tmp_path / "m.onnx", key)
    for mode in ("runtime", "transport"):
        attached = _mode(files.model, mode, key)
        verify_obfuscation(model, attached, rtol=RTOL, seeds=(0, 1), dim_values=DIM_VALUES)
    _check_no_leaks(model, files)
    _check_scrambling(model)
    # One int32 index per weight element, the factors once per period: about the weights' size.
    assert files.library_bytes <= 1.25 * files.model_bytes + 50_000


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain-library", "encrypted-library"])
def test_example_cnn_end_to_end(tmp_path, encrypted):
    _end_to_end(build_example_cnn(), tmp_path, encrypted=encrypted)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("name", "folding", "encrypted"),
    [
        ("resnet_like", False, False),
        ("mobilenetv2_like", True, True),
        ("bert_like", True, False),
        ("bert_like", False, True),
    ],
)
def test_zoo_end_to_end(name, folding, encrypted, zoo_model_path, tmp_path):
    _end_to_end(io.load(zoo_model_path(name, folding)), tmp_path, encrypted=encrypted)


@pytest.mark.torch
@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_digits_cnn_end_to_end(tmp_path):
    import torch

    from modelpress.examples.digits import INPUT_NAME, OUTPUT_NAME, build_digits_cnn
    from modelpress.examples.torch_models import export_onnx

    # The exported graph of export_digits_cnn, without its few seconds of training.
    path = export_onnx(
        build_digits_cnn(0).eval(),
        (torch.zeros(1, 1, 8, 8),),
        tmp_path / "digits.onnx",
        constant_folding=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
    )
    _end_to_end(io.load(path), tmp_path, encrypted=True)


def test_the_leak_scan_finds_a_planted_run():
    weight = np.random.default_rng(0).standard_normal(64).astype(np.float32).tobytes()
    data = b"x" * 100 + weight[37 : 37 + RUN_BYTES] + b"y" * 100
    assert longest_common_run([weight], data) == RUN_BYTES
    assert longest_common_run([weight], data[:150] + b"z" + data[151:]) < RUN_BYTES


@pytest.mark.parametrize("mode", ["runtime", "transport"])
def test_onnxruntime_optimizes_both_modes_into_the_original_graph(written, tmp_path, mode):
    """Why the run modes cost nothing at ENABLE_ALL: inlined, the decoding and decoys fold away."""
    import collections

    import onnx

    from modelpress.runtime.session import create_session

    model, files = written
    histograms = []
    for name, candidate in (("original", model), (mode, _mode(files.model, mode))):
        create_session(candidate, level="all", optimized_model_path=tmp_path / f"{name}.onnx")
        histograms.append(
            collections.Counter(n.op_type for n in onnx.load(tmp_path / f"{name}.onnx").graph.node)
        )
    assert histograms[0] == histograms[1]


def test_every_flipped_byte_of_a_library_is_refused(written):
    """The digest binds model and library: a few hundred random single-byte changes, none accepted."""
    _, files = written
    data = files.library.read_bytes()
    rng = np.random.default_rng(0)
    for position in rng.integers(0, len(data), 300):
        flipped = bytearray(data)
        flipped[position] ^= int(rng.integers(1, 256))
        with pytest.raises(ProtectionError, match="does not match the model"):
            attach_library(io.load(files.model), model_path=None, library=bytes(flipped))
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(ProtectionError, match="does not match the model"):
            attach_library(io.load(files.model), model_path=None, library=data[:cut])


def test_a_library_lacking_an_operator_is_refused(tmp_path, written):
    import hashlib

    _, files = written
    other = write_obfuscated(_opaque(build_example_cnn(seed=1), seed=1), tmp_path / "other.onnx")
    model = io.load(files.model)
    binding = json.loads(model.metadata_props["modelpress.operator_library"])
    binding["sha256"] = hashlib.sha256(other.library.read_bytes()).hexdigest()
    model.metadata_props["modelpress.operator_library"] = json.dumps(binding)
    with pytest.raises(ProtectionError, match=r"lacks \d+ operator"):
        attach_library(model, model_path=None, library=other.library)
