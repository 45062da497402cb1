"""The chat API in Anthropic's Messages terms, both ways: turns as content blocks (text,
``image``, ``tool_use``, ``tool_result``), tools and ``tool_choice``, structured output as a
forced tool, and an answer's blocks read back as text, tool calls and a finish reason.

Structured output: Claude has no response_format, so — as Anthropic documents for JSON
output — a ``json_schema`` (or ``json_object``: any object) request gets one more tool,
``ANSWER_TOOL``, whose input schema is the response schema, and must call a tool: that one
when the request has no tools of its own (or ``tool_choice`` none), otherwise any (its own,
or the answer). The answer tool's input is the completion's text and its ``tool_use`` stop
is an ordinary "stop". The name is reserved, so an answer is recognised without the
request (the Batch API reads results without it); a request whose own tool has that name
is refused."""

from __future__ import annotations

import json
from typing import Any

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import TEXT, Request, ToolCall
from pipeline.providers.turns import Block, ToolResult, Turn, data_url, parse_json

ANSWER_TOOL = "json_answer"
ANY_OBJECT = {"type": "object"}

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Completion.refusal when Claude declines (stop_reason "refusal") without saying anything
REFUSED = "the model declined to answer"


def message(turn: Turn) -> dict:
    """One turn: its text alone as a string (as plain requests always were), else blocks,
    tool results first in a user turn as Anthropic requires."""
    if turn.text is not None:
        return {"role": turn.role, "content": turn.text}
    blocks = [content_block(b) for b in turn.blocks]
    blocks.sort(key=lambda b: b["type"] != "tool_result")      # stable: order kept otherwise
    return {"role": turn.role, "content": blocks}


def content_block(block: Block) -> dict:
    if isinstance(block, ToolResult):
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": block.call_id}
        if block.content:
            result["content"] = block.content
        return result
    if isinstance(block, ToolCall):
        return {"type": "tool_use", "id": block.id, "name": block.name,
                "input": parse_json(block.arguments or "{}",
                                    f"tool call {block.id}'s arguments")}
    if block.type == TEXT:
        return {"type": "text", "text": block.text}
    inline = data_url(block.url)
    if inline is not None:
        media_type, data = inline
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}
    return {"type": "image", "source": {"type": "url", "url": block.url}}


def tooling(req: Request) -> dict:
    """``tools`` and ``tool_choice`` for the request's tools and response format."""
    tools = []
    for tool in req.tools:
        if tool.name == ANSWER_TOOL:
            raise GatewayError(f"the tool name {ANSWER_TOOL!r} is reserved for structured "
                               f"output on Anthropic models", errors.INVALID_REQUEST)
        schema = parse_json(tool.parameters, f"tool {tool.name}'s parameters") or ANY_OBJECT
        entry: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            entry["description"] = tool.description
        entry["input_schema"] = schema
        tools.append(entry)
    choice = _tool_choice(req)
    answer = _answer_tool(req)
    if answer is not None:
        tools.append(answer)
        mode = req.tool_choice.mode if req.tool_choice else "auto"
        if not req.tools or mode == "none":
            choice = {"type": "tool", "name": ANSWER_TOOL}
        elif mode in ("auto", "required"):
            choice = {"type": "any"}
    if choice is not None and req.parallel_tool_calls is not None and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = not req.parallel_tool_calls
    body: dict[str, Any] = {}
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    return body


def _tool_choice(req: Request) -> dict | None:
    choice = req.tool_choice
    if choice is None:
        return {"type": "auto"} if req.parallel_tool_calls is not None and req.tools else None
    if choice.mode == "function":
        return {"type": "tool", "name": choice.name}
    return {"type": {"required": "any"}.get(choice.mode, choice.mode)}


def _answer_tool(req: Request) -> dict | None:
    fmt = req.response_format
    if fmt is None or fmt.type not in ("json_object", "json_schema"):
        return None
    schema = ANY_OBJECT
    if fmt.type == "json_schema" and fmt.schema is not None:
        schema = parse_json(fmt.schema, "response_format's schema")
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise GatewayError("response_format json_schema on an Anthropic model needs an "
                               "object schema (it is sent as a tool's input schema)",
                               errors.INVALID_REQUEST)
    wanted = f"a {fmt.name} object" if fmt.name else "a JSON object"
    return {"name": ANSWER_TOOL,
            "description": f"Give your answer as {wanted} matching the input schema; "
                           f"always answer by calling this tool.",
            "input_schema": schema}


def refuse_unsupported(req: Request) -> None:
    """Anthropic has no penalties or logprobs; routing keeps such requests away, and one
    that arrives anyway is refused rather than answered without them. A penalty of 0 is
    OpenAI's default, sent by some SDKs unasked, and means nothing is asked."""
    p = req.params
    for name, value in (("presence_penalty", p.presence_penalty),
                        ("frequency_penalty", p.frequency_penalty)):
        if value:
            raise GatewayError(f"{name} is not supported by Anthropic models",
                               errors.INVALID_REQUEST)
    if p.logprobs or p.top_logprobs is not None:
        raise GatewayError("logprobs are not supported by Anthropic models",
                           errors.INVALID_REQUEST)


# -- the answer

def read_content(blocks: list[dict[str, Any]], stop_reason: str | None
                 ) -> tuple[str, tuple[ToolCall, ...], str | None, str | None]:
    """(text, tool calls, finish reason, refusal) of an answer's content blocks. The answer
    tool's input, when called, is the text."""
    texts, calls, answer = [], [], None
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use" and block["name"] == ANSWER_TOOL:
            answer = json.dumps(block["input"], ensure_ascii=False)
        elif kind == "tool_use":
            calls.append(ToolCall(block["id"], block["name"],
                                  json.dumps(block["input"], ensure_ascii=False)))
    text = answer if answer is not None else "".join(texts)
    finish = finish_reason(stop_reason, called=bool(calls))
    refusal = (text or REFUSED) if stop_reason == "refusal" else None
    return text, tuple(calls), finish, refusal


def finish_reason(stop_reason: str | None, called: bool = True) -> str | None:
    """OpenAI's name for a stop reason; a ``tool_use`` stop that called only the answer
    tool (``called`` False) is an ordinary stop."""
    if stop_reason == "tool_use" and not called:
        return "stop"
    return STOP_REASONS.get(stop_reason, stop_reason)
