"""Text embedders for the semantic cache: a user turn in, a unit vector out, so that a dot
product is the cosine similarity the cache's threshold is set in.

``load_embedder("wordllama")`` is WordLlama (PyPI ``wordllama``, config ``l2_supercat``,
256 dims): static token embeddings distilled from Llama 2 and average-pooled, weights and
tokenizer both inside the wheel, so it loads offline in ~0.2 s and embeds a short question in
tens of microseconds. (wordllama 0.4 looks for its bundled tokenizer under ``tokenizer/``
but ships it under ``tokenizers/``, then tries Hugging Face; giving the package folder as
``cache_dir`` with downloads disabled makes it find the bundled file.)

Chinese: Llama 2's vocabulary has few Chinese words, so Chinese is cut into single
characters and UTF-8 bytes; unrelated Chinese questions score 0.2-0.4 against each other
(English ones near 0) and particles carry much of the vector. ``load_embedder(
"wordllama+cjk")`` keeps WordLlama for everything and, for text with CJK characters, adds a
hashed character-unigram and -bigram vector in 256 dimensions of its own (CJK_WEIGHT of
the squared norm): a Chinese pair's cosine is then a blend of both, an English pair's is
WordLlama's alone. `llmpipe bench cache` measures both on the FAQ workload."""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from pathlib import Path
from typing import Protocol

import numpy as np

WORDLLAMA_CONFIG = "l2_supercat"
WORDLLAMA_DIMS = 256
HASH_DIMS = 256
CJK_WEIGHT = 0.5            # share of a CJK text's squared norm given to its character n-grams
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
# Chinese punctuation and space carry no meaning for the n-grams
_NGRAM_SKIP = re.compile(r"[\s\u3000-\u303f\uff00-\uff0f\uff1a-\uff20!-/:-@\[-`{-~]")
NAMES = ("wordllama", "wordllama+cjk")


class Embedder(Protocol):
    """What the semantic cache needs from an embedder."""
    name: str
    dims: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 array (len(texts), dims), each row of L2 norm 1 (or 0 for empty text)."""
        ...


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to norm 1; a zero row (nothing the model knows) stays zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class WordLlamaEmbedder:
    """WordLlama from the files in its wheel; no network."""

    def __init__(self, config: str = WORDLLAMA_CONFIG, dims: int = WORDLLAMA_DIMS) -> None:
        import wordllama
        from wordllama import WordLlama

        self.model = WordLlama.load(config=config, dim=dims,
                                    cache_dir=Path(wordllama.__file__).parent,
                                    disable_download=True)
        self.name = f"wordllama-{config}-{dims}"
        self.dims = dims

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dims), np.float32)
        # Llama's vocabulary is case-sensitive ("Where" and "where" are different tokens);
        # a question's meaning is not
        prepared = [" ".join(unicodedata.normalize("NFKC", t).casefold().split()) for t in texts]
        vectors = np.asarray(self.model.embed(prepared, norm=False), dtype=np.float32)
        return unit_rows(vectors)


def has_cjk(text: str) -> bool:
    return CJK.search(text) is not None


def _bucket(gram: str) -> tuple[int, float]:
    """A stable (dimension, sign) for an n-gram: blake2b, not hash(), which is salted per
    process and would move every stored vector on a restart."""
    digest = hashlib.blake2b(gram.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % HASH_DIMS, (1.0 if value >> 63 else -1.0)


def char_ngrams(text: str, dims: int = HASH_DIMS) -> np.ndarray:
    """Signed feature hashing of the text's characters and character bigrams (punctuation
    and space dropped, Latin letters lower-cased), each weighted 1 + log(count), unit norm."""
    chars = _NGRAM_SKIP.sub("", text.lower())
    counts: dict[str, int] = {}
    for gram in [*chars, *(chars[i:i + 2] for i in range(len(chars) - 1))]:
        counts[gram] = counts.get(gram, 0) + 1
    vector = np.zeros(dims, np.float32)
    for gram, count in counts.items():
        dim, sign = _bucket(gram)
        vector[dim] += sign * (1.0 + math.log(count))
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


class CjkBlendEmbedder:
    """WordLlama, plus character n-grams for text with CJK characters, in separate halves
    of the vector: [sqrt(1-w) * wordllama, sqrt(w) * ngrams] for CJK text,
    [wordllama, 0] otherwise. Two CJK texts: cos = (1-w) cos_wordllama + w cos_ngrams."""

    def __init__(self, base: Embedder, weight: float = CJK_WEIGHT) -> None:
        self.base = base
        self.weight = weight
        self.name = f"{base.name}+cjk{HASH_DIMS}"
        self.dims = base.dims + HASH_DIMS

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), np.float32)
        if not texts:
            return out
        out[:, :self.base.dims] = self.base.embed(list(texts))
        for row, text in enumerate(texts):
            if has_cjk(text):
                out[row, :self.base.dims] *= math.sqrt(1 - self.weight)
                out[row, self.base.dims:] = math.sqrt(self.weight) * char_ngrams(text)
        return unit_rows(out)


def load_embedder(name: str = "wordllama+cjk") -> Embedder:
    """An embedder by name: ``wordllama`` (the model alone) or ``wordllama+cjk`` (the
    default: the model, plus character n-grams for CJK text)."""
    if name == "wordllama":
        return WordLlamaEmbedder()
    if name == "wordllama+cjk":
        return CjkBlendEmbedder(WordLlamaEmbedder())
    raise ValueError(f"unknown embedder {name!r}: expected one of {', '.join(NAMES)}")
