"""The gateway's HTTP API (Starlette): ``POST /v1/chat/completions`` (plain and streamed),
``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /healthz``.

A call is authenticated by its API key (the key names the tenant; a ``tenant`` in the body
is ignored), checked with intake's own bounds so a bad body is a 400 at once, published to
llm.requests with this instance's reply topics, and answered from them. A streamed call
does not send its status line until the first chunk or the Response is in: an error that
comes before any text is a plain HTTP error in OpenAI's shape, with its status; one that
comes after is an ``error`` event on the stream, never a silent cut.

If the caller goes away the gateway stops waiting; the request itself still runs to its
end (it is already durable on llm.requests) and is billed once, like any other."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response as HttpResponse, StreamingResponse
from starlette.middleware import Middleware
from starlette.routing import Route

from pipeline import errors
from pipeline.context.policy import OVERRIDE_KEY, ContextPolicy, ContextPolicyError
from pipeline.catalog import Catalog
from pipeline.clock import now_ms
from pipeline.errors import Rejected
from pipeline.events.codec import Codec
from pipeline.events.models import OK, Cancel, Chunk, Request, Response
from pipeline.gateway import stream, wire
from pipeline.gateway.embeddings import embeddings_body, parse_embeddings
from pipeline.gateway.keys import KeyRing, bearer
from pipeline.gateway.metered import Metered, metrics_page
from pipeline.gateway.replies import Replies, Waiter
from pipeline.intake import validation
from pipeline.intake.bounds import RequestBounds
from pipeline.kafka import clients
from pipeline.tenancy.directory import TenantDirectory

log = logging.getLogger("llmpipe.gateway")
C = TypeVar("C")          # a parsed call: a Chat or an EmbeddingCall, each with .request
CACHE_HEADER = "x-llmpipe-cache"       # on an answer from the response cache


@dataclass
class Gateway:
    """Everything one gateway instance holds; :meth:`start` / :meth:`stop` are the ASGI
    lifespan."""
    instance: str
    bootstrap: str
    requests_topic: str
    reply_topics: tuple[str, str]          # (responses, chunks)
    codec: Codec
    catalog: Catalog
    bounds: RequestBounds
    directory: TenantDirectory
    keys: KeyRing
    replies: Replies
    wait_s: float                          # how long a caller waits before a 504
    cancels_topic: str = "llm.cancels"
    tenants_ready_timeout_s: float = 10.0
    producer: AIOKafkaProducer | None = None
    _background: set[asyncio.Future] = field(default_factory=set)

    async def start(self) -> None:
        self.producer = clients.producer(self.bootstrap, linger_ms=0)
        await self.producer.start()
        await self.replies.start()
        await self.directory.start()
        if not await self.directory.wait_ready(self.tenants_ready_timeout_s):
            log.warning("tenants_not_ready after %.0fs: keys load as the directory catches up "
                        "(%s)", self.tenants_ready_timeout_s, self.directory.problem)
        log.info("gateway_started instance=%s replies=%s keys=%d", self.instance,
                 ",".join(self.reply_topics), len(self.keys))

    async def stop(self) -> None:
        await self.directory.stop()
        await self.replies.stop()
        if self.producer is not None:
            await self.producer.stop()

    # --- routes ------------------------------------------------------------------------

    async def healthz(self, request: HttpRequest) -> HttpResponse:
        ready = self.producer is not None and self.replies.running and self.directory.ready
        body = {"status": "ok" if ready else "starting", "instance": self.instance,
                "tenants_ready": self.directory.ready, "keys": len(self.keys),
                "waiting": self.replies.waiting, "reply_topics": list(self.reply_topics)}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def models(self, request: HttpRequest) -> HttpResponse:
        tenant = self._tenant(request)
        if tenant is None:
            return _unauthorized()
        return JSONResponse({"object": "list", "data": [
            _model(name) for name in sorted(self.catalog.models) if self._allows(tenant, name)]})

    async def model(self, request: HttpRequest) -> HttpResponse:
        tenant = self._tenant(request)
        if tenant is None:
            return _unauthorized()
        name = self.catalog.resolve(request.path_params["model"])
        if name is None or not self._allows(tenant, name):
            return _error(errors.UNKNOWN_MODEL,
                          f"The model {request.path_params['model']!r} does not exist", "model")
        return JSONResponse(_model(name))

    async def chat(self, request: HttpRequest) -> HttpResponse:
        chat = await self._call(request, lambda body, tenant: wire.parse_chat(
            body, tenant, reply_topic=self.reply_topics[0], chunk_topic=self.reply_topics[1],
            bounds=self.bounds))
        if isinstance(chat, HttpResponse):
            return chat
        r = chat.request
        sent = await self._publish_and_wait(request, r, stream=chat.stream)
        if isinstance(sent, HttpResponse):
            return sent
        first, waiter, deadline = sent
        if not chat.stream or isinstance(first, Response) and first.status != OK:
            self.replies.forget(waiter)
            return _answer(first, lambda ok: wire.completion_body(ok, r.model))
        events = stream.events(first, waiter, chat, deadline, self.replies.forget,
                               lambda: self.cancel(r.tenant, r.request_id,
                                                   "the HTTP client disconnected mid-stream"))
        headers = {"cache-control": "no-cache", "x-llmpipe-request-id": r.request_id}
        if isinstance(first, Response) and first.cache:      # a hit: one whole answer
            headers[CACHE_HEADER] = f"hit; kind={first.cache}"
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def embeddings(self, request: HttpRequest) -> HttpResponse:
        call = await self._call(request, lambda body, tenant: parse_embeddings(
            body, tenant, reply_topic=self.reply_topics[0], bounds=self.bounds))
        if isinstance(call, HttpResponse):
            return call
        r = call.request
        sent = await self._publish_and_wait(request, r, stream=False)
        if isinstance(sent, HttpResponse):
            return sent
        response, waiter, _ = sent
        self.replies.forget(waiter)
        return _answer(response, lambda ok: embeddings_body(ok, r.model, call.encoding_format))

    async def _call(self, request: HttpRequest, parse: Callable[[Any, str], C]
                    ) -> C | HttpResponse:
        """The caller's tenant (from its key) and body, parsed by ``parse`` into a call whose
        ``request`` passes intake's checks; or the error to answer."""
        tenant = self._tenant(request)
        if tenant is None:
            return _unauthorized()
        body = await self._json(request)
        if isinstance(body, HttpResponse):
            return body
        try:
            call = parse(body, tenant)
            directives = request.headers.get("cache-control")
            if directives:               # no-cache / no-store, as for any HTTP cache
                call = dataclasses.replace(call, request=call.request.replace(
                    cache_control=directives[:200]))
            context = request.headers.get(OVERRIDE_KEY)
            if context is not None:      # context management for this request
                call = dataclasses.replace(call, request=call.request.replace(
                    metadata={**call.request.metadata, OVERRIDE_KEY: context}))
            _check_context(call.request.metadata.get(OVERRIDE_KEY))
            validation.check_request(call.request, now_ms(), self.bounds)
        except wire.BadRequest as exc:
            return _error(errors.INVALID_REQUEST, exc.message, exc.param)
        except Rejected as exc:
            return _error(exc.code, exc.message)
        return call

    async def _json(self, request: HttpRequest) -> Any:
        """The body, parsed; or the error to answer (413 for an oversize body, 400 for one
        that is not JSON)."""
        raw = await _body(request, self.bounds.max_request_bytes)
        if raw is None:
            return _error(wire.TOO_LARGE, f"the body is over {self.bounds.max_request_bytes:,} "
                          "bytes, the most a request may be")
        try:
            return json.loads(raw)
        except ValueError as exc:
            return _error(errors.INVALID_REQUEST, f"the body is not valid JSON: {exc}")

    async def _publish_and_wait(self, request: HttpRequest, r: Request, *, stream: bool
                                ) -> tuple[Chunk | Response, Waiter, float] | HttpResponse:
        """Publish ``r`` to llm.requests and wait for its first answer event (its Response,
        or with ``stream`` its first Chunk): that event, its waiter (still registered) and
        the deadline (monotonic) — or the error to answer (503, 504, 499)."""
        waiter = self.replies.expect(r.tenant, r.request_id)
        try:
            value = self.codec.encode(r, self.requests_topic)
            assert self.producer is not None
            await self.producer.send_and_wait(self.requests_topic, value, key=r.tenant.encode())
        except (KafkaError, OSError) as exc:
            self.replies.forget(waiter)
            log.error("publish_failed request_id=%s tenant=%s error=%r", r.request_id, r.tenant,
                      exc)
            return _error(errors.OVERLOADED, "the gateway could not hand the request to the "
                          "pipeline; it was not processed, retry it")
        except BaseException:
            self.replies.forget(waiter)
            raise
        deadline = time.monotonic() + self.wait_s
        try:
            first = await _unless_gone(request, waiter.next(self.wait_s) if stream
                                       else waiter.response(self.wait_s))
        except asyncio.TimeoutError:
            self.replies.forget(waiter)
            return _timeout(self.wait_s)
        except ClientGone:
            self.replies.forget(waiter)
            self.cancel(r.tenant, r.request_id, "the HTTP client disconnected while waiting")
            return HttpResponse(status_code=499)     # nobody reads it: nginx's "client closed"
        except BaseException:
            self.replies.forget(waiter)
            raise
        return first, waiter, deadline

    def cancel(self, tenant: str, request_id: str, reason: str) -> None:
        """Tell dispatch the caller went away (llm.cancels), without waiting: the caller is
        gone already, and a cancel that does not arrive only costs the rest of the call."""
        cancel = Cancel(request_id=request_id, tenant=tenant, at_ms=now_ms(),
                        reason=f"{reason} (gateway {self.instance})")

        async def publish() -> None:
            try:
                assert self.producer is not None
                await self.producer.send_and_wait(self.cancels_topic, self.codec.encode(
                    cancel, self.cancels_topic), key=tenant.encode())
            except Exception as exc:
                log.warning("cancel_not_published request_id=%s error=%r", request_id, exc)

        task = asyncio.ensure_future(publish())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        log.info("client_gone request_id=%s tenant=%s", request_id, tenant)

    def _allows(self, tenant: str, model: str) -> bool:
        """Whether the tenant's policy lets it use ``model`` (what /v1/models lists)."""
        policy = self.directory.get(tenant)
        if policy is None:
            return True
        allowed = not policy.allowed_models or model in policy.allowed_models
        return allowed and model not in policy.denied_models

    def _tenant(self, request: HttpRequest) -> str | None:
        return self.keys.tenant(bearer(request.headers.get("authorization")))

    def app(self) -> Starlette:
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
        ], lifespan=asynccontextmanager(lifespan), middleware=[Middleware(Metered)],
            exception_handlers={
            404: lambda req, exc: _error("not_found", f"no route {req.method} {req.url.path}"),
            405: lambda req, exc: _error(errors.INVALID_REQUEST,
                                         f"{req.method} is not allowed on {req.url.path}"),
        })


async def _body(request: HttpRequest, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to pass ``limit`` bytes (from its
    Content-Length, or while reading): an oversize body is never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
    return b"".join(parts)


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was in."""


async def _unless_gone(request: HttpRequest, answer: Awaitable[Any]) -> Any:
    """``answer``'s result, or ClientGone as soon as the client disconnects (its body is
    read, so the next ASGI message is the disconnect)."""
    waiting = asyncio.ensure_future(answer)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not waiting.done():
            waiting.cancel()
    if waiting.done() and not waiting.cancelled():
        return waiting.result()
    raise ClientGone()


async def _disconnect(request: HttpRequest) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _answer(response: Response, body: Callable[[Response], dict[str, Any]]) -> HttpResponse:
    """``body(response)`` if the Response is ok, else its error in OpenAI's shape."""
    headers = {"x-llmpipe-request-id": response.request_id}
    if response.cache:
        headers[CACHE_HEADER] = f"hit; kind={response.cache}"
    if response.context:
        # what context management removed (a header is latin-1: anything else becomes ?)
        headers[OVERRIDE_KEY] = response.context.encode("ascii", "replace").decode()
    if response.status == OK:
        return JSONResponse(body(response), headers=headers)
    assert response.error is not None
    if response.error.retry_after_ms is not None:
        headers["retry-after"] = str(max(1, math.ceil(response.error.retry_after_ms / 1000)))
    return _error(response.error.code, response.error.message, headers=headers)


def _check_context(override: str | None) -> None:
    """A malformed context override is the caller's 400 here, not an error event later."""
    if override is None:
        return
    try:
        ContextPolicy().with_override(override)
    except ContextPolicyError as exc:
        raise wire.BadRequest(str(exc), OVERRIDE_KEY) from None


def _error(code: str, message: str, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(wire.error_body(code, message, param), status_code=wire.status_of(code),
                        headers=headers)


def _unauthorized() -> JSONResponse:
    return _error("invalid_api_key", "Incorrect API key provided: pass a gateway key as "
                  "'Authorization: Bearer <key>' (see `llmpipe tenants key`)")


def _timeout(wait_s: float) -> JSONResponse:
    return _error(errors.TIMEOUT, f"no answer within {wait_s:g}s; the request may still "
                  "complete and be billed")


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmpipe"}
