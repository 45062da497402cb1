"""The workload `llmpipe bench context` measures: long support conversations and RAG prompts
in English and Chinese, generated from a seed out of the hand-written text in
workload_en.py and workload_zh.py (no downloads). Every case carries the facts its final
question needs, so a rule can check they are still in what would be sent.

**Chat cases** (a home-internet support conversation, 12-16 turns, ~1.0-1.8k tokens): the
system prompt with the customer's profile; the customer's opening (device and serial); a
random, in-order subset of 8-12 troubleshooting exchanges (some carrying logs, commands
and configuration in fenced code blocks whose inner spacing matters); a ticket lookup
(the assistant's tool call, its JSON result and the answer) at a random point of the
middle; the customer's WAN configuration and the suggested MTU; and the final question,
which asks for four facts: the plan (system prompt), the serial (first turn), the visit
date (the tool result, mid-conversation) and the MTU (the last exchange). The noise, as
people and clients make it: per user message, whitespace noise with p=``WHITESPACE_P``
(double spaces, trailing spaces, runs of blank lines before a sign-off) and a double
send with p=``DOUBLE_SEND_P``; per conversation, an error message pasted twice into one
message with p=``DOUBLE_PASTE_P`` and, with p=``REINJECT_P``, a client that re-sends the
system prompt as a new system message every ``REINJECT_EVERY`` turns.

**RAG cases** (a product-FAQ question over 10-20 retrieved passages, ~0.45-1k tokens): a
question about two attributes of one product; two relevant passages, four hard negatives
(the same attributes of other products), two passages on the same product's other
attributes, and the rest random; each passage one attribute sentence plus 0-2 boilerplate
sentences, shuffled, marked ``name="retrieved"`` (role user, or system with p=0.2), with
whitespace noise (as text extracted from PDFs has) with p=``PASSAGE_NOISE_P``. The facts
are the two attribute values in their phrases; every value in a case is distinct, and each
fact occurs in its relevant passage only (checked when the case is made)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import ModuleType

from pipeline.context import workload_en, workload_zh
from pipeline.context.retrieved import RETRIEVED
from pipeline.events.models import ChatMessage, ToolCall

CHAT, RAG = "chat", "rag"
TEXTS: dict[str, ModuleType] = {"en": workload_en, "zh": workload_zh}
DEFAULT_CASES = 200
DEFAULT_SEED = 15
EN_SHARE = 0.5
WHITESPACE_P = 0.4
DOUBLE_SEND_P = 0.05
DOUBLE_PASTE_P = 0.25
REINJECT_P = 0.3
REINJECT_EVERY = 5
PASSAGE_NOISE_P = 0.3
SYSTEM_PASSAGE_P = 0.2


@dataclass(frozen=True)
class Case:
    name: str
    kind: str                       # CHAT | RAG
    lang: str                       # "en" | "zh"
    messages: list[ChatMessage]
    facts: tuple[str, ...]          # what the final question needs, as written in the case
    places: tuple[str, ...]         # per fact: system, first turn, middle, last turn, passage


def squash(text: str) -> str:
    return " ".join(text.split())


def sent_text(messages: list[ChatMessage]) -> str:
    """Everything a provider would read, whitespace squashed: texts and tool calls."""
    pieces = []
    for m in messages:
        pieces.append(m.text)
        pieces.extend(f"{c.name} {c.arguments}" for c in m.tool_calls)
    return squash("\n".join(pieces))


def facts_present(messages: list[ChatMessage], facts: tuple[str, ...]) -> list[bool]:
    """Per fact, whether it is still in ``messages`` (whitespace differences ignored)."""
    haystack = sent_text(messages)
    return [squash(f) in haystack for f in facts]


def _noisy(rng: random.Random, text: str, t: ModuleType) -> str:
    """``text`` as people type it: a few double spaces, trailing spaces, blank lines and a
    sign-off. Text with code is left alone (its spacing is not noise)."""
    if "```" in text:
        return text
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        k = rng.randrange(len(words))
        words[k] += " " * rng.randint(1, 3)
    return " ".join(words) + "  " + "\n" * rng.randint(3, 5) + rng.choice(t.NOISE_SUFFIXES) + " "


def chat_case(rng: random.Random, i: int, lang: str) -> Case:
    t = TEXTS[lang]
    plan = rng.choice(t.PLANS)
    serial = f"SN-{rng.randint(10000, 99999)}-{rng.choice('ABCDEFGHJK')}"
    ticket = f"T-{rng.randint(1000, 9999)}"
    visit = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    mtu = rng.randint(1400, 1492)
    system = t.SYSTEM.format(customer=rng.choice(t.CUSTOMERS), plan=plan,
                             account=f"BL-{rng.randint(100000, 999999)}",
                             since=rng.randint(2016, 2023))
    picked = sorted(rng.sample(range(len(t.EXCHANGES)), rng.randint(8, len(t.EXCHANGES))))
    middle = [t.EXCHANGES[k] for k in picked]
    tool_at = rng.randint(2, len(middle) - 2)
    paste_at = rng.randrange(len(middle)) if rng.random() < DOUBLE_PASTE_P else -1
    reinject = rng.random() < REINJECT_P

    messages = [ChatMessage("system", system)]
    turns = 0

    def turn(user: str, *replies: ChatMessage) -> None:
        nonlocal turns
        turns += 1
        if reinject and turns % REINJECT_EVERY == 0:
            messages.append(ChatMessage("system", system))
        if rng.random() < WHITESPACE_P:
            user = _noisy(rng, user, t)
        messages.append(ChatMessage("user", user))
        if rng.random() < DOUBLE_SEND_P:
            messages.append(ChatMessage("user", user))
        messages.extend(replies)

    def say(text: str) -> ChatMessage:
        return ChatMessage("assistant", text)

    turn(t.OPENING.format(device=rng.choice(t.DEVICES), serial=serial), say(t.OPENING_REPLY))
    for k, (user, reply) in enumerate(middle):
        slots = {"n": rng.randint(2, 9), "t": rng.choice(("8", "9", "10"))}
        user, reply = user.format(**slots), reply.format(**slots)
        if k == paste_at:
            paste = t.DOUBLE_PASTE.format(**slots)
            user = f"{user}\n\n{paste}\n\n{paste}"
        turn(user, say(reply))
        if k == tool_at:
            call = ToolCall(f"call_{i}", t.TOOL_NAME, f'{{"ticket": "{ticket}"}}')
            turn(t.TOOL_ASK.format(ticket=ticket),
                 ChatMessage("assistant", "", tool_calls=[call]),
                 ChatMessage("tool", t.TOOL_RESULT.format(ticket=ticket, visit=visit),
                             tool_call_id=call.id),
                 say(t.TOOL_REPLY.format(ticket=ticket, visit=visit)))
    turn(t.CONFIG_ASK.format(n=rng.randint(2, 9)), say(t.CONFIG_REPLY.format(mtu=mtu)))
    turn(t.FINAL)
    facts = (t.PLAN_FACT.format(plan=plan), t.SERIAL_FACT.format(serial=serial),
             t.VISIT_FACT.format(visit=visit), t.MTU_FACT.format(mtu=mtu))
    return Case(f"chat-{i}-{lang}", CHAT, lang, messages, facts,
                ("system", "first turn", "middle", "last turn"))


def _passage_noise(rng: random.Random, text: str) -> str:
    if rng.random() >= PASSAGE_NOISE_P:
        return text
    breaks = [k + 1 for k, ch in enumerate(text[:-1]) if ch in " ，。；"]
    cut = rng.choice(breaks) if breaks else len(text)       # a line break, not inside a word
    return f"  {text[:cut]}  \n{text[cut:]}   \n\n"


def rag_case(rng: random.Random, i: int, lang: str) -> Case:
    t = TEXTS[lang]
    attributes = list(t.ATTRIBUTES)
    product = rng.choice(t.PRODUCTS)
    others = [p for p in t.PRODUCTS if p != product]
    asked = rng.sample(attributes, 2)
    pairs = [(product, a) for a in asked]
    pairs += [(p, a) for a in asked for p in rng.sample(others, 2)]
    pairs += [(product, a) for a in rng.sample([a for a in attributes if a not in asked], 2)]
    rest = [(p, a) for p in others for a in attributes if (p, a) not in pairs]
    pairs += rng.sample(rest, rng.randint(10, 20) - len(pairs))
    used: set[int] = set()
    passages, facts = [], []
    for k, (p, a) in enumerate(pairs):
        sentence, _, fact, (low, high) = t.ATTRIBUTES[a]
        v = rng.choice([x for x in range(low, high + 1) if x not in used])
        used.add(v)
        text = " ".join([sentence.format(p=p, v=v)] + rng.sample(t.FILLERS, rng.randint(0, 2)))
        passages.append(_passage_noise(rng, text))
        if k < 2:
            facts.append(fact.format(v=v))
    rng.shuffle(passages)
    question = t.QUESTION.format(p=product, q1=t.ATTRIBUTES[asked[0]][1],
                                 q2=t.ATTRIBUTES[asked[1]][1])
    role = "system" if rng.random() < SYSTEM_PASSAGE_P else "user"
    messages = ([ChatMessage("system", t.RAG_SYSTEM)]
                + [ChatMessage(role, text, name=RETRIEVED) for text in passages]
                + [ChatMessage("user", question)])
    for fact in facts:
        holders = [m for m in messages if squash(fact) in squash(m.text)]
        assert len(holders) == 1, f"rag case {i}: fact {fact!r} is in {len(holders)} messages"
    return Case(f"rag-{i}-{lang}", RAG, lang, messages, tuple(facts), ("passage", "passage"))


def workload(n: int = DEFAULT_CASES, seed: int = DEFAULT_SEED) -> list[Case]:
    """``n`` cases, chat and RAG alternating, the language en with p=``EN_SHARE``."""
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        lang = "en" if rng.random() < EN_SHARE else "zh"
        cases.append((chat_case if i % 2 == 0 else rag_case)(rng, i, lang))
    return cases
