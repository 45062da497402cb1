"""Google's native Gemini API (``POST {base_url}/models/{model}:generateContent``) over
httpx: system instruction, user/model turns and a generation config out; candidates, usage
metadata and Google's error bodies mapped to the project's completion and error codes.

The key travels in the ``x-goog-api-key`` header, never as ``?key=`` (URLs end up in
logs). Gemini's ``candidatesTokenCount`` leaves out a thinking model's thought tokens,
which are billed as output, so ``completion_tokens`` adds ``thoughtsTokenCount``;
``promptTokenCount`` already includes ``cachedContentTokenCount``.

Streamed, the call goes to ``:streamGenerateContent?alt=sse``: each event is a whole
GenerateContentResponse holding the next piece of text. Usage metadata may ride on every
event and the last one with counts is the answer's (Vertex sends some without counts,
which change nothing); there is no closing event, so the stream is complete once a
candidate carries its finish reason (or the prompt was blocked). An ``error`` object in
an event is classified as Google's error body would be.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import RoutedRequest
from pipeline.providers.base import Completion
from pipeline.providers.http import (HTTPAdapter, StreamError, StreamReader, code_for_status,
                                     event_json, json_object, mentions)
from pipeline.resilience.retry import retry_after
from pipeline.providers.turns import ASSISTANT, to_turns

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "FINISH_REASON_UNSPECIFIED": None,
}
FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                      "IMAGE_SAFETY", "LANGUAGE"})
CONTENT_FILTER = "content_filter"

# "The input token count (1054016) exceeds the maximum number of tokens allowed (1048576)."
CONTEXT_MARKERS = ("input token count", "exceeds the maximum number of tokens",
                   "context window", "context length")

# error.status -> code, where the status name says more than the HTTP status does
STATUSES = {
    "RESOURCE_EXHAUSTED": errors.RATE_LIMITED,
    "UNAUTHENTICATED": errors.AUTH_ERROR,
    "PERMISSION_DENIED": errors.AUTH_ERROR,
    "UNAVAILABLE": errors.OVERLOADED,
    "DEADLINE_EXCEEDED": errors.TIMEOUT,
}
# An invalid key is a 400 INVALID_ARGUMENT whose details name this reason.
KEY_INVALID_REASON = "API_KEY_INVALID"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


class GeminiAdapter(HTTPAdapter):
    def path(self) -> str:
        return f"{self._model_path()}:generateContent"

    def stream_path(self) -> str:
        return f"{self._model_path()}:streamGenerateContent?alt=sse"

    def _model_path(self) -> str:
        model = self.deployment.provider_model.removeprefix("models/")
        return f"/models/{quote(model, safe='')}"

    def stream_payload(self, routed: RoutedRequest) -> dict:
        return self.payload(routed)     # the path says "stream", not the body

    def stream_reader(self) -> StreamReader:
        return GeminiStream()

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key.reveal()}

    def payload(self, routed: RoutedRequest) -> dict:
        req = routed.request
        conversation = to_turns(req.messages)
        p = req.params
        config: dict[str, Any] = {"maxOutputTokens": routed.max_tokens}
        if p.temperature is not None:
            config["temperature"] = p.temperature
        if p.top_p is not None:
            config["topP"] = p.top_p
        if p.stop:
            config["stopSequences"] = list(p.stop)
        if p.seed is not None:
            config["seed"] = p.seed
        body: dict = {
            "contents": [{"role": "model" if role == ASSISTANT else "user",
                          "parts": [{"text": text}]} for role, text in conversation.turns],
            "generationConfig": config,
        }
        if conversation.system:
            body["systemInstruction"] = {"parts": [{"text": conversation.system}]}
        return body

    def completion(self, data: dict[str, Any], provider_ms: int) -> Completion:
        prompt, completion, cached = usage_counts(data["usageMetadata"])
        candidates = data.get("candidates") or []
        if candidates:
            candidate = candidates[0]
            text = _text(candidate)
            finish_reason = _finish_reason(candidate.get("finishReason"))
        else:
            if not _blocked(data):
                raise KeyError("candidates")
            text, finish_reason = "", CONTENT_FILTER
        return Completion(
            content=text,
            finish_reason=finish_reason,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            provider_ms=provider_ms)

    def error(self, resp: httpx.Response) -> GatewayError:
        body = json_object(resp)
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        message = self.excerpt(detail.get("message") if body else resp.text[:200])
        details = [d for d in detail.get("details") or [] if isinstance(d, dict)]
        code = _error_code(detail, details, resp.status_code, message)
        return self.failure(resp, message, code, _retry_delay(details))


class GeminiStream(StreamReader):
    def read(self, event: str, data: str) -> str:
        body = event_json(data)
        if isinstance(body.get("error"), dict):
            raise _stream_error(body["error"])
        usage = body.get("usageMetadata") or {}
        if "promptTokenCount" in usage:
            self.prompt_tokens, self.completion_tokens, self.cached_tokens = usage_counts(usage)
        candidates = body.get("candidates") or []
        if not candidates:
            if _blocked(body):
                self.finish_reason, self.finished = CONTENT_FILTER, True
            return ""
        candidate = candidates[0]
        if candidate.get("finishReason"):
            self.finish_reason = _finish_reason(candidate["finishReason"])
            self.finished = True
        return _text(candidate)


def usage_counts(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens, thought tokens counted as output."""
    return (int(usage["promptTokenCount"]),
            int(usage.get("candidatesTokenCount") or 0) + int(usage.get("thoughtsTokenCount") or 0),
            int(usage.get("cachedContentTokenCount") or 0))


def _text(candidate: dict[str, Any]) -> str:
    """A candidate's answer text, without a thinking model's thoughts."""
    parts = (candidate.get("content") or {}).get("parts") or []
    return "".join(part.get("text", "") for part in parts if not part.get("thought"))


def _blocked(data: dict[str, Any]) -> bool:
    """The prompt itself was blocked: no candidates, only the reason why."""
    return bool((data.get("promptFeedback") or {}).get("blockReason"))


def _error_code(detail: dict[str, Any], details: list[dict], status: int,
                message: str) -> str | None:
    """The code Google's error body settles; None leaves it to the HTTP status."""
    if any(d.get("reason") == KEY_INVALID_REASON for d in details):
        return errors.AUTH_ERROR
    code = STATUSES.get(str(detail.get("status") or ""))
    if code is None and status == 400 and mentions(message, CONTEXT_MARKERS):
        return errors.CONTEXT_LENGTH_EXCEEDED
    return code


def _stream_error(detail: dict[str, Any]) -> StreamError:
    """An error object inside the stream: its ``code`` is the HTTP status it stands for."""
    details = [d for d in detail.get("details") or [] if isinstance(d, dict)]
    message = str(detail.get("message") or "")
    status = detail.get("code") if isinstance(detail.get("code"), int) else 500
    return StreamError(_error_code(detail, details, status, message) or code_for_status(status),
                       message)


def _finish_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    if reason in FILTERED:
        return CONTENT_FILTER
    return FINISH_REASONS.get(reason, reason.lower())


def _retry_delay(details: list[dict]) -> float | None:
    """Google says when to retry in a RetryInfo detail (``"retryDelay": "37s"``) rather
    than a Retry-After header; None when absent, so the header still counts."""
    for d in details:
        if d.get("@type") == RETRY_INFO:
            return retry_after(str(d.get("retryDelay") or "").removesuffix("s"))
    return None
