"""The call flow every native provider shape shares over the core (see anthropic.py,
gemini.py): stats, the plan, hangs and latency are the same; a subclass reads the key, the
model and the request in its provider's terms and renders plans and refusals. Also the
pacing of streamed answers, which every shape (openai.py too) writes through
``PacedStream`` in its own events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from pipeline.simulator.core import (CLIENT_CLOSED, DRAWN_LATENCY_HEADER, LATENCY_HEADER,
                                     NO_MODEL, CallPlan, ChatRequest, ClientGone, InvalidRequest,
                                     Outcome, Simulator, json_body, key_fingerprint)
from pipeline.simulator.text import stream_pieces

T = TypeVar("T")

log = logging.getLogger("llmpipe.simulator")

# The outcomes a streamed call answers with a stream; refusals come before it, as statuses.
STREAMED = frozenset({Outcome.COMPLETION, Outcome.MALFORMED})
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


# ------------------------------------------------------------ streamed answers

class PacedStream:
    """One streamed answer, paced as a provider paces it: nothing until the first token
    (``plan.ttft_ms``), then the content's pieces (about a token each) spread so the last
    lands at ``plan.latency_ms``. A shape writes its own events around the pieces.

    A MALFORMED plan is a stream cut mid-answer (``cut``): only the first half of the
    pieces, then half of the next event and the end of the body, no final event."""

    def __init__(self, request: web.Request, plan: CallPlan, headers: dict[str, str]):
        self.plan = plan
        self.response = web.StreamResponse(status=200, headers={**headers, **SSE_HEADERS})
        self._request = request
        self._loop = asyncio.get_running_loop()
        self._first_s = self._loop.time() + plan.ttft_ms / 1000

    @property
    def cut(self) -> bool:
        return self.plan.outcome is Outcome.MALFORMED

    async def answer(self, write: Callable[[PacedStream], Awaitable[None]]) -> web.StreamResponse:
        """Open the stream at the first token, let ``write`` send the events, end it."""
        try:
            await asyncio.sleep(max(self._first_s - self._loop.time(), 0.0))
            await self.response.prepare(self._request)
            await write(self)
            await self.response.write_eof()
        except ConnectionResetError:
            raise ClientGone(self.response) from None
        return self.response

    async def send(self, event: str) -> None:
        await self.response.write(event.encode())

    async def pieces(self) -> AsyncIterator[tuple[str, bool]]:
        """(piece, whether it is the answer's last) at each piece's time; an empty answer
        is one empty piece, so every stream has a last one to carry the finish."""
        async for piece, last in self.paced(stream_pieces(self.plan.content) or [""]):
            yield piece, last

    async def paced(self, items: Sequence[T]) -> AsyncIterator[tuple[T, bool]]:
        """Each item (a piece, a step of several choices or tool calls) at its time, with
        whether it is the last; a cut stream stops half-way."""
        gap_s = (max(self.plan.latency_ms - self.plan.ttft_ms, 0.0) / 1000
                 / max(len(items) - 1, 1))
        sent = items[:len(items) // 2] if self.cut else items
        for i, item in enumerate(sent):
            # Paced against deadlines so many tiny gaps still add up to the planned total.
            delay = self._first_s + i * gap_s - self._loop.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
            yield item, i == len(items) - 1

    async def cut_short(self, event: str) -> None:
        """Half of ``event``: where the connection dropped."""
        await self.send(event[:len(event) // 2])


# ------------------------------------------------------- shared by the native shapes

class NativeShape:
    """The call flow of a provider's native API over the shared core: stats, the plan,
    hangs and latency are the same for every shape. A subclass reads the key, the model and
    the request in its provider's terms and renders plans and refusals in its error shape;
    each of its methods answers one question (see anthropic.py, gemini.py)."""

    def __init__(self, sim: Simulator):
        self.sim = sim

    # -- the provider's terms

    def api_key(self, request: web.Request) -> str | None:
        raise NotImplementedError

    def model_of(self, request: web.Request, body: Any) -> str | None:
        raise NotImplementedError

    def parse(self, request: web.Request, body: dict[str, Any], model: str | None) -> ChatRequest:
        """The body as a ChatRequest; InvalidRequest for anything the provider would refuse."""
        raise NotImplementedError

    def missing_key(self) -> web.Response:
        raise NotImplementedError

    def bad_key(self, api_key: str) -> web.Response:
        """A key the simulator was not configured with (a fault's 401 renders the same)."""
        raise NotImplementedError

    def unsupported(self, model: str, feature: str) -> web.Response:
        """The model cannot do ``feature`` (vision, tools, n...): the provider's 400."""
        return self.invalid(f"{model} does not support {feature}")

    def invalid(self, message: str) -> web.Response:
        raise NotImplementedError

    def unknown_model(self, model: str) -> web.Response:
        raise NotImplementedError

    def shutting_down(self) -> web.Response:
        raise NotImplementedError

    def render(self, plan: CallPlan, headers: dict[str, str]) -> web.Response:
        """Every outcome but a hang (handled before): completion, malformed body, refusals."""
        raise NotImplementedError

    async def stream(self, stream: PacedStream) -> None:
        """The events of a streamed answer (``stream.cut``: one cut short)."""
        raise NotImplementedError

    # -- the flow

    async def handle(self, request: web.Request) -> web.StreamResponse:
        api_key = self.api_key(request)
        fingerprint = key_fingerprint(api_key)
        body = await json_body(request)
        self.sim.requests.append(body)
        model = self.model_of(request, body)
        with self.sim.stats.track(model if isinstance(model, str) and model else NO_MODEL,
                                  fingerprint) as call:
            try:
                response = await self._answer(request, api_key, fingerprint, body, model)
            except ClientGone as gone:
                return gone.response        # status left unset: recorded as client closed
            call.status = response.status
            return response

    async def _answer(self, request: web.Request, api_key: str | None, fingerprint: str,
                      body: Any, model: str | None) -> web.StreamResponse:
        if api_key is None:
            return self.missing_key()
        if not self.sim.config.accepts_key(api_key):
            return self.bad_key(api_key)
        if not isinstance(body, dict):
            return self.invalid("The request body is not valid JSON.")
        try:
            chat = self.parse(request, body, model)
        except InvalidRequest as exc:
            return self.invalid(exc.message)
        profile = self.sim.config.profile(chat.model)
        if profile is None or profile.kind != "chat":
            return self.unknown_model(chat.model)
        for feature in sorted(chat.features - profile.features):
            return self.unsupported(chat.model, feature)

        plan = self.sim.plan(chat, fingerprint)
        log.debug("sim.call shape=%s model=%s key=%s call=%d outcome=%s status=%d "
                  "latency_ms=%d", type(self).__name__, plan.model, fingerprint,
                  plan.call_index, plan.outcome.value, plan.status, plan.reported_latency_ms)
        if plan.hang_s is not None and not await self.sim.hold(request, plan.hang_s):
            if not self.sim.closing:
                raise ClientGone(web.Response(status=CLIENT_CLOSED))
            return self.shutting_down()
        headers = {LATENCY_HEADER: str(plan.reported_latency_ms),
                   DRAWN_LATENCY_HEADER: str(round(plan.drawn_latency_ms))}
        if chat.stream and plan.outcome in STREAMED:
            return await PacedStream(request, plan, headers).answer(self.stream)
        await asyncio.sleep(plan.latency_ms / 1000)
        return self.render(plan, headers)
