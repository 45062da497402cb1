"""Chat messages as the native Anthropic and Gemini APIs take them: the system text apart,
then alternating user/assistant turns, each a sequence of blocks (text, images, the
assistant's function calls, tool results) that each adapter writes in its own shape."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Union

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import IMAGE_URL, TEXT, ChatMessage, ContentPart, ToolCall

USER, ASSISTANT = "user", "assistant"
TURN_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ToolResult:
    """A tool message answering an earlier call: the call's id, the function's name as that
    call gave it (None if no earlier call had the id), and the result's text."""
    call_id: str
    name: str | None
    content: str


Block = Union[ContentPart, ToolCall, ToolResult]


@dataclass(frozen=True)
class Turn:
    role: str                            # USER | ASSISTANT
    blocks: tuple[Block, ...]            # adjacent text already joined

    @property
    def text(self) -> str | None:
        """The turn's text when it is one text block and nothing else."""
        if len(self.blocks) == 1 and isinstance(self.blocks[0], ContentPart) \
                and self.blocks[0].type == TEXT:
            return self.blocks[0].text
        return None


@dataclass(frozen=True)
class Turns:
    system: str                          # every system message, joined; "" if none
    turns: tuple[Turn, ...]              # no two of one role in a row


def to_turns(messages: Iterable[ChatMessage]) -> Turns:
    """Text and image parts as blocks, an assistant's tool calls after its text, and a tool
    message with a ``tool_call_id`` as a ToolResult in a user turn. A tool message without
    one (an older request) cannot be tied to a call, so it becomes user text labelled with
    the tool's name. Empty text is dropped (both APIs refuse it), consecutive turns of one
    role are merged (so consecutive tool results share one user turn), and a conversation of
    system text alone is sent as the user's turn, since both APIs need at least one."""
    system: list[str] = []
    turns: list[tuple[str, list[Block]]] = []
    names: dict[str, str] = {}           # call id -> function name, from the calls so far
    for m in messages:
        if m.role == "system":
            if m.text:
                system.append(m.text)
            continue
        role = ASSISTANT if m.role == ASSISTANT else USER
        blocks: list[Block] = []
        if m.role == "tool" and m.tool_call_id:
            blocks.append(ToolResult(m.tool_call_id, names.get(m.tool_call_id) or m.name,
                                     m.text))
        elif m.role == "tool":
            if m.text:
                blocks.append(ContentPart(TEXT, untied_tool_result(m)))
        else:
            parts = m.parts or [ContentPart(TEXT, m.content)]
            blocks.extend(p for p in parts if p.type == IMAGE_URL or p.text)
            for call in m.tool_calls:
                names[call.id] = call.name
                blocks.append(call)
        if not blocks:
            continue
        if turns and turns[-1][0] == role:
            _extend(turns[-1][1], blocks)
        else:
            turns.append((role, []))
            _extend(turns[-1][1], blocks)
    joined = TURN_SEPARATOR.join(system)
    if not turns and joined:
        return Turns("", (Turn(USER, (ContentPart(TEXT, joined),)),))
    return Turns(joined, tuple(Turn(role, tuple(blocks)) for role, blocks in turns))


def untied_tool_result(m: ChatMessage) -> str:
    """A tool message that names no call, as user text labelled with the tool's name."""
    label = f"[result of tool {m.name}]" if m.name else "[tool result]"
    return f"{label}\n{m.text}"


def _extend(blocks: list[Block], more: list[Block]) -> None:
    for block in more:
        if _is_text(block) and blocks and _is_text(blocks[-1]):
            blocks[-1] = ContentPart(TEXT, blocks[-1].text + TURN_SEPARATOR + block.text)
        else:
            blocks.append(block)


def _is_text(block: Block) -> bool:
    return isinstance(block, ContentPart) and block.type == TEXT


def parse_json(text: str, what: str) -> Any:
    """JSON text a request carries (a schema, a call's arguments) as the value a native API
    wants; GatewayError(INVALID_REQUEST) naming ``what`` when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        raise GatewayError(f"{what} is not valid JSON", errors.INVALID_REQUEST) from None


def data_url(url: str | None) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:<type>;base64,<data>`` URL; None for any other
    URL. GatewayError(INVALID_REQUEST) for a data URL that is not base64, which neither
    native API can take."""
    if not url or not url.startswith("data:"):
        return None
    header, comma, data = url[len("data:"):].partition(",")
    media_type, _, encoding = header.partition(";")
    if not comma or encoding != "base64" or not media_type:
        raise GatewayError("an image data URL must be data:<media type>;base64,<data>",
                           errors.INVALID_REQUEST)
    return media_type, data
