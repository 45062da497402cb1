"""Offline prompt-token estimate for English and Chinese, used for routing, context-window
checks and cost reservation. Billing always uses the provider's reported usage.

Pure Python, no tokenizer data: the text is cut into the same kinds of pieces a GPT-style
BPE pre-tokenizer makes, and each kind costs what it costs on average in OpenAI's o200k_base
(GPT-4o, GPT-4.1), rounded towards over-estimating:

  - Chinese characters ~0.8 token each (o200k_base: 0.73; cl100k_base: 1.09);
    CJK/full-width punctuation 1 each;
  - a run of ASCII letters (a word) 1 token, plus 0.3 per letter past the 7th;
  - a run of digits 1 token per 3 digits (o200k_base and cl100k_base split numbers so);
  - a run of ASCII punctuation 1 token, plus 0.3 per further character;
  - a line break, an indentation run or a space before a number 1 token;
  - any other character (accented letters, Cyrillic, emoji, symbols) 1 token;

plus OpenAI's chat framing per message and for the reply. Calibrated against the real
tokenizer by `llmpipe bench tokens` (figures in docs/BENCHMARKS.md):
against o200k_base the estimate is ~10% high on average (English and Chinese prompts, code,
numbers) and under by more than 10% for ~2% of prompts (short ones, acronyms, math symbols).
Not calibrated for cl100k_base (GPT-4, GPT-3.5; no such model in the catalog), whose
Chinese it under-estimates by ~20%.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.events.models import ChatMessage, Request

PER_MESSAGE_OVERHEAD = 4     # OpenAI chat framing: 3 per message + 1 for the role
REPLY_PRIMING = 3            # <|start|>assistant<|message|>
# An image's size is not known without fetching it: a low-detail image costs OpenAI 85
# tokens, any other is counted as a 1024x1024 high-detail one (4 tiles of 170 + 85).
IMAGE_TOKENS = {"low": 85}
IMAGE_TOKENS_DEFAULT = 765
PER_TOOL_OVERHEAD = 8        # function framing around each tool's JSON
PER_CALL_OVERHEAD = 4        # the same around each tool call in the history

CJK_TOKENS_PER_CHAR = 0.8
CJK_PUNCT_TOKENS_PER_CHAR = 1.0
LONG_WORD_FROM = 8           # letters: from the 8th letter on, a word costs extra
LONG_WORD_TOKENS_PER_LETTER = 0.3
DIGITS_PER_TOKEN = 3
PUNCT_EXTRA_TOKENS_PER_CHAR = 0.3
OTHER_TOKENS_PER_CHAR = 1.0

_CJK_RANGES = "\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df"
_CJK_PUNCT_RANGES = "\u3000-\u303f\uff00-\uffef"
_CJK = re.compile(f"[{_CJK_RANGES}]+")
_CJK_PUNCT = re.compile(f"[{_CJK_PUNCT_RANGES}]+")
_WORD = re.compile(r"[A-Za-z]+")
_LONG_WORD = re.compile(r"[A-Za-z]{%d,}" % LONG_WORD_FROM)
_DIGIT_CHUNK = re.compile(r"[0-9]{1,%d}" % DIGITS_PER_TOKEN)
_PUNCT = re.compile(r"[!-/:-@\[-`{-~]+")
_BREAK = re.compile(r"\s{2,}|\n| (?=[0-9])")   # line break, indentation, " 42"
_SPACE = re.compile(r"[ \t\n\r\f\v]+")


def is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x3000 <= cp <= 0x303F
            or 0xFF00 <= cp <= 0xFFEF or 0x20000 <= cp <= 0x2A6DF)


def _run_chars(pattern: re.Pattern[str], text: str) -> tuple[int, int]:
    """(number of matches, characters matched), without building the matched strings."""
    rest, runs = pattern.subn("", text)
    return runs, len(text) - len(rest)


def estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    if text.isascii():
        cjk = cjk_punct = 0
    else:
        cjk = _run_chars(_CJK, text)[1]
        cjk_punct = _run_chars(_CJK_PUNCT, text)[1]
    words, letters = _run_chars(_WORD, text)
    long_runs, long_letters = _run_chars(_LONG_WORD, text)
    digit_chunks, digits = _run_chars(_DIGIT_CHUNK, text)
    puncts, punct_chars = _run_chars(_PUNCT, text)
    _, spaces = _run_chars(_SPACE, text)
    other = len(text) - cjk - cjk_punct - letters - digits - punct_chars - spaces
    tokens = (cjk * CJK_TOKENS_PER_CHAR
              + cjk_punct * CJK_PUNCT_TOKENS_PER_CHAR
              + words + (long_letters - long_runs * (LONG_WORD_FROM - 1)) * LONG_WORD_TOKENS_PER_LETTER
              + digit_chunks
              + puncts + (punct_chars - puncts) * PUNCT_EXTRA_TOKENS_PER_CHAR
              + len(_BREAK.findall(text))
              + other * OTHER_TOKENS_PER_CHAR)
    return max(1, math.ceil(tokens))


def estimate_prompt_tokens(contents: Iterable[str]) -> int:
    total = REPLY_PRIMING
    for content in contents:
        total += PER_MESSAGE_OVERHEAD + estimate_text_tokens(content)
    return total


def estimate_message_tokens(m: "ChatMessage") -> int:
    """One message: its text, its images, and the calls it made, with framing."""
    tokens = PER_MESSAGE_OVERHEAD + estimate_text_tokens(m.text)
    for image in m.images:
        tokens += IMAGE_TOKENS.get(image.detail or "auto", IMAGE_TOKENS_DEFAULT)
    for call in m.tool_calls:
        tokens += (PER_CALL_OVERHEAD + estimate_text_tokens(call.name)
                   + estimate_text_tokens(call.arguments))
    return tokens


def estimate_messages_tokens(messages: Iterable["ChatMessage"]) -> int:
    return REPLY_PRIMING + sum(estimate_message_tokens(m) for m in messages)


def estimate_request_tokens(request: "Request") -> int:
    """The whole prompt a provider bills for: messages (text, images, tool calls), the
    tools' definitions and a response schema, which providers put in the prompt; for an
    embedding request, its inputs."""
    if request.embedding is not None:
        return sum(estimate_text_tokens(text) for text in request.embedding.inputs)
    total = estimate_messages_tokens(request.messages)
    for tool in request.tools:
        total += (PER_TOOL_OVERHEAD + estimate_text_tokens(tool.name)
                  + estimate_text_tokens(tool.description or "")
                  + estimate_text_tokens(tool.parameters))
    fmt = request.response_format
    if fmt is not None and fmt.schema:
        total += PER_TOOL_OVERHEAD + estimate_text_tokens(fmt.schema)
    return total
