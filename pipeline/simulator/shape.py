"""The call flow every native provider shape shares over the core (see anthropic.py,
gemini.py): stats, the plan, hangs and latency are the same; a subclass reads the key, the
model and the request in its provider's terms and renders plans and refusals."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from pipeline.simulator.core import (CLIENT_CLOSED, DRAWN_LATENCY_HEADER, LATENCY_HEADER,
                                     NO_MODEL, CallPlan, ChatRequest, ClientGone, InvalidRequest,
                                     Simulator, json_body, key_fingerprint)

log = logging.getLogger("llmpipe.simulator")



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

    def invalid(self, message: str) -> web.Response:
        raise NotImplementedError

    def unknown_model(self, model: str) -> web.Response:
        raise NotImplementedError

    def shutting_down(self) -> web.Response:
        raise NotImplementedError

    def render(self, plan: CallPlan, headers: dict[str, str]) -> web.Response:
        """Every outcome but a hang (handled before): completion, malformed body, refusals."""
        raise NotImplementedError

    # -- the flow

    async def handle(self, request: web.Request) -> web.StreamResponse:
        api_key = self.api_key(request)
        fingerprint = key_fingerprint(api_key)
        body = await json_body(request)
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
        if not isinstance(body, dict):
            return self.invalid("The request body is not valid JSON.")
        try:
            chat = self.parse(request, body, model)
        except InvalidRequest as exc:
            return self.invalid(exc.message)
        if self.sim.config.profile(chat.model) is None:
            return self.unknown_model(chat.model)

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
        await asyncio.sleep(plan.latency_ms / 1000)
        return self.render(plan, headers)
