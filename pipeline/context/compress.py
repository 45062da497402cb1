"""``compress``: a request's messages through the strategies its context policy enables, in
one fixed order, with a decision that says what each step removed and what it saved.

**Order.** 1. normalise (whitespace and exact duplicates: cheap and near-lossless, and the
later steps then measure and compare clean text); 2. retrieved pruning (before the window,
so the window's token budget sees the passages that will really be sent and can keep more
history); 3. the history window. Token counts are ``estimate_messages_tokens`` (the
routing estimate), before and after each step.

**The summary** is not made here: it needs a model call. With ``summarise`` on, the
decision carries the messages the window dropped (``to_summarise``) and their
``summary_key``; the caller asks a model (``summary_prompt``), or finds the summary cached
under that key, and puts it in with ``splice_summary``.

With no strategy enabled, ``compress`` returns the very list it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.context.normalise import normalise
from pipeline.context.policy import ContextPolicy
from pipeline.context.retrieved import prune_retrieved
from pipeline.context.summary import prefix_key
from pipeline.context.window import window
from pipeline.events.models import ChatMessage
from pipeline.routing.tokens import REPLY_PRIMING, estimate_message_tokens

NORMALISE, RETRIEVED, WINDOW = "normalise", "retrieved", "window"
ORDER = (NORMALISE, RETRIEVED, WINDOW)


@dataclass(frozen=True)
class Step:
    """One strategy's effect: ``removed`` says what went, in words."""
    name: str
    tokens_before: int
    tokens_after: int
    removed: str
    messages_dropped: int = 0

    @property
    def saved(self) -> int:
        return self.tokens_before - self.tokens_after


@dataclass(frozen=True)
class Decision:
    policy: ContextPolicy
    tokens_before: int
    tokens_after: int
    steps: tuple[Step, ...] = ()
    to_summarise: tuple[ChatMessage, ...] = ()
    summary_key: str = ""

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    @property
    def saved(self) -> int:
        return self.tokens_before - self.tokens_after

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def explain(self) -> str:
        """One line, e.g. ``context normalise,top_k=4: ~5210 -> ~3890 tokens (-25.3%):
        normalise -120 (whitespace in 3 message(s)); retrieved -1200 (kept 4 of 15
        passages)``."""
        if not self.enabled:
            return f"context off: ~{self.tokens_before} tokens, unchanged"
        cut = self.saved / self.tokens_before if self.tokens_before else 0.0
        steps = "; ".join(f"{s.name} -{s.saved} ({s.removed})" for s in self.steps)
        pending = (f"; summary of {len(self.to_summarise)} message(s) pending "
                   f"(key {self.summary_key[:12]})" if self.to_summarise else "")
        return (f"context {self.policy.to_override()}: ~{self.tokens_before} -> "
                f"~{self.tokens_after} tokens (-{cut:.1%}): {steps}{pending}")


class _Sizes:
    """Token estimates of the messages seen in one ``compress`` call: the steps pass the
    messages they leave alone through as the same objects, so each is estimated once."""

    def __init__(self) -> None:
        self.known: dict[int, tuple[ChatMessage, int]] = {}

    def total(self, messages: list[ChatMessage]) -> int:
        tokens = REPLY_PRIMING
        for m in messages:
            entry = self.known.get(id(m))
            if entry is None:       # the message is kept in the entry, so its id stays its own
                entry = self.known[id(m)] = (m, estimate_message_tokens(m))
            tokens += entry[1]
        return tokens


def compress(messages: list[ChatMessage], policy: ContextPolicy, question: str | None = None
             ) -> tuple[list[ChatMessage], Decision]:
    """The messages ``policy`` would send, and why (see the module's doc). ``question``
    is what retrieved passages are scored against; by default the last user message that
    is not a passage. The input list and its messages are never changed."""
    sizes = _Sizes()
    before = sizes.total(messages)
    if not policy.enabled:
        return messages, Decision(policy, before, before)
    steps: list[Step] = []
    current, tokens = list(messages), before
    to_summarise: tuple[ChatMessage, ...] = ()
    for name in ORDER:
        if name == NORMALISE and policy.normalise:
            result, done = normalise(current)
            removed, dropped = done.describe(), len(done.dropped)
        elif name == RETRIEVED and policy.retrieved:
            result, pruned = prune_retrieved(current, question, policy.retrieved_top_k,
                                             policy.retrieved_tokens)
            removed, dropped = pruned.describe(), len(pruned.dropped)
        elif name == WINDOW and policy.window:
            result, windowed = window(current, policy.window_turns, policy.window_tokens)
            removed, dropped = windowed.describe(), len(windowed.dropped)
            if policy.summarise:
                to_summarise = windowed.dropped
        else:
            continue
        after = sizes.total(result)
        steps.append(Step(name, tokens, after, removed, dropped))
        current, tokens = result, after
    key = prefix_key(list(to_summarise)) if to_summarise else ""
    return current, Decision(policy, before, tokens, tuple(steps), to_summarise, key)
