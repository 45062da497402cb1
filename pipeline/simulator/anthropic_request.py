"""An Anthropic Messages body read as Anthropic reads it: every field type-checked, unknown
fields refused ("Extra inputs are not permitted"), content blocks (text, image,
tool_use, tool_result), ``tools``/``tool_choice`` and ``stop_sequences``. A
``temperature: 0`` call is repeatable (Anthropic takes no seed)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pipeline.routing.tokens import estimate_text_tokens
from pipeline.simulator.chat import (ANTHROPIC_IMAGE_TOKENS, ChatRequest, Message, Tool,
                                     ToolCall, ToolChoice)
from pipeline.simulator.core import InvalidRequest
from pipeline.simulator.schema_instance import SchemaError, check_schema

ROLES = frozenset({"user", "assistant"})
PARAMETERS = frozenset({
    "model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k",
    "stop_sequences", "stream", "metadata", "tools", "tool_choice", "thinking",
    "service_tier", "container", "mcp_servers", "context_management"})
BLOCKS = ("text", "image", "document", "tool_use", "tool_result", "thinking",
          "redacted_thinking")
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def parse_messages_request(body: dict[str, Any]) -> ChatRequest:
    for name in body:
        if name not in PARAMETERS:
            raise InvalidRequest(f"{name}: Extra inputs are not permitted")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be a valid integer greater than or "
                             "equal to 1")
    temperature = _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise InvalidRequest("top_k: Input should be a valid integer greater than or equal to 0")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: Input should be a valid boolean")
    stop = body.get("stop_sequences") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("stop_sequences: Input should be a valid list of strings")
    images: list[int] = []
    messages = []
    system = body.get("system")
    if system:
        messages.append(Message("system", _text_only(system, "system")))
    messages += _messages(body.get("messages"), images)
    tools = _tools(body.get("tools"))
    choice, parallel = _tool_choice(body.get("tool_choice"), tools)
    extra = sum(images) + (estimate_text_tokens(json.dumps(body["tools"])) if tools else 0)
    repeatable = None
    if temperature == 0:
        shaping = {k: v for k, v in body.items()
                   if k not in ("stream", "stop_sequences", "max_tokens", "metadata")}
        repeatable = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
    features = {name for name, wanted in (("vision", images), ("tools", tools)) if wanted}
    return ChatRequest(model, tuple(messages), max_tokens, bool(stream), stop=tuple(stop),
                       repeatable=repeatable, tools=tools, tool_choice=choice,
                       parallel_tool_calls=parallel, extra_prompt_tokens=extra,
                       features=frozenset(features), call_prefix="toolu_")


def _messages(raw_messages: Any, images: list[int]) -> list[Message]:
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("messages: at least one message is required")
    out: list[Message] = []
    pending: dict[str, str] = {}          # tool_use id -> name, from the previous message
    for i, raw in enumerate(raw_messages):
        if not isinstance(raw, dict) or raw.get("role") not in ROLES:
            raise InvalidRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        role, content = raw["role"], raw.get("content")
        if isinstance(content, str):
            blocks: list[Any] = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            blocks = content
        else:
            raise InvalidRequest(f"messages.{i}.content: Input should be a valid string or a "
                                 f"list of content blocks")
        if not blocks and i < len(raw_messages) - 1:
            raise InvalidRequest(f"messages.{i}: all messages must have non-empty content "
                                 f"except for the optional final assistant message")
        texts, calls, results = [], [], []
        for j, block in enumerate(blocks):
            where = f"messages.{i}.content.{j}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in BLOCKS:
                raise InvalidRequest(f"{where}: Input tag {kind!r} found using 'type' does not "
                                     f"match any of the expected tags: "
                                     f"{', '.join(repr(b) for b in BLOCKS)}")
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise InvalidRequest(f"{where}.text: Input should be a valid string")
                texts.append(block["text"])
            elif kind in ("image", "document"):
                _image(block, where)
                images.append(ANTHROPIC_IMAGE_TOKENS)
            elif kind == "tool_use":
                calls.append(_tool_use(block, where, role))
            elif kind == "tool_result":
                results.append(_tool_result(block, where, role, pending, images))
        if pending:
            raise InvalidRequest(f"messages.{i}: `tool_use` ids were found without "
                                 f"`tool_result` blocks immediately after: "
                                 f"{', '.join(pending)}. Each `tool_use` block must have a "
                                 f"corresponding `tool_result` block in the next message.")
        pending = {c.id: c.name for c in calls}
        out += results
        if texts or calls or not results:
            out.append(Message(role, "".join(texts), tuple(calls)))
    return out


def _image(block: dict[str, Any], where: str) -> None:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        if source.get("media_type") not in MEDIA_TYPES and block["type"] == "image":
            raise InvalidRequest(f"{where}.source.media_type: Input should be "
                                 f"{', '.join(repr(m) for m in MEDIA_TYPES)}")
        if not isinstance(source.get("data"), str) or not source["data"]:
            raise InvalidRequest(f"{where}.source.data: Field required")
    elif kind == "url":
        if not isinstance(source.get("url"), str) or not source["url"]:
            raise InvalidRequest(f"{where}.source.url: Field required")
    elif kind not in ("text", "file", "content"):
        raise InvalidRequest(f"{where}.source: Input tag {kind!r} found using 'type' does not "
                             f"match any of the expected tags: 'base64', 'url'")


def _tool_use(block: dict[str, Any], where: str, role: str) -> ToolCall:
    if role != "assistant":
        raise InvalidRequest(f"{where}: tool_use blocks are only allowed in assistant messages")
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise InvalidRequest(f"{where}: tool_use blocks need an 'id' and a 'name' string")
    if not isinstance(block.get("input"), dict):
        raise InvalidRequest(f"{where}.input: Input should be a valid dictionary")
    return ToolCall(block["id"], block["name"], json.dumps(block["input"]))


def _tool_result(block: dict[str, Any], where: str, role: str, pending: dict[str, str],
                 images: list[int]) -> Message:
    if role != "user":
        raise InvalidRequest(f"{where}: tool_result blocks are only allowed in user messages")
    call_id = block.get("tool_use_id")
    if call_id not in pending:
        raise InvalidRequest(f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                             f"{call_id}. Each `tool_result` block must have a corresponding "
                             f"`tool_use` block in the previous message.")
    content = block.get("content", "")
    if isinstance(content, list):
        for k, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image":
                _image(part, f"{where}.content.{k}")
                images.append(ANTHROPIC_IMAGE_TOKENS)
        content = "".join(p.get("text", "") for p in content
                          if isinstance(p, dict) and p.get("type") == "text")
    elif not isinstance(content, str):
        raise InvalidRequest(f"{where}.content: Input should be a valid string or a list of "
                             f"content blocks")
    return Message("tool", content, tool_name=pending.pop(call_id))


def _tools(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest("tools: Input should be a valid list")
    tools = []
    for k, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools.{k}: Input should be a valid dictionary")
        if tool.get("type") not in (None, "custom"):
            continue                       # a server tool (web search, bash...): not simulated
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise InvalidRequest(f"tools.{k}.name: String should match pattern "
                                 f"'^[a-zA-Z0-9_-]{{1,128}}$'")
        if not isinstance(tool.get("description", ""), str):
            raise InvalidRequest(f"tools.{k}.description: Input should be a valid string")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(f"tools.{k}.input_schema: Field required")
        try:
            check_schema(schema)
        except SchemaError as exc:
            raise InvalidRequest(f"tools.{k}.input_schema: JSON schema is invalid: {exc}") from None
        if str(schema.get("type", "")).lower() != "object":
            raise InvalidRequest(f"tools.{k}.input_schema.type: Input should be 'object'")
        tools.append(Tool(name, tool.get("description", ""), schema))
    return tuple(tools)


def _tool_choice(raw: Any, tools: tuple[Tool, ...]) -> tuple[ToolChoice, bool]:
    if raw is None:
        return ToolChoice("auto" if tools else "none"), True
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise InvalidRequest("tool_choice: Input tag found using 'type' does not match any of "
                             "the expected tags: 'auto', 'any', 'tool', 'none'")
    if kind != "none" and not tools:
        raise InvalidRequest("tool_choice: tool_choice may only be specified while providing "
                             "tools")
    disable = raw.get("disable_parallel_tool_use", False)
    if not isinstance(disable, bool):
        raise InvalidRequest("tool_choice.disable_parallel_tool_use: Input should be a valid "
                             "boolean")
    if kind == "tool":
        name = raw.get("name")
        if name not in {t.name for t in tools}:
            raise InvalidRequest(f"tool_choice.name: tool {name!r} is not among the tools")
        return ToolChoice("function", name), not disable
    return ToolChoice({"any": "required"}.get(kind, kind)), not disable


def _text_only(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text"
                                         and isinstance(b.get("text"), str) for b in content):
        return "".join(b["text"] for b in content)
    raise InvalidRequest(f"{where}: Input should be a valid string or a list of text blocks")


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name}: Input should be a valid number")
    if not low <= value <= high:
        raise InvalidRequest(f"{name}: range: {low:g}..{high:g}")
    return float(value)
