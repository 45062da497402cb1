"""A chat body's ``messages`` as our ChatMessages: every role OpenAI's SDKs send, assistant
tool calls and refusals, tool results, and content parts (text and images).

One rule for parts: a content array that holds an image keeps its parts in
``ChatMessage.parts`` (``content`` is ""); an array of text parts only is joined by newlines
into ``content`` — exactly ``ChatMessage.text`` of those parts, so nothing is lost and
every step that reads text reads it the same way."""

from __future__ import annotations

import json
import re
from typing import Any

from pipeline.events.models import IMAGE_URL, TEXT, ChatMessage, ContentPart, ToolCall
from pipeline.gateway.fields import BadRequest, absent, known_keys, name, obj, one_of, string

ROLES = ("system", "developer", "user", "assistant", "tool")
DETAILS = ("auto", "low", "high")
# The keys a message may have. ``parsed`` and ``annotations`` are what the SDK sends back
# when a caller appends a reply it received (``parsed`` is the client's own copy of the
# content, ``annotations`` cite sources of a reply): they say nothing new, so they are
# read past. ``audio`` and ``function_call`` are accepted only when null.
MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal",
                          "audio", "function_call", "parsed", "annotations"})
# Which part types each role may send (OpenAI's own rule).
PART_TYPES = {"system": (TEXT,), "user": (TEXT, IMAGE_URL), "assistant": (TEXT, "refusal"),
              "tool": (TEXT,)}
IMAGE_URL_RE = re.compile(r"^(https?://\S+|data:image/[a-zA-Z0-9.+-]+;base64,[A-Za-z0-9+/=\s]+)$")


def parse_messages(raw: Any) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty array", "messages")
    out: list[ChatMessage] = []
    call_ids: set[str] = set()          # tool calls made so far, which a tool message answers
    for i, m in enumerate(raw):
        at = f"messages[{i}]"
        m = obj(m, at)
        known_keys(m, at, MESSAGE_KEYS)
        role = m.get("role")
        if role == "function":
            raise BadRequest(f"{at}: the function role is deprecated and not supported; use "
                             "tool messages (role 'tool' with tool_call_id)", f"{at}.role")
        role = one_of(role, f"{at}.role", ROLES)
        if role == "developer":
            role = "system"                 # OpenAI's newer name for the system role
        for key in ("audio", "function_call"):
            if m.get(key) is not None:
                hint = "; use tool_calls" if key == "function_call" else ""
                raise BadRequest(f"{at}.{key} is not supported by this gateway{hint}",
                                 f"{at}.{key}")
        speaker = string(m.get("name"), f"{at}.name", optional=True)
        calls = _tool_calls(m.get("tool_calls"), at, role)
        call_id = _tool_call_id(m, at, role, call_ids)
        call_ids.update(c.id for c in calls)
        content, parts = _content(m, at, role, bool(calls))
        out.append(ChatMessage(role, content, speaker, parts, calls, call_id))
    return out


def _content(m: dict[str, Any], at: str, role: str, has_calls: bool
             ) -> tuple[str, list[ContentPart]]:
    raw = m.get("content")
    refusal = string(m.get("refusal"), f"{at}.refusal", optional=True) \
        if role == "assistant" else _not_given(m, "refusal", at)
    if raw is None:
        # an assistant turn may be only tool calls, or only a refusal
        if role == "assistant" and (has_calls or refusal is not None):
            return refusal or "", []
        raise BadRequest(f"{at}.content is required for a {role} message", f"{at}.content")
    if isinstance(raw, str):
        return raw or refusal or "", []
    if not isinstance(raw, list):
        raise BadRequest(f"{at}.content must be a string or an array of content parts",
                         f"{at}.content")
    parts = [_part(p, f"{at}.content[{j}]", role) for j, p in enumerate(raw)]
    if any(p.type == IMAGE_URL for p in parts):
        return "", parts
    return "\n".join(p.text for p in parts) or refusal or "", []


def _part(raw: Any, at: str, role: str) -> ContentPart:
    part = obj(raw, at)
    allowed = PART_TYPES["system" if role == "developer" else role]
    kind = part.get("type")
    if kind not in allowed:
        shown = repr(kind)[:40]
        raise BadRequest(f"{at}.type {shown} is not supported in a {role} message (this gateway "
                         f"carries {', '.join(allowed)} parts there)", f"{at}.type")
    if kind == IMAGE_URL:
        known_keys(part, at, {"type", "image_url"})
        image = obj(part.get("image_url"), f"{at}.image_url")
        known_keys(image, f"{at}.image_url", {"url", "detail"})
        url = string(image.get("url"), f"{at}.image_url.url")
        assert url is not None
        if not IMAGE_URL_RE.match(url):
            raise BadRequest(f"{at}.image_url.url must be an http(s) URL or a base64 data URL "
                             f"(data:image/...;base64,...); got {url[:40]!r}",
                             f"{at}.image_url.url")
        detail = image.get("detail")
        if detail is not None:
            one_of(detail, f"{at}.image_url.detail", DETAILS)
        return ContentPart(IMAGE_URL, url=url, detail=detail)
    if kind == "refusal":                   # an assistant's earlier refusal, as its text
        known_keys(part, at, {"type", "refusal"})
        return ContentPart(TEXT, text=string(part.get("refusal"), f"{at}.refusal") or "")
    known_keys(part, at, {"type", "text"})
    return ContentPart(TEXT, text=string(part.get("text"), f"{at}.text") or "")


def _tool_calls(raw: Any, at: str, role: str) -> list[ToolCall]:
    if absent(raw):
        return []
    if role != "assistant":
        raise BadRequest(f"{at}.tool_calls: only assistant messages make tool calls",
                         f"{at}.tool_calls")
    if not isinstance(raw, list):
        raise BadRequest(f"{at}.tool_calls must be an array", f"{at}.tool_calls")
    calls = []
    for k, c in enumerate(raw):
        where = f"{at}.tool_calls[{k}]"
        c = obj(c, where)
        if c.get("type") != "function":
            raise BadRequest(f"{where}.type must be 'function' (the only tool calls this "
                             f"gateway carries)", f"{where}.type")
        known_keys(c, where, {"id", "type", "function"})
        function = obj(c.get("function"), f"{where}.function")
        known_keys(function, f"{where}.function", {"name", "arguments"})
        call_id = string(c.get("id"), f"{where}.id")
        if not call_id:
            raise BadRequest(f"{where}.id must not be empty", f"{where}.id")
        calls.append(ToolCall(id=call_id, name=name(function.get("name"),
                                                    f"{where}.function.name"),
                              arguments=_arguments(function.get("arguments"),
                                                   f"{where}.function.arguments")))
    return calls


def _arguments(raw: Any, param: str) -> str:
    """A call's arguments as the model wrote them: JSON text (providers other than
    OpenAI take them as an object)."""
    text = string(raw, param)
    assert text is not None
    try:
        json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"{param} must be JSON text: {exc}", param) from None
    return text


def _tool_call_id(m: dict[str, Any], at: str, role: str, made: set[str]) -> str | None:
    if role != "tool":
        _not_given(m, "tool_call_id", at)
        return None
    call_id = m.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{at}.tool_call_id is required for a tool message",
                         f"{at}.tool_call_id")
    if call_id not in made:
        raise BadRequest(f"{at}: a tool message must answer a tool call of an earlier assistant "
                         f"message; no tool call has id {call_id[:80]!r}", f"{at}.tool_call_id")
    return call_id


def _not_given(m: dict[str, Any], key: str, at: str) -> None:
    if m.get(key) is not None:
        raise BadRequest(f"{at}.{key} is only for {'tool' if key == 'tool_call_id' else 'assistant'}"
                         " messages", f"{at}.{key}")
    return None
