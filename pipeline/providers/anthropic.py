"""Anthropic's native Messages API (``POST {base_url}/messages``) over httpx: system text
in its own field, alternating user/assistant turns, Anthropic's usage and error bodies
mapped to the project's completion and error codes.

Usage: Anthropic's ``input_tokens`` counts only the prompt tokens that were neither read
from nor written to the prompt cache. ``prompt_tokens`` here is the whole prompt,
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``, so billing sees
every prompt token; ``cached_tokens`` is ``cache_read_input_tokens``. Cache writes are
priced as plain input (Anthropic charges them 1.25x; requests here set no cache_control,
so there are none unless a relay adds them).
"""

from __future__ import annotations

from typing import Any

import httpx

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import RoutedRequest
from pipeline.providers.base import Completion
from pipeline.providers.http import HTTPAdapter, json_object, mentions
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

    def completion(self, data: dict[str, Any], provider_ms: int) -> Completion:
        usage = data["usage"]
        cache_read = int(usage.get("cache_read_input_tokens") or 0)
        cache_write = int(usage.get("cache_creation_input_tokens") or 0)
        text = "".join(block["text"] for block in data["content"]
                       if block.get("type") == "text")
        stop_reason = data.get("stop_reason")
        return Completion(
            content=text,
            finish_reason=STOP_REASONS.get(stop_reason, stop_reason),
            prompt_tokens=int(usage["input_tokens"]) + cache_read + cache_write,
            completion_tokens=int(usage["output_tokens"]),
            cached_tokens=cache_read,
            provider_ms=provider_ms)

    def error(self, resp: httpx.Response) -> GatewayError:
        body = json_object(resp)
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        message = self.excerpt(detail.get("message") if body else resp.text[:200])
        kind = str(detail.get("type") or "")
        code = ERROR_TYPES.get(kind)
        if code is None and resp.status_code == 400 and mentions(message, CONTEXT_MARKERS):
            code = errors.CONTEXT_LENGTH_EXCEEDED
        return self.failure(resp, message, code)
