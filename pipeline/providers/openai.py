"""OpenAI-compatible chat completions (OpenAI, DeepSeek, relays, vLLM, and the
OpenAI-compatible endpoints of Anthropic and Gemini) over httpx, with explicit timeouts
and provider errors mapped to the project's error codes."""

from __future__ import annotations

from typing import Any

import httpx

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import RoutedRequest
from pipeline.providers.base import Completion
from pipeline.providers.http import HTTPAdapter, json_object, mentions

CONTEXT_MARKERS = ("maximum context length", "context_length_exceeded", "context window")


class OpenAIAdapter(HTTPAdapter):
    def path(self) -> str:
        return "/chat/completions"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key.reveal()}"}

    def payload(self, routed: RoutedRequest) -> dict:
        req = routed.request
        body: dict = {
            "model": self.deployment.provider_model,
            "messages": [{"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
                         for m in req.messages],
            "max_tokens": routed.max_tokens,
        }
        p = req.params
        if p.temperature is not None:
            body["temperature"] = p.temperature
        if p.top_p is not None:
            body["top_p"] = p.top_p
        if p.stop:
            body["stop"] = p.stop
        if p.seed is not None:
            body["seed"] = p.seed
        if req.end_user:
            body["user"] = req.end_user
        return body

    def completion(self, data: dict[str, Any], provider_ms: int) -> Completion:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return Completion(
            content=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
            cached_tokens=int(details.get("cached_tokens") or 0),
            provider_ms=provider_ms)

    def error(self, resp: httpx.Response) -> GatewayError:
        body = json_object(resp)
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        if body:
            message = self.excerpt(detail.get("message", ""))
        else:
            message = self.excerpt(resp.text[:200])
        code = str(detail.get("code") or "")
        if resp.status_code == 400 and (code == "context_length_exceeded"
                                        or mentions(message, CONTEXT_MARKERS)):
            return self.failure(resp, message, errors.CONTEXT_LENGTH_EXCEEDED)
        return self.failure(resp, message)
