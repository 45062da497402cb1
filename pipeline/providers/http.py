"""What every HTTP provider adapter shares: an httpx client (sending over aiohttp, see
transport.py) with the deployment's timeouts, one timed POST whose transport failures
become error codes, and the rules that turn a provider's non-200 answer into a
GatewayError. Each adapter supplies only its wire shape.

A call made with ``on_delta`` is streamed: the same request in the provider's streaming
mode, its server-sent events read as they arrive and each piece of text handed to
``on_delta`` at once, with the function-call pieces that came in the same event
(``on_delta(text, tool_calls)``; ``on_delta(text)`` when there were none). It ends in the
same Completion, the pieces assembled into whole tool calls, with the usage the stream
reported (0 for any count it left out) and the time to the first piece, text or call. A
stream is trusted only once it ends with the provider's final event: one cut short, one
with an event that cannot be read, or one whose connection fails part-way raises, so a
half answer never passes for a whole one.

An embedding call (``embed``) is one timed POST read by the subclass's ``embeddings``,
with the same error mapping as a chat call."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from pipeline import errors
from pipeline.providers.deployments import CallLimits, Deployment
from pipeline.errors import GatewayError
from pipeline.events.models import RoutedRequest, ToolCall, ToolCallDelta
from pipeline.providers.base import Completion, OnDelta
from pipeline.providers.transport import STREAM_BODY, AiohttpTransport
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
    how to classify anything else (``error``); for streamed calls, where and what to send
    in streaming mode (``stream_path``, ``stream_payload``) and how to read the events
    (``stream_reader``); for embeddings, ``embed_path``, ``embed_payload`` and
    ``embeddings``. ``payload`` may raise GatewayError(INVALID_REQUEST) for a request the
    provider cannot serve as asked. ``completion`` and ``stream_reader`` get the request
    when there is one (the Batch API reads results without it), for what the answer alone
    does not say."""

    def __init__(self, deployment: Deployment, key: Secret, limits: CallLimits,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.deployment = deployment
        self._key = key
        timeout = httpx.Timeout(limits.total_timeout_s, connect=limits.connect_timeout_s)
        pool = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        wire = transport or AiohttpTransport(pool)
        self._http = httpx.AsyncClient(base_url=deployment.base_url, timeout=timeout,
                                       transport=wire)
        # Plain POSTs skip httpx when it would only wrap aiohttp: building httpx's request
        # and response objects was ~7% of a worker's CPU per call (issue 17). Streams, and
        # transports tests inject, still go through httpx.
        self._direct = wire if isinstance(wire, AiohttpTransport) else None
        self._timeouts = (limits.connect_timeout_s, limits.total_timeout_s)
        self._base = deployment.base_url.rstrip("/")

    # -- the wire shape, per provider

    def path(self) -> str:
        raise NotImplementedError

    def auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def payload(self, routed: RoutedRequest) -> dict:
        raise NotImplementedError

    def completion(self, data: dict[str, Any], provider_ms: int,
                   routed: RoutedRequest | None = None) -> Completion:
        raise NotImplementedError

    def error(self, resp: httpx.Response) -> GatewayError:
        raise NotImplementedError

    def stream_path(self) -> str:
        return self.path()

    def stream_payload(self, routed: RoutedRequest) -> dict:
        return {**self.payload(routed), "stream": True}

    def stream_reader(self, routed: RoutedRequest | None = None) -> StreamReader:
        raise NotImplementedError

    def embed_path(self) -> str:
        raise GatewayError(f"{self.deployment.id}: no embeddings API", errors.INVALID_REQUEST)

    def embed_payload(self, routed: RoutedRequest) -> dict:
        raise NotImplementedError

    def embeddings(self, data: dict[str, Any], routed: RoutedRequest,
                   provider_ms: int) -> Completion:
        raise NotImplementedError

    # -- the call

    async def complete(self, routed: RoutedRequest, on_delta: OnDelta | None = None) -> Completion:
        """The provider's answer; streamed when ``on_delta`` is given, which is then
        awaited with each non-empty piece of text in order, before the call returns."""
        started = time.monotonic()
        try:
            if on_delta is None:
                return await self._complete(routed, started)
            return await self._stream(routed, started, on_delta)
        except GatewayError as exc:
            exc.elapsed_ms = int((time.monotonic() - started) * 1000)
            raise

    async def embed(self, routed: RoutedRequest) -> Completion:
        """The vectors of ``routed.request.embedding``'s inputs, in input order."""
        started = time.monotonic()
        try:
            return await self._post(self.embed_path(), self.embed_payload(routed), started,
                                    lambda data, ms: self.embeddings(data, routed, ms))
        except GatewayError as exc:
            exc.elapsed_ms = int((time.monotonic() - started) * 1000)
            raise

    async def _complete(self, routed: RoutedRequest, started: float) -> Completion:
        return await self._post(self.path(), self.payload(routed), started,
                                lambda data, ms: self.completion(data, ms, routed))

    async def _post(self, path: str, body: dict, started: float,
                    read: Callable[[dict[str, Any], int], Completion]) -> Completion:
        """One timed POST: transport failures and non-200 answers become GatewayErrors, and
        so does a 200 whose body ``read`` cannot make sense of."""
        if self._direct is not None:
            return await self._post_direct(path, body, started, read)
        try:
            resp = await self._http.post(path, json=body, headers=self.auth_headers())
        except httpx.HTTPError as exc:
            raise self._transport_failure(exc, started) from None
        provider_ms = int((time.monotonic() - started) * 1000)
        if resp.status_code != 200:
            raise self.error(resp)
        return self._read(resp.json, provider_ms, read)

    async def _post_direct(self, path: str, body: dict, started: float,
                           read: Callable[[dict[str, Any], int], Completion]) -> Completion:
        """``_post`` on aiohttp alone; anything but a plain 200 is handed to the same code
        as an httpx response."""
        url = self._base + "/" + path.lstrip("/") if not path.startswith("http") else path
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                             allow_nan=False).encode("utf-8")
        headers = {**self.auth_headers(), "Content-Type": "application/json"}
        try:
            status, raw_headers, data, encoding = await self._direct.post_json(
                url, content, headers, *self._timeouts)
        except httpx.HTTPError as exc:
            raise self._transport_failure(exc, started) from None
        provider_ms = int((time.monotonic() - started) * 1000)
        if status != 200 or encoding not in ("", "identity"):
            resp = httpx.Response(status, headers=raw_headers, content=data,
                                  request=httpx.Request("POST", url))
            if status != 200:
                raise self.error(resp)
            return self._read(resp.json, provider_ms, read)
        return self._read(lambda: json.loads(data), provider_ms, read)

    def _read(self, parse: Callable[[], Any], provider_ms: int,
              read: Callable[[dict[str, Any], int], Completion]) -> Completion:
        try:
            data = parse()
            if not isinstance(data, dict):
                raise TypeError("the body is not a JSON object")
            return read(data, provider_ms)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise GatewayError(f"{self.deployment.id}: malformed response body "
                               f"({type(exc).__name__})", errors.PROVIDER_ERROR) from None

    async def _stream(self, routed: RoutedRequest, started: float, on_delta: OnDelta) -> Completion:
        stream = self.stream_reader(routed)
        try:
            async with self._http.stream("POST", self.stream_path(),
                                         json=self.stream_payload(routed),
                                         headers=self.auth_headers(),
                                         extensions={STREAM_BODY: True}) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise self.error(resp)
                stream.opened = True
                async for event, data in sse_events(resp.aiter_lines()):
                    text = self._read_event(stream, event, data)
                    calls = stream.take_tool_call_deltas()
                    if text or calls:
                        stream.received(text)
                        await (on_delta(text, calls) if calls else on_delta(text))
        except httpx.HTTPError as exc:
            raise self._transport_failure(exc, started, stream) from None
        if not stream.finished:
            raise GatewayError(f"{self.deployment.id}: stream ended after {stream.deltas} "
                               f"deltas without its final event", errors.PROVIDER_ERROR)
        return stream.completion(started)

    def _read_event(self, stream: StreamReader, event: str, data: str) -> str:
        try:
            return stream.read(event, data)
        except StreamError as exc:
            text = _PLAIN_MESSAGES.get(exc.code) or self.excerpt(exc.message)
            raise GatewayError(f"{self.deployment.id}: stream error after {stream.deltas} "
                               f"deltas: {text}", exc.code) from None
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise GatewayError(f"{self.deployment.id}: malformed stream event after "
                               f"{stream.deltas} deltas ({type(exc).__name__})",
                               errors.PROVIDER_ERROR) from None

    def _transport_failure(self, exc: httpx.HTTPError, started: float,
                           stream: StreamReader | None = None) -> GatewayError:
        """A timeout is the call's, anything else on the connection the provider's; a
        stream that had begun says how far it got."""
        timed_out = isinstance(exc, httpx.TimeoutException)
        code = errors.TIMEOUT if timed_out else errors.PROVIDER_ERROR
        cause = type(exc).__name__
        if timed_out:
            cause += f" after {time.monotonic() - started:.1f}s"
        if stream is not None and stream.opened:
            return GatewayError(f"{self.deployment.id}: stream broken after {stream.deltas} "
                                f"deltas ({cause})", code)
        if timed_out:
            return GatewayError(f"{self.deployment.id}: {cause}", code)
        return GatewayError(f"{self.deployment.id}: connection failed ({cause})", code)

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


# -- streamed calls

class StreamError(Exception):
    """An error event inside a provider's stream: the code its kind maps to, and the
    provider's message (excerpted and redacted before any GatewayError carries it)."""

    def __init__(self, code: str, message: Any):
        super().__init__(code)
        self.code, self.message = code, message


class StreamReader:
    """One streamed answer, read event by event. A subclass per provider turns each event
    into the text it adds (``read``), hands function-call pieces to ``tool_call_delta``,
    and keeps the finish reason, the usage so far (the last report wins) and whether the
    provider's final event has come (``finished``)."""

    def __init__(self) -> None:
        self.opened = False            # the provider answered 200 and the events began
        self.finished = False
        self.finish_reason: str | None = None
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.refusal: list[str] = []   # pieces of a refusal (OpenAI's ``delta.refusal``)
        self._texts: list[str] = []
        self._deltas = 0
        self._first_at: float | None = None
        self._pending: list[ToolCallDelta] = []
        self._assembled: dict[int, _CallParts] = {}

    def read(self, event: str, data: str) -> str:
        """The text this event adds ("" for none). StreamError for an error event;
        ValueError, KeyError, TypeError... for an event that cannot be read."""
        raise NotImplementedError

    def tool_call_delta(self, delta: ToolCallDelta) -> None:
        """A piece of a function call, handed on with this event's text and kept for the
        assembled call (id and name from whichever piece carried them, arguments joined)."""
        self._pending.append(delta)
        call = self._assembled.setdefault(delta.index, _CallParts())
        call.id = delta.id or call.id
        call.name = delta.name or call.name
        call.arguments.append(delta.arguments)

    def take_tool_call_deltas(self) -> list[ToolCallDelta]:
        pending, self._pending = self._pending, []
        return pending

    @property
    def deltas(self) -> int:
        return self._deltas

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(c.id, c.name, "".join(c.arguments))
                     for _, c in sorted(self._assembled.items()))

    def received(self, text: str) -> None:
        """A delta handed on: text, function-call pieces or both."""
        if self._first_at is None:
            self._first_at = time.monotonic()
        self._deltas += 1
        if text:
            self._texts.append(text)

    def completion(self, started: float) -> Completion:
        """At least 1 ms to the first piece when there was one, so 0 keeps meaning "none"."""
        ttft_ms = 0 if self._first_at is None else max(1, int((self._first_at - started) * 1000))
        return Completion(content="".join(self._texts), finish_reason=self.finish_reason,
                          prompt_tokens=self.prompt_tokens,
                          completion_tokens=self.completion_tokens,
                          cached_tokens=self.cached_tokens,
                          provider_ms=int((time.monotonic() - started) * 1000), ttft_ms=ttft_ms,
                          tool_calls=self.tool_calls,
                          refusal="".join(self.refusal) if self.refusal else None)


class _CallParts:
    def __init__(self) -> None:
        self.id = self.name = ""
        self.arguments: list[str] = []


def event_json(data: str) -> dict[str, Any]:
    """An event's data as the JSON object every provider sends; ValueError otherwise."""
    body = json.loads(data)
    if not isinstance(body, dict):
        raise ValueError("the event is not a JSON object")
    return body


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event name, data), ``data:`` lines joined by newlines and
    comments skipped. An event the body stops in the middle of is still handed on, so a
    cut shows as the malformed event it is rather than silently vanishing."""
    event, data = "", []
    async for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event or "message", "\n".join(data)
