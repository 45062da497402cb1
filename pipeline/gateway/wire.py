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
from pipeline.events.models import (PRIORITIES, Choice, Chunk, GenerationParams, Request,
                                    Response, RoutingHints, ToolCall, ToolCallDelta)
from pipeline.gateway import fields
from pipeline.gateway.fields import BadRequest, absent, number
from pipeline.gateway.messages import parse_messages
from pipeline.gateway.tools import parse_response_format, parse_tool_choice, parse_tools
from pipeline.intake.bounds import RequestBounds


# The model name that lets the router choose.
AUTO = "auto"
DEFAULT_PRIORITY = "interactive"        # an HTTP caller is waiting: no batch window
MAX_TOP_LOGPROBS = 20                   # OpenAI's own bound

# The top-level fields of a chat body, in three lists; any other field is a 400 naming it
# (OpenAI answers "Unrecognized request argument supplied"), so nothing is dropped unseen.
# Carried into the Request:
CARRIED = frozenset({
    "messages", "model", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "stop", "seed", "n", "presence_penalty", "frequency_penalty",
    "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "metadata", "user", "safety_identifier", "llmpipe"})
# Read past: they change nothing in the answer. ``store`` asks OpenAI to keep the
# completion (ours are kept in the ledger, not at OpenAI); ``service_tier`` and the
# ``prompt_cache_*`` fields are latency and caching hints to OpenAI (our own priority is
# ``llmpipe.priority``); ``tenant`` comes from the API key, never the body; ``modalities``
# is accepted when it asks for text only.
IGNORED = frozenset({"store", "service_tier", "prompt_cache_key", "prompt_cache_retention",
                     "prompt_cache_options", "tenant", "modalities"})
# Refused with a 400 naming the feature when given (not null): each would change the answer
# and the pipeline cannot carry it. ``functions``/``function_call`` are the legacy form of
# tools.
REFUSED = {
    "functions": "functions are deprecated: use tools",
    "function_call": "function_call is deprecated: use tool_choice",
    "audio": "audio output is not supported by this gateway",
    "prediction": "predicted outputs (prediction) are not supported by this gateway",
    "logit_bias": "logit_bias is not supported by this gateway",
    "web_search_options": "web search (web_search_options) is not supported by this gateway",
    "reasoning_effort": "reasoning_effort is not supported by this gateway yet",
    "verbosity": "verbosity is not supported by this gateway yet",
    "moderation": "moderation is not supported by this gateway",
}
# Our own options, in the body's ``llmpipe`` object (the SDKs pass it via ``extra_body``).
OPTIONS = {"team", "priority", "required_quality", "max_latency_ms", "budget_per_mtok"}


@dataclass(frozen=True)
class Chat:
    """A parsed chat-completions call: the Request to publish and how to answer it."""
    request: Request
    stream: bool
    include_usage: bool


def parse_chat(body: Any, tenant: str, *, reply_topic: str, chunk_topic: str,
               bounds: RequestBounds = RequestBounds()) -> Chat:
    """``body`` as a Request of ``tenant``; BadRequest naming the first field that is wrong.
    ``bounds`` (intake's) limit n and the number of tools; intake's ``check_request``
    checks the rest of them after."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    for key in body:
        if key in REFUSED:
            if not absent(body[key]):
                raise BadRequest(REFUSED[key], key)
        elif key not in CARRIED and key not in IGNORED:
            raise BadRequest(f"Unrecognized request argument supplied: {key}", key)
    modalities = body.get("modalities")
    if not absent(modalities) and modalities != ["text"]:
        raise BadRequest("modalities other than [\"text\"] (audio output) are not supported by "
                         "this gateway", "modalities")
    stream = bool(fields.boolean(body.get("stream"), "stream"))
    stream_options = body.get("stream_options")
    if stream_options is not None:
        fields.known_keys(fields.obj(stream_options, "stream_options"), "stream_options",
                          {"include_usage", "include_obfuscation"})
        # include_obfuscation pads chunks against a side channel at OpenAI; ours carry none
    include_usage = bool(stream_options and fields.boolean(stream_options.get("include_usage"),
                                                            "stream_options.include_usage"))
    model = fields.string(body.get("model"), "model", optional=True)
    ours = options(body.get("llmpipe"))
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadRequest("metadata must be an object of strings", "metadata")
    user = fields.string(body.get("user"), "user", optional=True)
    safety_id = fields.string(body.get("safety_identifier"), "safety_identifier", optional=True)
    params = _params(body, bounds)
    if stream and params.n > 1:
        raise BadRequest(f"n={params.n} cannot be streamed: this gateway streams one choice; "
                         "ask for n=1 or set stream to false", "n")
    tools = parse_tools(body.get("tools"), bounds.max_tools)
    request = Request(
        request_id=str(uuid.uuid4()), tenant=tenant, messages=parse_messages(body.get("messages")),
        team=ours.get("team"), end_user=user if user is not None else safety_id,
        created_at_ms=now_ms(), model=None if model in (None, "", AUTO) else model,
        params=params,
        hints=RoutingHints(required_quality=ours.get("required_quality"),
                           max_latency_ms=ours.get("max_latency_ms"),
                           budget_per_mtok=ours.get("budget_per_mtok"),
                           priority=ours.get("priority", DEFAULT_PRIORITY)),
        reply_topic=reply_topic, metadata=dict(metadata), stream=stream,
        chunk_topic=chunk_topic if stream else None,
        tools=tools, tool_choice=parse_tool_choice(body.get("tool_choice"), tools),
        parallel_tool_calls=_parallel(body.get("parallel_tool_calls"), tools),
        response_format=parse_response_format(body.get("response_format")))
    return Chat(request, stream, include_usage)


def _parallel(raw: Any, tools: list) -> bool | None:
    parallel = fields.boolean(raw, "parallel_tool_calls")
    if parallel is not None and not tools:
        raise BadRequest("parallel_tool_calls is only allowed when tools are given",
                         "parallel_tool_calls")
    return parallel


def _params(body: dict, bounds: RequestBounds) -> GenerationParams:
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"               # the newer name wins when both are given
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop must be a string or an array of strings", "stop")
    n = number(body.get("n"), "n", int, low=1, high=bounds.max_choices)
    logprobs = bool(fields.boolean(body.get("logprobs"), "logprobs"))
    top = number(body.get("top_logprobs"), "top_logprobs", int, low=0, high=MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise BadRequest("top_logprobs requires logprobs to be true", "top_logprobs")
    return GenerationParams(
        max_tokens=number(body.get(limit), limit, int),
        temperature=number(body.get("temperature"), "temperature"),
        top_p=number(body.get("top_p"), "top_p"),
        stop=stop or [], seed=number(body.get("seed"), "seed", int),
        n=1 if n is None else n,
        presence_penalty=number(body.get("presence_penalty"), "presence_penalty", low=-2, high=2),
        frequency_penalty=number(body.get("frequency_penalty"), "frequency_penalty",
                                 low=-2, high=2),
        logprobs=logprobs, top_logprobs=top)


def options(raw: Any) -> dict[str, Any]:
    """The body's ``llmpipe`` object: our own options."""
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
        out["required_quality"] = number(raw["required_quality"], "llmpipe.required_quality")
    if raw.get("max_latency_ms") is not None:
        out["max_latency_ms"] = number(raw["max_latency_ms"], "llmpipe.max_latency_ms", int)
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
    """Every choice: choice 0 from the Response's own fields, then ``more_choices``."""
    first = Choice(0, r.content, r.finish_reason, r.tool_calls, r.refusal, r.logprobs)
    return {
        "id": completion_id(r.request_id), "object": "chat.completion",
        "created": r.completed_at_ms // 1000, "model": r.model or requested_model or AUTO,
        "choices": [choice_body(c) for c in sorted([first, *r.more_choices],
                                                   key=lambda c: c.index)],
        "usage": usage_body(r), "system_fingerprint": None}


def choice_body(c: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI's content is null when the turn is only tool calls or a refusal
        "content": c.content or (None if c.tool_calls or c.refusal else ""),
        "refusal": c.refusal}
    if c.tool_calls:
        message["tool_calls"] = [tool_call_body(t) for t in c.tool_calls]
    return {"index": c.index, "message": message,
            "finish_reason": finish_reason(c.finish_reason, c.tool_calls),
            "logprobs": logprobs_body(c.logprobs)}


def tool_call_body(t: ToolCall) -> dict[str, Any]:
    return {"id": t.id, "type": "function",
            "function": {"name": t.name, "arguments": t.arguments}}


def finish_reason(reason: str | None, tool_calls: list[ToolCall]) -> str:
    return reason or ("tool_calls" if tool_calls else "stop")


def logprobs_body(text: str | None) -> dict[str, Any] | None:
    """The choice's logprobs object, carried as JSON text in the Response."""
    return json.loads(text) if text else None


def chunk_body(request_id: str, created_s: int, model: str, delta: dict[str, Any],
               finish_reason: str | None = None,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": completion_id(request_id), "object": "chat.completion.chunk",
            "created": created_s, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                         "finish_reason": finish_reason}]}


def tool_call_deltas(pieces: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Pieces of tool calls in OpenAI's streaming shape: id, type and name come with a
    call's first piece only; later pieces carry more of its arguments."""
    out = []
    for p in pieces:
        delta: dict[str, Any] = {"index": p.index}
        if p.id is not None:
            delta["id"], delta["type"] = p.id, "function"
        delta["function"] = {"arguments": p.arguments} if p.name is None else \
            {"name": p.name, "arguments": p.arguments}
        out.append(delta)
    return out


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
