"""Google's native Gemini API (``POST {base_url}/models/{model}:generateContent``) over
httpx: system instruction, user/model turns and a generation config out; candidates, usage
metadata and Google's error bodies mapped to the project's completion and error codes.

The key travels in the ``x-goog-api-key`` header, never as ``?key=`` (URLs end up in
logs). Gemini's ``candidatesTokenCount`` leaves out a thinking model's thought tokens,
which are billed as output, so ``completion_tokens`` adds ``thoughtsTokenCount``;
``promptTokenCount`` already includes ``cachedContentTokenCount``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import RoutedRequest
from pipeline.providers.base import Completion
from pipeline.providers.http import HTTPAdapter, json_object, mentions
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
        model = self.deployment.provider_model.removeprefix("models/")
        return f"/models/{quote(model, safe='')}:generateContent"

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
        usage = data["usageMetadata"]
        candidates = data.get("candidates") or []
        if candidates:
            candidate = candidates[0]
            parts = (candidate.get("content") or {}).get("parts") or []
            text = "".join(part.get("text", "") for part in parts if not part.get("thought"))
            finish_reason = _finish_reason(candidate.get("finishReason"))
        else:
            # The prompt itself was blocked: no candidates, only the reason why.
            if not (data.get("promptFeedback") or {}).get("blockReason"):
                raise KeyError("candidates")
            text, finish_reason = "", CONTENT_FILTER
        return Completion(
            content=text,
            finish_reason=finish_reason,
            prompt_tokens=int(usage["promptTokenCount"]),
            completion_tokens=int(usage.get("candidatesTokenCount") or 0)
            + int(usage.get("thoughtsTokenCount") or 0),
            cached_tokens=int(usage.get("cachedContentTokenCount") or 0),
            provider_ms=provider_ms)

    def error(self, resp: httpx.Response) -> GatewayError:
        body = json_object(resp)
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        message = self.excerpt(detail.get("message") if body else resp.text[:200])
        details = [d for d in detail.get("details") or [] if isinstance(d, dict)]
        code = STATUSES.get(str(detail.get("status") or ""))
        if any(d.get("reason") == KEY_INVALID_REASON for d in details):
            code = errors.AUTH_ERROR
        elif code is None and resp.status_code == 400 and mentions(message, CONTEXT_MARKERS):
            code = errors.CONTEXT_LENGTH_EXCEEDED
        return self.failure(resp, message, code, _retry_delay(details))


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
