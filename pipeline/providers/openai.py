"""OpenAI-compatible chat completions (OpenAI, DeepSeek, relays, vLLM, and the
OpenAI-compatible endpoints of Anthropic and Gemini) over httpx, with explicit timeouts
and provider errors mapped to the project's error codes."""

from __future__ import annotations

import time

import httpx

from pipeline import errors
from pipeline.deployments import CallLimits, Deployment
from pipeline.errors import GatewayError
from pipeline.events.models import RoutedRequest
from pipeline.providers.base import Completion
from pipeline.secrets import Secret

CONTEXT_MARKERS = ("maximum context length", "context_length_exceeded", "context window")


class OpenAIAdapter:
    def __init__(self, deployment: Deployment, key: Secret, limits: CallLimits,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.deployment = deployment
        self._key = key
        timeout = httpx.Timeout(limits.total_timeout_s, connect=limits.connect_timeout_s)
        self._http = httpx.AsyncClient(
            base_url=deployment.base_url, timeout=timeout, transport=transport,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

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

    async def complete(self, routed: RoutedRequest) -> Completion:
        started = time.monotonic()
        try:
            return await self._complete(routed, started)
        except GatewayError as exc:
            exc.elapsed_ms = int((time.monotonic() - started) * 1000)
            raise

    async def _complete(self, routed: RoutedRequest, started: float) -> Completion:
        try:
            resp = await self._http.post(
                "/chat/completions", json=self.payload(routed),
                headers={"Authorization": f"Bearer {self._key.reveal()}"})
        except httpx.TimeoutException as exc:
            raise GatewayError(f"{self.deployment.id}: {type(exc).__name__} after "
                               f"{time.monotonic() - started:.1f}s", errors.TIMEOUT) from None
        except httpx.HTTPError as exc:
            raise GatewayError(f"{self.deployment.id}: connection failed ({type(exc).__name__})",
                               errors.PROVIDER_ERROR) from None
        provider_ms = int((time.monotonic() - started) * 1000)
        if resp.status_code != 200:
            raise self._error(resp)
        try:
            data = resp.json()
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
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GatewayError(f"{self.deployment.id}: malformed response body "
                               f"({type(exc).__name__})", errors.PROVIDER_ERROR) from None

    def _error(self, resp: httpx.Response) -> GatewayError:
        status = resp.status_code
        try:
            detail = resp.json().get("error") or {}
            message = str(detail.get("message", ""))[:300]
            code = str(detail.get("code") or "")
        except (ValueError, AttributeError):
            message, code = resp.text[:200], ""
        where = f"{self.deployment.id}: HTTP {status}"
        if status == 429:
            return GatewayError(f"{where} rate limited", errors.RATE_LIMITED, status=status,
                                retry_after_s=_retry_after(resp.headers.get("retry-after")))
        if status in (401, 403):
            return GatewayError(f"{where} the provider rejected the API key", errors.AUTH_ERROR,
                                status=status)
        if status == 400 and (code == "context_length_exceeded"
                              or any(m in message.lower() for m in CONTEXT_MARKERS)):
            return GatewayError(f"{where} {message}", errors.CONTEXT_LENGTH_EXCEEDED, status=status)
        if 400 <= status < 500:
            return GatewayError(f"{where} {message}", errors.INVALID_REQUEST, status=status)
        if status == 503:
            return GatewayError(f"{where} overloaded", errors.OVERLOADED, status=status,
                                retry_after_s=_retry_after(resp.headers.get("retry-after")))
        return GatewayError(f"{where} provider error", errors.PROVIDER_ERROR, status=status)

    async def aclose(self) -> None:
        await self._http.aclose()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
