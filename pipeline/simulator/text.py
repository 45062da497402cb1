"""The simulator's prose: filler answers of a planned length in English or Chinese, and
how a streamed answer is cut into pieces of about a token."""

from __future__ import annotations

import math
import random
import re

from pipeline.simulator.chat import Message

_ENGLISH_SENTENCES = (
    "There are a few ways to approach this, and the right one depends on your constraints.",
    "First, measure where the time and the money actually go before changing anything.",
    "A smaller model often answers simple questions just as well at a fraction of the cost.",
    "Caching repeated prompts avoids paying twice for the same answer.",
    "Retries should back off exponentially and respect any Retry-After the provider sends.",
    "If one provider fails, routing the request to a second one keeps the product working.",
    "Keep an eye on latency percentiles rather than averages, since the tail is what users feel.",
    "Batching small requests together can raise throughput without hurting quality.",
    "Set a budget per team so a traffic spike cannot turn into a runaway bill.",
    "In practice most teams start simple and refine the setup as traffic grows.",
    "Let me know if you would like a more detailed example.",
    "To summarise, start with clear limits, good metrics and a fallback plan.",
)
_CHINESE_PHRASES = (
    "这个问题可以从几个方面来看", "首先需要明确目标", "其次要考虑成本和延迟", "我们建议先做测量",
    "再根据结果调整策略", "缓存和批处理都能降低费用", "重试时要注意退避", "路由应当兼顾质量",
    "在实际项目中", "大多数团队会从简单方案开始", "随着流量增长逐步优化", "同时监控错误率和预算",
)


def filler_text(rng: random.Random, tokens: int, *, chinese: bool, truncated: bool) -> str:
    """Plausible prose of about ``tokens`` tokens by the project's estimate. A finished
    answer ends on a sentence; a truncated one stops mid-sentence, as max_tokens cuts it."""
    if tokens <= 0:
        return ""
    if chinese:                  # one token per character
        def sentence() -> str:
            return "，".join(rng.sample(_CHINESE_PHRASES, rng.randint(1, 3))) + "。"
        budget, separator = tokens, ""
    else:                        # ~4 characters per token
        def sentence() -> str:
            return rng.choice(_ENGLISH_SENTENCES)
        budget, separator = tokens * 4, " "
    sentences = [sentence()]
    while len(separator.join(sentences)) < budget:
        sentences.append(sentence())
    text = separator.join(sentences)
    if truncated:
        cut = text.rfind(" ", 0, budget + 1) if separator else -1
        return text[:cut] if cut > 0 else text[:budget]
    shorter = separator.join(sentences[:-1])
    return shorter if shorter and budget - len(shorter) < len(text) - budget else text


def log_uniform(u: float, low: int, high: int) -> int:
    return round(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))


def last_user_text(messages: tuple[Message, ...]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.text
    return ""


def mostly_chinese(text: str) -> bool:
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return False
    han = sum(1 for ch in visible if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf")
    return han * 2 > len(visible)


def stream_pieces(text: str) -> list[str]:
    """Stream deltas of about a token each: a word with its space, or two Chinese characters."""
    if mostly_chinese(text):
        return [text[i:i + 2] for i in range(0, len(text), 2)]
    return re.findall(r"\s*\S+\s*", text)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, str | None]:
    """The text up to (not including) the earliest stop sequence, and which one it was."""
    found: tuple[int, str] | None = None
    for sequence in stop:
        at = text.find(sequence) if sequence else -1
        if at >= 0 and (found is None or at < found[0]):
            found = (at, sequence)
    return (text, None) if found is None else (text[:found[0]], found[1])
