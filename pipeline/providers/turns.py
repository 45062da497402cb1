"""Chat messages as the native Anthropic and Gemini APIs take them: the system text apart,
then alternating user/assistant turns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from pipeline.events.models import ChatMessage

USER, ASSISTANT = "user", "assistant"
TURN_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Turns:
    system: str                          # every system message, joined; "" if none
    turns: tuple[tuple[str, str], ...]   # (USER | ASSISTANT, text), no two alike in a row


def to_turns(messages: Iterable[ChatMessage]) -> Turns:
    """Neither API has a tool role without tool-call ids (which requests do not carry), so
    a tool message becomes a user turn labelled with the tool's name. Empty messages are
    dropped (both APIs refuse empty text), consecutive turns of one role are merged, and a
    conversation of system text alone is sent as the user's turn, since both APIs need at
    least one."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for m in messages:
        if not m.content:
            continue
        if m.role == "system":
            system.append(m.content)
            continue
        role = ASSISTANT if m.role == ASSISTANT else USER
        text = m.content
        if m.role == "tool":
            text = f"[result of tool {m.name}]\n{text}" if m.name else f"[tool result]\n{text}"
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + TURN_SEPARATOR + text)
        else:
            turns.append((role, text))
    joined = TURN_SEPARATOR.join(system)
    if not turns and joined:
        return Turns("", ((USER, joined),))
    return Turns(joined, tuple(turns))
