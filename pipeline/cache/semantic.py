"""The semantic cache's index: user turns kept as unit vectors, one HNSW index (usearch) per
scope, so a lookup finds the most similar earlier question asked under the same tenant,
system prompt, model and parameters, and never one asked under another scope.

The scope is a hash the caller computes of everything that must match exactly; this module
only keeps scopes apart. Threshold, TTL and size caps are the caller's: ``nearest``
answers with the best compatible entry and its cosine similarity, and the caller decides
whether that similarity is a hit.

**One index per scope**, created on first use, rather than one index filtered by scope: a
scope is the unit of every lookup, and a filter on a shared graph either walks other
tenants' vectors or, when a scope is small, returns nothing of its own. `llmpipe bench
cache` measures both one big scope and many small ones.

**Near misses.** An embedding that averages words scores "cancel my order" and "don't
cancel my order" above 0.9. ``compatible`` is a cheap check applied to each candidate
before it is returned: the same script (Chinese is not answered in English), the same
negations, the same numbers and the same side of a few opposite pairs (enable/disable).
It errs towards a miss: a false miss costs one provider call, a false hit a wrong answer."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from usearch.index import Index

from pipeline.cache.embedder import CJK, Embedder

CANDIDATES = 8            # nearest entries examined for a compatible one
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 64

# --- compatible: the cheap post-check -----------------------------------------------------

_EN_NEGATIONS = frozenset({
    "not", "no", "never", "nor", "none", "nothing", "without", "cannot", "neither", "nobody"})
_ZH_NEGATION = re.compile(r"不|没|别|未|無|无|非|勿|莫|甭")
# A-not-A questions (可不可以, 是不是, 有没有) ask, they do not negate; nor do these words
_ZH_A_NOT_A = re.compile(r"(.)[不没]\1")
_ZH_NOT_NEGATIONS = re.compile(r"不好意思|不客气|不错|非常|无线")
_EN_NUMBER_WORDS = frozenset({
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "twice", "thrice", "half", "double", "triple", "single"})
_ZH_NUMERAL = re.compile(r"[零〇一二两三四五六七八九十百千万]+(?=[个件只双套次天日周月年元块号码位台张份倍])")
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?")
# Each group lists words of which a question means one; different members, different answer.
OPPOSITES: tuple[frozenset[str], ...] = tuple(frozenset(g) for g in (
    {"add", "remove", "delete"}, {"enable", "disable"}, {"turn on", "turn off"},
    {"increase", "decrease", "reduce"}, {"upgrade", "downgrade"}, {"open", "close"},
    {"start", "stop", "pause", "resume"}, {"before", "after", "within"},
    {"too much", "too little"}, {"earliest", "latest"}, {"lock", "unlock"},
    {"subscribe", "unsubscribe"}, {"import", "export"}, {"include", "exclude"},
    {"添加", "删除", "移除"}, {"开启", "关闭", "打开"}, {"增加", "减少"}, {"升级", "降级"},
    {"之前", "之后", "以内"}, {"开通", "注销"}, {"锁定", "解锁"},
))


@dataclass(frozen=True)
class Signature:
    """What must agree between two texts for one's answer to serve the other."""
    script: str                  # "cjk" or "latin"
    negated: bool
    numbers: tuple[str, ...]
    opposites: tuple[str, ...]   # the member of each OPPOSITES group the text uses


def _en_words(text: str) -> list[str]:
    return _WORDS.findall(text.lower().replace("\u2019", "'"))


def signature(text: str) -> Signature:
    text = unicodedata.normalize("NFKC", text)
    words = _en_words(text)
    cjk = CJK.search(text) is not None
    zh_plain = _ZH_NOT_NEGATIONS.sub("", _ZH_A_NOT_A.sub(r"\1", text))
    negated = (any(w in _EN_NEGATIONS or w.endswith("n't") for w in words)
               or (cjk and _ZH_NEGATION.search(zh_plain) is not None))
    # in order: "bought one, got two" is not "bought two, got one"
    numbers = ([n.replace(",", "") for n in _DIGITS.findall(text)]
               + [w for w in words if w in _EN_NUMBER_WORDS] + _ZH_NUMERAL.findall(text))
    spaced = f" {' '.join(words)} "
    chosen = []
    for group in OPPOSITES:
        for member in sorted(group):
            if (f" {member} " in spaced) if member.isascii() else (member in text):
                chosen.append(member)
    return Signature("cjk" if cjk else "latin", negated, tuple(numbers), tuple(sorted(chosen)))


def compatible(query: str, stored: str) -> bool:
    """Whether ``stored``'s answer may serve ``query`` as far as a cheap reading can tell:
    same script, both negated or neither, the same numbers (digits, English number words,
    Chinese numerals before a measure word), and the same members of the opposite-word
    groups. Similarity is checked elsewhere; this only vetoes."""
    return signature(query) == signature(stored)


# --- the index ----------------------------------------------------------------------------

@dataclass
class _Entry:
    label: int
    scope: str
    text: str
    signature: Signature          # computed once: a lookup compares it with up to 8 entries


class SemanticIndex:
    """Keys with their user turn, per scope, searchable by meaning.

    ``add`` embeds and stores (re-adding a key replaces it), ``remove`` forgets, ``nearest``
    returns the most similar compatible key of the same scope with its cosine similarity.
    Vectors may be passed in when the caller already has them (an embedding it paid for)."""

    def __init__(self, embedder: Embedder, candidates: int = CANDIDATES) -> None:
        self.embedder = embedder
        self.candidates = candidates
        self._scopes: dict[str, Index] = {}
        self._keys: dict[str, _Entry] = {}
        self._labels: dict[int, str] = {}
        self._members: dict[str, set[str]] = {}
        self._next_label = 0

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def scopes(self) -> Iterator[str]:
        return iter(self._members)

    def keys_of_scope(self, scope: str) -> set[str]:
        return set(self._members.get(scope, ()))

    def text_of(self, key: str) -> str | None:
        entry = self._keys.get(key)
        return entry.text if entry else None

    def embed(self, text: str) -> np.ndarray:
        return self.embedder.embed([text])[0]

    def _index(self, scope: str) -> Index:
        index = self._scopes.get(scope)
        if index is None:
            index = Index(ndim=self.embedder.dims, metric="ip", dtype="f32",
                          connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD,
                          expansion_search=EXPANSION_SEARCH)
            self._scopes[scope] = index
            self._members[scope] = set()
        return index

    def add(self, key: str, scope: str, text: str, vector: np.ndarray | None = None) -> None:
        self.add_many([(key, scope, text)], None if vector is None else vector[None, :])

    def add_many(self, items: list[tuple[str, str, str]],
                 vectors: np.ndarray | None = None) -> None:
        """``add`` for many (key, scope, text) at once: one embedding batch, one insert per
        scope. A key given twice keeps its last."""
        if not items:
            return
        if vectors is None:
            vectors = self.embedder.embed([text for _, _, text in items])
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        last = {key: i for i, (key, _, _) in enumerate(items)}
        by_scope: dict[str, list[int]] = {}
        for key, i in last.items():
            self.remove(key)
            _, scope, text = items[i]
            entry = _Entry(self._next_label, scope, text, signature(text))
            self._next_label += 1
            self._keys[key] = entry
            self._labels[entry.label] = key
            self._index(scope)
            self._members[scope].add(key)
            by_scope.setdefault(scope, []).append(i)
        for scope, rows in by_scope.items():
            labels = np.array([self._keys[items[i][0]].label for i in rows], dtype=np.uint64)
            self._scopes[scope].add(labels, vectors[rows])

    def remove(self, key: str) -> None:
        entry = self._keys.pop(key, None)
        if entry is None:
            return
        del self._labels[entry.label]
        self._scopes[entry.scope].remove(entry.label)
        members = self._members[entry.scope]
        members.discard(key)
        if not members:                   # an empty scope gives its memory back
            del self._members[entry.scope]
            del self._scopes[entry.scope]

    def clear(self) -> None:
        for key in list(self._keys):
            self.remove(key)

    def clear_scope(self, scope: str) -> None:
        for key in self.keys_of_scope(scope):
            self.remove(key)

    def nearest(self, scope: str, text: str,
                vector: np.ndarray | None = None) -> tuple[str, float] | None:
        """The stored key of ``scope`` most similar to ``text`` among those ``compatible``
        with it, and the cosine similarity; None when the scope has none."""
        index = self._scopes.get(scope)
        if index is None:
            return None
        if vector is None:
            vector = self.embed(text)
        matches = index.search(np.asarray(vector, dtype=np.float32),
                               min(self.candidates, len(index)))
        wanted = signature(text)
        for label, distance in zip(matches.keys.tolist(), matches.distances.tolist()):
            key = self._labels.get(label)
            if key is not None and self._keys[key].signature == wanted:   # compatible()
                return key, 1.0 - distance
        return None
