"""OpenAI-compatible chat completions (OpenAI, DeepSeek, relays, vLLM, and the
OpenAI-compatible endpoints of Anthropic and Gemini) over httpx, with explicit timeouts
and provider errors mapped to the project's error codes.

Streamed, the call asks for usage at the end (``stream_options.include_usage``) and is
complete at ``data: [DONE]``, or at a finish reason for relays that leave ``[DONE]`` out
(then without usage should it not have come yet). An error inside the stream
(``data: {"error": ...}``) is classified by its code: OpenAI's names, or the HTTP status
that vLLM and other relays put there."""

from __future__ import annotations

from typing import Any

import httpx

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import RoutedRequest
from pipeline.providers.base import Completion
from pipeline.providers.http import (HTTPAdapter, StreamError, StreamReader, code_for_status,
                                     event_json, json_object, mentions)

CONTEXT_MARKERS = ("maximum context length", "context_length_exceeded", "context window")
DONE = "[DONE]"

# error.code or error.type -> code, for errors that arrive inside a stream (no status)
STREAM_ERRORS = {
    "rate_limit_exceeded": errors.RATE_LIMITED,
    "insufficient_quota": errors.RATE_LIMITED,
    "invalid_api_key": errors.AUTH_ERROR,
    "context_length_exceeded": errors.CONTEXT_LENGTH_EXCEEDED,
    "invalid_request_error": errors.INVALID_REQUEST,
    "server_error": errors.PROVIDER_ERROR,
}


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

    def stream_payload(self, routed: RoutedRequest) -> dict:
        return {**super().stream_payload(routed), "stream_options": {"include_usage": True}}

    def stream_reader(self) -> StreamReader:
        return OpenAIStream()

    def completion(self, data: dict[str, Any], provider_ms: int) -> Completion:
        choice = data["choices"][0]
        prompt, completion, cached = usage_counts(data.get("usage") or {})
        return Completion(
            content=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
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


class OpenAIStream(StreamReader):
    """``chat.completion.chunk`` events: text in ``choices[0].delta.content``, the finish
    reason on the last choice, usage in a final chunk without choices, then ``[DONE]``."""

    def read(self, event: str, data: str) -> str:
        if data == DONE:
            self.finished = True
            return ""
        chunk = event_json(data)
        if "error" in chunk:
            detail = chunk["error"] if isinstance(chunk["error"], dict) else {}
            raise StreamError(stream_error_code(detail), detail.get("message"))
        if chunk.get("usage"):
            self.prompt_tokens, self.completion_tokens, self.cached_tokens = \
                usage_counts(chunk["usage"])
        choices = chunk.get("choices") or []
        if not choices:
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            self.finished = True
        return (choice.get("delta") or {}).get("content") or ""


def usage_counts(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens of an OpenAI usage object."""
    details = usage.get("prompt_tokens_details") or {}
    return (int(usage["prompt_tokens"]), int(usage["completion_tokens"]),
            int(details.get("cached_tokens") or 0))


def stream_error_code(detail: dict[str, Any]) -> str:
    code = detail.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        kind = code_for_status(code)
    else:
        kind = (STREAM_ERRORS.get(str(code or ""))
                or STREAM_ERRORS.get(str(detail.get("type") or ""), errors.PROVIDER_ERROR))
    if kind == errors.INVALID_REQUEST and mentions(str(detail.get("message") or ""),
                                                   CONTEXT_MARKERS):
        return errors.CONTEXT_LENGTH_EXCEEDED
    return kind
