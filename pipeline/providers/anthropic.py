"""Anthropic's native Messages API (``POST {base_url}/messages``) over httpx: system text
in its own field, alternating user/assistant turns, Anthropic's usage and error bodies
mapped to the project's completion and error codes.

Usage: Anthropic's ``input_tokens`` counts only the prompt tokens that were neither read
from nor written to the prompt cache. ``prompt_tokens`` here is the whole prompt,
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``, so billing sees
every prompt token; ``cached_tokens`` is ``cache_read_input_tokens``. Cache writes are
priced as plain input (Anthropic charges them 1.25x; requests here set no cache_control,
so there are none unless a relay adds them).

Streamed (``"stream": true``), the answer comes as Anthropic's events: usage in
``message_start`` (and, cumulatively, in ``message_delta``, whose count wins), text in
``text_delta`` deltas, the stop reason in ``message_delta``, and ``message_stop`` last; an
``error`` event part-way is classified by its type as the same error before the stream
would be.
"""

from __future__ import annotations

from typing import Any

import httpx

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import RoutedRequest
from pipeline.providers.base import Completion
from pipeline.providers.http import (HTTPAdapter, StreamError, StreamReader, code_for_status,
                                     event_json, json_object, mentions)
from pipeline.providers.turns import to_turns

API_VERSION = "2023-06-01"
MAX_TEMPERATURE = 1.0   # Anthropic takes 0..1 where OpenAI takes 0..2

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# "prompt is too long: 208310 tokens > 200000 maximum" and "input length and `max_tokens`
# exceed context limit: 198000 + 8192 > 200000, ..." are Anthropic's two wordings.
CONTEXT_MARKERS = ("prompt is too long", "exceed context limit", "context window",
                   "context length")

# error.type -> code, where the type says more than the status does
ERROR_TYPES = {
    "rate_limit_error": errors.RATE_LIMITED,
    "overloaded_error": errors.OVERLOADED,
    "authentication_error": errors.AUTH_ERROR,
    "permission_error": errors.AUTH_ERROR,
}
# error.type -> the HTTP status Anthropic answers it with, for error events in a stream
ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class AnthropicAdapter(HTTPAdapter):
    def path(self) -> str:
        return "/messages"

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self._key.reveal(), "anthropic-version": API_VERSION}

    def payload(self, routed: RoutedRequest) -> dict:
        req = routed.request
        conversation = to_turns(req.messages)
        body: dict = {
            "model": self.deployment.provider_model,
            "max_tokens": routed.max_tokens,
            "messages": [{"role": role, "content": text} for role, text in conversation.turns],
        }
        if conversation.system:
            body["system"] = conversation.system
        p = req.params
        # Recent Claude models refuse temperature and top_p together ("use only one");
        # temperature is the one callers mean more often, so it wins.
        if p.temperature is not None:
            body["temperature"] = min(p.temperature, MAX_TEMPERATURE)
        elif p.top_p is not None:
            body["top_p"] = p.top_p
        if p.stop:
            body["stop_sequences"] = list(p.stop)
        if req.end_user:
            body["metadata"] = {"user_id": req.end_user}
        return body

    def stream_reader(self) -> StreamReader:
        return AnthropicStream()

    def completion(self, data: dict[str, Any], provider_ms: int) -> Completion:
        prompt, completion, cached = usage_counts(data["usage"])
        text = "".join(block["text"] for block in data["content"]
                       if block.get("type") == "text")
        return Completion(
            content=text,
            finish_reason=finish_reason(data.get("stop_reason")),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            provider_ms=provider_ms)

    def error(self, resp: httpx.Response) -> GatewayError:
        body = json_object(resp)
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        message = self.excerpt(detail.get("message") if body else resp.text[:200])
        return self.failure(resp, message,
                            error_code(str(detail.get("type") or ""), resp.status_code, message))


class AnthropicStream(StreamReader):
    """The Messages API's events, named by their ``type``; ``ping`` and blocks other than
    text (tool input, thinking) add nothing here."""

    def __init__(self) -> None:
        super().__init__()
        self._usage: dict[str, Any] = {"input_tokens": 0, "output_tokens": 0}

    def read(self, event: str, data: str) -> str:
        body = event_json(data)
        kind = body.get("type") or event
        if kind == "message_start":
            self._count(body["message"].get("usage") or {})
        elif kind == "content_block_start":
            block = body["content_block"]
            return (block.get("text") or "") if block.get("type") == "text" else ""
        elif kind == "content_block_delta":
            delta = body["delta"]
            return (delta.get("text") or "") if delta.get("type") == "text_delta" else ""
        elif kind == "message_delta":
            self.finish_reason = finish_reason(body["delta"].get("stop_reason"))
            self._count(body.get("usage") or {})
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error":
            raise stream_error(body)
        return ""

    def _count(self, usage: dict[str, Any]) -> None:
        """Counts are cumulative, so each report replaces the ones it names."""
        self._usage.update((name, n) for name, n in usage.items() if n is not None)
        self.prompt_tokens, self.completion_tokens, self.cached_tokens = \
            usage_counts(self._usage)


def usage_counts(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens, counted as the module docstring says."""
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    return (int(usage["input_tokens"]) + cache_read + cache_write, int(usage["output_tokens"]),
            cache_read)


def finish_reason(stop_reason: str | None) -> str | None:
    return STOP_REASONS.get(stop_reason, stop_reason)


def error_code(kind: str, status: int, message: str) -> str | None:
    """The code an error's type or message settles; None leaves it to the status."""
    code = ERROR_TYPES.get(kind)
    if code is None and status == 400 and mentions(message, CONTEXT_MARKERS):
        return errors.CONTEXT_LENGTH_EXCEEDED
    return code


def stream_error(body: dict[str, Any]) -> StreamError:
    """An ``error`` event, coded as the status its type comes with would be."""
    detail = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = str(detail.get("message") or "")
    kind = str(detail.get("type") or "")
    status = ERROR_STATUSES.get(kind, 500)
    return StreamError(error_code(kind, status, message) or code_for_status(status), message)
