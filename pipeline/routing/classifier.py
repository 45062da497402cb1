"""Task classification (DOMAIN.md §3): score a request's complexity from its messages so the
routing policy can pick simple -> small model, complex -> strong model, other -> middle.

`RuleClassifier` is the offline, explainable rule set; any object with a matching
`classify` (a learned model, say) can replace it, and the rules stay as the fallback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.config import ConfigError, Section, config_path, load_yaml
from pipeline.routing.tokens import estimate_text_tokens, is_cjk

SIMPLE, MEDIUM, COMPLEX = "simple", "medium", "complex"
TASK_CLASSES = (SIMPLE, MEDIUM, COMPLEX)

SIGNALS = ("simple_keywords", "short_prompt", "open_task_keywords", "complex_keywords",
           "code_block", "code_symbols", "math", "multi_step", "long_prompt")
SATURATED = ("simple_keywords", "open_task_keywords", "complex_keywords", "code_symbols",
             "math", "multi_step")
KEYWORD_GROUPS = {"simple": "simple_keywords", "open_task": "open_task_keywords",
                  "complex": "complex_keywords"}

Message = tuple[str, str]  # (role, content)


@dataclass(frozen=True)
class Classification:
    task_class: str                 # simple | medium | complex
    score: float                    # complexity in [0, 1]
    signals: dict[str, float]       # signal name -> strength in [0, 1] (0 = did not fire)
    reason: str                     # the signals that fired, for logs and route decisions


class Classifier(Protocol):
    def classify(self, messages: Sequence[Message]) -> Classification: ...


@dataclass(frozen=True)
class KeywordList:
    en: tuple[str, ...]
    zh: tuple[str, ...]


@dataclass(frozen=True)
class ClassifierConfig:
    simple_below: float
    complex_at_least: float
    base_score: float
    weights: dict[str, float]
    saturation: dict[str, int]
    short_words: int
    very_short_words: int
    cjk_chars_per_word: float
    long_tokens: int
    very_long_tokens: int
    keywords: dict[str, KeywordList]   # simple | open_task | complex

    def task_class(self, score: float) -> str:
        if score < self.simple_below:
            return SIMPLE
        return MEDIUM if score < self.complex_at_least else COMPLEX


def load_classifier_config(path: Path | None = None) -> ClassifierConfig:
    path = path or config_path("classifier.yaml")
    root = Section(path, "", load_yaml(path))

    thresholds = root.section("thresholds")
    simple_below = _unit(thresholds, "simple_below")
    complex_at_least = _unit(thresholds, "complex_at_least")
    if not simple_below < complex_at_least:
        raise ConfigError(path, "thresholds.complex_at_least",
                          f"a number > simple_below ({simple_below})", complex_at_least)

    weights_s = root.section("weights")
    unknown = set(weights_s.data) - set(SIGNALS)
    if unknown:
        raise ConfigError(path, f"weights.{sorted(unknown)[0]}", f"one of {SIGNALS}")
    weights = {name: weights_s.number(name) for name in SIGNALS}

    sat = root.section("saturation")
    saturation = {name: sat.int(name, minimum=1) for name in SATURATED}

    length = root.section("length")
    short_words = length.int("short_words", minimum=1)
    very_short_words = length.int("very_short_words", minimum=0)
    if very_short_words >= short_words:
        raise ConfigError(path, "length.very_short_words",
                          f"an integer < short_words ({short_words})", very_short_words)
    cjk_per_word = length.number("cjk_chars_per_word")
    if cjk_per_word <= 0:
        raise ConfigError(path, "length.cjk_chars_per_word", "a number > 0", cjk_per_word)
    long_tokens = length.int("long_tokens", minimum=1)
    very_long_tokens = length.int("very_long_tokens", minimum=1)
    if very_long_tokens <= long_tokens:
        raise ConfigError(path, "length.very_long_tokens",
                          f"an integer > long_tokens ({long_tokens})", very_long_tokens)

    kw = root.section("keywords")
    keywords = {}
    for group in KEYWORD_GROUPS:
        g = kw.section(group)
        keywords[group] = KeywordList(en=tuple(w.lower() for w in g.str_list("en")),
                                      zh=tuple(g.str_list("zh")))

    return ClassifierConfig(
        simple_below=simple_below, complex_at_least=complex_at_least,
        base_score=_unit(root, "base_score"), weights=weights, saturation=saturation,
        short_words=short_words, very_short_words=very_short_words,
        cjk_chars_per_word=cjk_per_word, long_tokens=long_tokens,
        very_long_tokens=very_long_tokens, keywords=keywords)


def _unit(section: Section, name: str) -> float:
    value = section.number(name)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(section.path, section.where(name), "a number in [0, 1]", value)
    return value


# Code: fences, or two or more consecutive lines indented like code.
_FENCE = re.compile(r"```|~~~")
_INDENTED = re.compile(r"(?:^(?: {4}|\t)\S.*\n?){2,}", re.M)
_CODE_SYMBOLS = [re.compile(p, re.M) for p in (
    r"\b(?:def|fn|func|function|class|public|private|static|var|let|const|import|return)\s+[\w{(]",
    r"\w\([^()\n]*\)\s*[:{;]",          # call or signature followed by : { ;
    r"=>|->|::|\+\+|--\w|&&|\|\||!=|===?|<=|>=",
    r";\s*$",
    r"[{}]",
    r"\bSELECT\b[\s\S]{0,200}?\bFROM\b",
    r"</?[a-zA-Z][\w.]*>",
    r"\$_[A-Z]+\[|\$[a-z_]\w*\s*=",
    r"\b\w+\.\w+\(",
    r"(?:Error|Exception):|\bat [\w.$]+\(\w+\.\w+:\d+\)",
)]

# Maths: symbols, LaTeX, powers, derivatives and equations with a variable.
_MATH = [re.compile(p) for p in (
    r"[∑∫∏√∞≤≥≠±∂∇πσμλ∈∀∃⁻¹ᵀ²³⁴ⁿ]",
    r"\\(?:frac|int|sum|sqrt|lim|prod|alpha|beta|sigma|mathbb|cdot|leq|geq|infty)\b",
    r"\$[^$\n]+\$",
    r"\b[a-zA-Z]\s*\^\s*[\d{(a-z]",
    r"\bd[a-z]\s*/\s*d[a-z]\b",
    r"(?<![\w.])\d*[a-z]\s*[-+*/]\s*\d+(?:\s*[-+*/]\s*\w+)*\s*=\s*-?\w+",
    r"\b[a-zA-Z]\([a-z0-9]\)\s*=",
)]

# Multi-step: numbered lines, or sequencing words.
_NUMBERED = re.compile(r"^\s*(?:\d+[.)、]|[（(]\d+[)）]|第[一二三四五六七八九十]步)", re.M)
_SEQUENCE_EN = re.compile(
    r"\b(?:first(?:ly)?|then|next|after that|afterwards|finally|lastly|step by step|"
    r"second(?:ly)?|start by)\b", re.I)
_SEQUENCE_ZH = re.compile(r"首先|然后|接着|其次|最后|再次|第一步|一步步|逐步")

_EN_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’_-]*")


class RuleClassifier:
    """DOMAIN §3 signals, weighted into a complexity score. Pure and deterministic."""

    def __init__(self, config: ClassifierConfig | None = None):
        self.config = config or load_classifier_config()
        c = self.config
        self._en = {group: _phrase_pattern(kl.en) for group, kl in c.keywords.items()}

    def classify(self, messages: Sequence[Message]) -> Classification:
        c = self.config
        # The task is what the user asks; the whole conversation is what the model reads.
        asked = [content for role, content in messages if role == "user"]
        text = "\n".join(asked or [content for _, content in messages])
        tokens = sum(estimate_text_tokens(content) for _, content in messages)

        hits = {group: self._keyword_hits(group, text) for group in KEYWORD_GROUPS}
        words = self._word_count(text)
        symbols = sum(1 for p in _CODE_SYMBOLS if p.search(text))
        maths = sum(1 for p in _MATH if p.search(text))
        steps = _multi_step_hits(text)

        complex_kw = self._saturate("complex_keywords", len(hits["complex"]))
        signals = {
            # "calculate" inside "analyse ... and calculate ..." does not make the task easy.
            "simple_keywords": (self._saturate("simple_keywords", len(hits["simple"]))
                                * (1.0 - complex_kw)),
            "short_prompt": _ramp_down(words, c.very_short_words, c.short_words),
            "open_task_keywords": self._saturate("open_task_keywords", len(hits["open_task"])),
            "complex_keywords": complex_kw,
            "code_block": 1.0 if _FENCE.search(text) or _INDENTED.search(text) else 0.0,
            "code_symbols": self._saturate("code_symbols", symbols),
            "math": self._saturate("math", maths),
            "multi_step": self._saturate("multi_step", steps),
            "long_prompt": _ramp_up(tokens, c.long_tokens, c.very_long_tokens),
        }
        raw = c.base_score + sum(c.weights[name] * value for name, value in signals.items())
        score = round(min(1.0, max(0.0, raw)), 4)
        details = {
            "simple_keywords": ", ".join(hits["simple"]),
            "open_task_keywords": ", ".join(hits["open_task"]),
            "complex_keywords": ", ".join(hits["complex"]),
            "short_prompt": f"{words:.0f} words",
            "long_prompt": f"~{tokens} tokens",
            "code_symbols": f"{symbols} kinds",
            "math": f"{maths} kinds",
            "multi_step": f"{steps} markers",
        }
        return Classification(c.task_class(score), score, signals,
                              self._reason(signals, details, score))

    def _keyword_hits(self, group: str, text: str) -> list[str]:
        found = [m.lower() for m in self._en[group].findall(text)] if self._en[group] else []
        found += [w for w in self.config.keywords[group].zh if w in text]
        return list(dict.fromkeys(found))

    def _word_count(self, text: str) -> float:
        cjk = sum(1 for ch in text if is_cjk(ch) and ch.isalpha())
        return len(_EN_WORD.findall(text)) + cjk / self.config.cjk_chars_per_word

    def _saturate(self, name: str, hits: int) -> float:
        return min(1.0, hits / self.config.saturation[name])

    def _reason(self, signals: dict[str, float], details: dict[str, str], score: float) -> str:
        fired = []
        for name, value in signals.items():
            if value <= 0:
                continue
            label = name.replace("_", " ")
            detail = details.get(name)
            contribution = self.config.weights[name] * value
            fired.append(f"{label}{f' ({detail})' if detail else ''} {contribution:+.2f}")
        return f"score {score:.2f}: " + ("; ".join(fired) if fired else "no signals fired")


def _phrase_pattern(phrases: Sequence[str]) -> re.Pattern | None:
    if not phrases:
        return None
    # Longest first, so "list the" wins over "list"; whole words only.
    alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.I)


def _multi_step_hits(text: str) -> int:
    numbered = len(_NUMBERED.findall(text))
    sequence = {m.lower() for m in _SEQUENCE_EN.findall(text)} | set(_SEQUENCE_ZH.findall(text))
    return (1 if numbered >= 2 else 0) + len(sequence)


def _ramp_down(value: float, full_at: float, zero_at: float) -> float:
    if value <= full_at:
        return 1.0
    if value >= zero_at:
        return 0.0
    return (zero_at - value) / (zero_at - full_at)


def _ramp_up(value: float, zero_at: float, full_at: float) -> float:
    if value <= zero_at:
        return 0.0
    if value >= full_at:
        return 1.0
    return (value - zero_at) / (full_at - zero_at)
