"""What every HTTP provider adapter shares: an httpx client (sending over aiohttp, see
transport.py) with the deployment's timeouts, one timed POST whose transport failures
become error codes, and the rules that turn a provider's non-200 answer into a
GatewayError. Each adapter supplies only its wire shape."""

from __future__ import annotations

import time
from typing import Any

import httpx

from pipeline import errors
from pipeline.providers.deployments import CallLimits, Deployment
from pipeline.errors import GatewayError
from pipeline.events.models import RoutedRequest
from pipeline.providers.base import Completion
from pipeline.providers.transport import AiohttpTransport
from pipeline.resilience.retry import retry_after
from pipeline.secrets import Secret

MESSAGE_CHARS = 300      # how much of a provider's error message a GatewayError keeps
REDACTED = "[redacted]"

# Caller-facing wording for codes where the provider's own message adds nothing useful.
_PLAIN_MESSAGES = {
    errors.RATE_LIMITED: "rate limited",
    errors.AUTH_ERROR: "the provider rejected the API key",
    errors.OVERLOADED: "overloaded",
    errors.PROVIDER_ERROR: "provider error",
}


class HTTPAdapter:
    """One provider call over HTTP. Subclasses say where to POST (``path``), how to
    authenticate (``auth_headers``), what to send (``payload``), how to read a 200
    (``completion``, which may raise KeyError/TypeError/... on an unexpected body) and
    how to classify anything else (``error``)."""

    def __init__(self, deployment: Deployment, key: Secret, limits: CallLimits,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.deployment = deployment
        self._key = key
        timeout = httpx.Timeout(limits.total_timeout_s, connect=limits.connect_timeout_s)
        pool = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(base_url=deployment.base_url, timeout=timeout,
                                       transport=transport or AiohttpTransport(pool))

    # -- the wire shape, per provider

    def path(self) -> str:
        raise NotImplementedError

    def auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def payload(self, routed: RoutedRequest) -> dict:
        raise NotImplementedError

    def completion(self, data: dict[str, Any], provider_ms: int) -> Completion:
        raise NotImplementedError

    def error(self, resp: httpx.Response) -> GatewayError:
        raise NotImplementedError

    # -- the call

    async def complete(self, routed: RoutedRequest) -> Completion:
        started = time.monotonic()
        try:
            return await self._complete(routed, started)
        except GatewayError as exc:
            exc.elapsed_ms = int((time.monotonic() - started) * 1000)
            raise

    async def _complete(self, routed: RoutedRequest, started: float) -> Completion:
        try:
            resp = await self._http.post(self.path(), json=self.payload(routed),
                                         headers=self.auth_headers())
        except httpx.TimeoutException as exc:
            raise GatewayError(f"{self.deployment.id}: {type(exc).__name__} after "
                               f"{time.monotonic() - started:.1f}s", errors.TIMEOUT) from None
        except httpx.HTTPError as exc:
            raise GatewayError(f"{self.deployment.id}: connection failed ({type(exc).__name__})",
                               errors.PROVIDER_ERROR) from None
        provider_ms = int((time.monotonic() - started) * 1000)
        if resp.status_code != 200:
            raise self.error(resp)
        try:
            data = resp.json()
            if not isinstance(data, dict):
                raise TypeError("the body is not a JSON object")
            return self.completion(data, provider_ms)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise GatewayError(f"{self.deployment.id}: malformed response body "
                               f"({type(exc).__name__})", errors.PROVIDER_ERROR) from None

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- helpers for ``error``

    def excerpt(self, message: Any) -> str:
        """A provider's error message as a GatewayError may carry it: trimmed, and with the
        key removed should the provider have echoed it back."""
        text = str(message or "")[:MESSAGE_CHARS]
        key = self._key.reveal()
        return text.replace(key, REDACTED) if key else text

    def failure(self, resp: httpx.Response, message: str, code: str | None = None,
                retry_after_s: float | None = None) -> GatewayError:
        """The error for a non-200 answer: ``code`` when the provider's body settled it,
        otherwise by status. Rate limits and overloads carry ``retry_after_s`` (default:
        the Retry-After header)."""
        status = resp.status_code
        code = code or code_for_status(status)
        if retry_after_s is None:
            retry_after_s = retry_after(resp.headers.get("retry-after"))
        text = _PLAIN_MESSAGES.get(code, message)
        return GatewayError(f"{self.deployment.id}: HTTP {status} {text}", code, status=status,
                            retry_after_s=retry_after_s if code in RETRY_AFTER_CODES else None)


RETRY_AFTER_CODES = frozenset({errors.RATE_LIMITED, errors.OVERLOADED})


def code_for_status(status: int) -> str:
    """The error code an HTTP status means when the body says nothing more specific."""
    if status == 429:
        return errors.RATE_LIMITED
    if status in (401, 403):
        return errors.AUTH_ERROR
    if status in (503, 529):          # 529: Anthropic's "overloaded"
        return errors.OVERLOADED
    if 400 <= status < 500:
        return errors.INVALID_REQUEST
    return errors.PROVIDER_ERROR


def mentions(message: str, markers: tuple[str, ...]) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in markers)


def json_object(resp: httpx.Response) -> dict[str, Any]:
    """The response body if it is a JSON object, else {} (an HTML error page, say)."""
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
