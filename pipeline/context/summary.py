"""The summary half of the history window, without the model call: the prompt that asks
for a summary of exactly the messages the window dropped, the message that puts the
summary back, and the key under which a summary is cached by conversation prefix."""

from __future__ import annotations

import hashlib
import json

from pipeline.events.models import ChatMessage

SUMMARY_PREFIX = "Summary of the earlier conversation: "
# Part of every prefix key: a new instruction must not be answered from summaries made
# under the old one.
SUMMARY_VERSION = "1"
SUMMARY_INSTRUCTION = (
    "You summarise the earlier part of a conversation for an assistant that will continue "
    "it without seeing that part. Keep every fact the user or the tools gave: names, "
    "numbers, identifiers, dates, amounts, settings, error messages, decisions taken and "
    "questions still open. Quote code, commands and configuration verbatim when later "
    "turns may need them. Drop greetings, thanks and repetition. Write in the language of "
    "the conversation, in short plain sentences, and reply with the summary only.")


def transcript(messages: list[ChatMessage]) -> str:
    """The messages as plain text, one block per message: ``role: text``, tool calls as
    ``assistant called name(arguments)``, tool results as ``tool result (call id): ...``,
    images as ``[image]``."""
    blocks = []
    for m in messages:
        speaker = m.role if not m.name else f"{m.role} ({m.name})"
        if m.role == "tool":
            speaker = f"tool result ({m.tool_call_id or m.name or '-'})"
        text = m.text + "".join("\n[image]" for _ in m.images)
        if text.strip():
            blocks.append(f"{speaker}: {text}")
        for call in m.tool_calls:
            blocks.append(f"{m.role} called {call.name}({call.arguments}) [call {call.id}]")
    return "\n\n".join(blocks)


def summary_prompt(dropped: list[ChatMessage]) -> list[ChatMessage]:
    """The messages to send to the summarising model: the instruction and the transcript
    of ``dropped`` (``Windowed.dropped``)."""
    return [ChatMessage("system", SUMMARY_INSTRUCTION),
            ChatMessage("user", "The conversation so far:\n\n" + transcript(dropped))]


def splice_summary(messages: list[ChatMessage], summary: str) -> list[ChatMessage]:
    """A new list with ``summary`` as one system message right after the leading system
    messages (at the start when there are none)."""
    at = 0
    while at < len(messages) and messages[at].role == "system":
        at += 1
    note = ChatMessage("system", SUMMARY_PREFIX + summary.strip())
    return messages[:at] + [note] + messages[at:]


def prefix_key(messages: list[ChatMessage]) -> str:
    """sha256 (hex) of the canonical JSON of ``messages`` (every field, keys sorted) and the
    summary instruction's version: equal for the same dropped prefix, whichever request
    carries it. The caller scopes it by tenant."""
    canonical = json.dumps({"v": SUMMARY_VERSION, "messages": [m.to_dict() for m in messages]},
                           sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
