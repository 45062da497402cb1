"""OpenAI's chat-completions wire shape, both ways: a request body as our Request (tenant
from the caller's key, never from the body), and a Response or Chunk as the body, chunk or
error OpenAI's SDKs read. Pure functions; the HTTP app (app.py) does the I/O."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from pipeline import errors
from pipeline.clock import now_ms
from pipeline.events.models import (PRIORITIES, ChatMessage, Chunk, GenerationParams, Request,
                                    Response, RoutingHints)

# The model name that lets the router choose.
AUTO = "auto"
DEFAULT_PRIORITY = "interactive"        # an HTTP caller is waiting: no batch window

# Fields that change the answer and that the pipeline cannot carry yet: refused, never
# dropped, so a caller learns at once rather than from a wrong answer (issue 19).
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls",
               "audio", "prediction", "logit_bias", "top_logprobs")
# Our own options, in the body's ``llmpipe`` object (the SDKs pass it via ``extra_body``).
OPTIONS = {"team", "priority", "required_quality", "max_latency_ms", "budget_per_mtok"}


class BadRequest(ValueError):
    """A body the gateway refuses before publishing (400)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class Chat:
    """A parsed chat-completions call: the Request to publish and how to answer it."""
    request: Request
    stream: bool
    include_usage: bool


def parse_chat(body: Any, tenant: str, *, reply_topic: str, chunk_topic: str) -> Chat:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], {}):
            raise BadRequest(f"{name} is not supported by this gateway yet", name)
    if body.get("n") not in (None, 1):
        raise BadRequest("n must be 1: several choices are not supported yet", "n")
    if body.get("logprobs"):
        raise BadRequest("logprobs are not supported yet", "logprobs")
    fmt = body.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise BadRequest("response_format other than text is not supported yet", "response_format")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model must be a string", "model")
    ours = _options(body.get("llmpipe"))
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadRequest("metadata must be an object of strings", "metadata")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("user must be a string", "user")
    request = Request(
        request_id=str(uuid.uuid4()), tenant=tenant, messages=_messages(body.get("messages")),
        team=ours.get("team"), end_user=user, created_at_ms=now_ms(),
        model=None if model in (None, "", AUTO) else model, params=_params(body),
        hints=RoutingHints(required_quality=ours.get("required_quality"),
                           max_latency_ms=ours.get("max_latency_ms"),
                           budget_per_mtok=ours.get("budget_per_mtok"),
                           priority=ours.get("priority", DEFAULT_PRIORITY)),
        reply_topic=reply_topic, metadata=dict(metadata), stream=stream,
        chunk_topic=chunk_topic if stream else None)
    return Chat(request, stream, include_usage)


def _bool(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false", name)
    return value


def _messages(raw: Any) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty array", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", f"messages[{i}]")
        role = m.get("role")
        if role == "developer":
            role = "system"                 # OpenAI's newer name for the system role
        if not isinstance(role, str):
            raise BadRequest(f"messages[{i}].role must be a string", f"messages[{i}].role")
        if m.get("tool_calls") or m.get("tool_call_id"):
            raise BadRequest("tool calls are not supported by this gateway yet",
                             f"messages[{i}]")
        name = m.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest(f"messages[{i}].name must be a string", f"messages[{i}].name")
        out.append(ChatMessage(role, _content(m.get("content"), i), name))
    return out


def _content(content: Any, i: int) -> str:
    """Text content: a string, or a list of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or \
                    not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise BadRequest(f"messages[{i}].content[{j}]: only text parts are supported "
                                 f"yet (got {kind!r})", f"messages[{i}].content")
            texts.append(part["text"])
        return "\n".join(texts)
    raise BadRequest(f"messages[{i}].content must be a string or a list of text parts",
                     f"messages[{i}].content")


def _params(body: dict) -> GenerationParams:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop must be a string or an array of strings", "stop")
    return GenerationParams(
        max_tokens=_number(max_tokens, "max_tokens", int),
        temperature=_number(body.get("temperature"), "temperature", float),
        top_p=_number(body.get("top_p"), "top_p", float),
        stop=stop or [], seed=_number(body.get("seed"), "seed", int))


def _number(value: Any, name: str, kind: type) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            kind is int and not float(value).is_integer():
        raise BadRequest(f"{name} must be {'an integer' if kind is int else 'a number'}", name)
    return kind(value)


def _options(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("llmpipe must be an object", "llmpipe")
    unknown = set(raw) - OPTIONS
    if unknown:
        raise BadRequest(f"llmpipe.{sorted(unknown)[0]} is not an option (known: "
                         f"{', '.join(sorted(OPTIONS))})", "llmpipe")
    out: dict[str, Any] = {}
    if raw.get("team") is not None:
        if not isinstance(raw["team"], str):
            raise BadRequest("llmpipe.team must be a string", "llmpipe.team")
        out["team"] = raw["team"]
    if raw.get("priority") is not None:
        if raw["priority"] not in PRIORITIES:
            raise BadRequest(f"llmpipe.priority must be one of {', '.join(PRIORITIES)}",
                             "llmpipe.priority")
        out["priority"] = raw["priority"]
    if raw.get("required_quality") is not None:
        out["required_quality"] = _number(raw["required_quality"], "llmpipe.required_quality", float)
    if raw.get("max_latency_ms") is not None:
        out["max_latency_ms"] = _number(raw["max_latency_ms"], "llmpipe.max_latency_ms", int)
    if raw.get("budget_per_mtok") is not None:
        try:
            out["budget_per_mtok"] = Decimal(str(raw["budget_per_mtok"]))
        except InvalidOperation:
            raise BadRequest("llmpipe.budget_per_mtok must be a decimal number",
                             "llmpipe.budget_per_mtok") from None
    return out


# --- answers ------------------------------------------------------------------------------

def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def usage_body(r: Response) -> dict[str, Any]:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens}}


def completion_body(r: Response, requested_model: str | None) -> dict[str, Any]:
    return {
        "id": completion_id(r.request_id), "object": "chat.completion",
        "created": r.completed_at_ms // 1000, "model": r.model or requested_model or AUTO,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": r.content or "",
                                             "refusal": None},
                     "finish_reason": r.finish_reason or "stop", "logprobs": None}],
        "usage": usage_body(r), "system_fingerprint": None}


def chunk_body(request_id: str, created_s: int, model: str, delta: dict[str, Any],
               finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": completion_id(request_id), "object": "chat.completion.chunk",
            "created": created_s, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}]}


def usage_chunk(r: Response, created_s: int, model: str) -> dict[str, Any]:
    return {"id": completion_id(r.request_id), "object": "chat.completion.chunk",
            "created": created_s, "model": model, "system_fingerprint": None, "choices": [],
            "usage": usage_body(r)}


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


# --- errors -------------------------------------------------------------------------------

TOO_LARGE = "payload_too_large"      # the gateway's own: a body over the request bound

# error code -> (HTTP status, OpenAI error type)
STATUS: dict[str, tuple[int, str]] = {
    errors.INVALID_REQUEST: (400, "invalid_request_error"),
    errors.CONTEXT_LENGTH_EXCEEDED: (400, "invalid_request_error"),
    "invalid_api_key": (401, "invalid_request_error"),
    errors.BUDGET_EXCEEDED: (402, "insufficient_quota"),
    errors.MODEL_NOT_ALLOWED: (403, "permission_error"),
    errors.UNKNOWN_MODEL: (404, "invalid_request_error"),
    "not_found": (404, "invalid_request_error"),
    errors.DUPLICATE: (409, "invalid_request_error"),
    TOO_LARGE: (413, "invalid_request_error"),
    errors.RATE_LIMITED: (429, "rate_limit_error"),
    errors.INTERNAL_ERROR: (500, "server_error"),
    errors.PROVIDER_ERROR: (502, "server_error"),
    errors.AUTH_ERROR: (502, "server_error"),      # our key at the provider, not the caller's
    errors.BREAKER_OPEN: (503, "server_error"),
    errors.OVERLOADED: (503, "server_error"),
    errors.TIMEOUT: (504, "timeout_error"),
}


def status_of(code: str) -> int:
    return STATUS.get(code, (500, "server_error"))[0]


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    kind = STATUS.get(code, (500, "server_error"))[1]
    return {"error": {"message": message, "type": kind, "param": param,
                      "code": "model_not_found" if code == errors.UNKNOWN_MODEL else code}}


def chunk_model(chunk: Chunk, fallback: str | None) -> str:
    return chunk.model or fallback or AUTO
