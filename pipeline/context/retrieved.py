"""Retrieved-context pruning: of the passages a request marks as retrieved, keep the most
relevant to the question, within a count and a token budget, in their original order.

**The convention.** A retrieved passage is one message with ``name == "retrieved"`` (the
OpenAI ``name`` field; role user or system; no tool calls): one message, one passage, its
whole text. Put each passage in a message of its own, before the question::

    {"role": "user", "name": "retrieved", "content": "Refunds are paid within 14 days ..."}

Text parts are not used to mark passages: the gateway joins a message's text-only parts
into one string (pipeline/gateway/messages.py), so the parts would not reach this step.
Every other message (the question, the system prompt, the history) is never dropped.

**Choosing.** Every passage of the request is scored against the question (by default the
last user message that is not a passage) by BM25, per clause of the question
(relevance.py). Passages are taken best
first (ties: earlier first) while fewer than ``top_k`` are taken (0: no count limit); a
passage that would take the passages over ``tokens`` (0: no budget) is skipped and the
next tried. The best passage is always kept, even alone over the budget: a request that
came with context never leaves with none.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.context.relevance import relevance
from pipeline.events.models import ChatMessage
from pipeline.routing.tokens import estimate_message_tokens

RETRIEVED = "retrieved"


@dataclass(frozen=True)
class Pruned:
    """What ``prune_retrieved`` did; indices are positions in its input."""
    passages: tuple[int, ...] = ()        # every passage
    dropped: tuple[int, ...] = ()         # the passages dropped
    scores: tuple[float, ...] = ()        # per passage, in the order of ``passages``
    question: str = ""

    def describe(self) -> str:
        if not self.passages:
            return "no retrieved passages"
        return f"kept {len(self.passages) - len(self.dropped)} of {len(self.passages)} passages"


def is_passage(m: ChatMessage) -> bool:
    return m.name == RETRIEVED and m.role in ("user", "system") and not m.tool_calls


def last_question(messages: list[ChatMessage]) -> str:
    """The text of the last user message that is not a retrieved passage ("" if none)."""
    for m in reversed(messages):
        if m.role == "user" and not is_passage(m):
            return m.text
    return ""


def prune_retrieved(messages: list[ChatMessage], question: str | None = None,
                    top_k: int = 0, tokens: int = 0) -> tuple[list[ChatMessage], Pruned]:
    """A new list without the passages that did not make the cut (see the module's doc)."""
    question = last_question(messages) if question is None else question
    passages = [i for i, m in enumerate(messages) if is_passage(m)]
    if not passages:
        return list(messages), Pruned(question=question)
    scores = relevance(question, [messages[i].text for i in passages])
    ranked = sorted(range(len(passages)), key=lambda j: (-scores[j], j))
    taken: set[int] = set()
    used = 0
    for j in ranked:
        if top_k and len(taken) >= top_k:
            break
        size = estimate_message_tokens(messages[passages[j]])
        if taken and tokens and used + size > tokens:
            continue
        taken.add(passages[j])
        used += size
    dropped = tuple(i for i in passages if i not in taken)
    gone = set(dropped)
    kept = [m for i, m in enumerate(messages) if i not in gone]
    return kept, Pruned(tuple(passages), dropped, tuple(scores), question)
