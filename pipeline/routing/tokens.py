"""Offline prompt-token estimate for English and Chinese, used for routing, context-window
checks and cost reservation. Billing always uses the provider's reported usage.

Heuristic: each CJK character ~1 token; other text ~4 characters per token (rounded up);
plus a few tokens of framing per message, as chat formats add.
"""

from __future__ import annotations

from collections.abc import Iterable

PER_MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x3000 <= cp <= 0x303F
            or 0xFF00 <= cp <= 0xFFEF or 0x20000 <= cp <= 0x2A6DF)


def estimate_text_tokens(text: str) -> int:
    cjk = sum(1 for ch in text if is_cjk(ch))
    other = len(text) - cjk
    return cjk + (other + 3) // 4


def estimate_prompt_tokens(contents: Iterable[str]) -> int:
    total = REPLY_PRIMING
    for content in contents:
        total += PER_MESSAGE_OVERHEAD + estimate_text_tokens(content)
    return total
