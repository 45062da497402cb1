"""The provider simulator's HTTP server: answers on loopback like an LLM provider so the
dev stack, integration tests and benchmarks run without keys or network. It mounts the
wire shapes — OpenAI chat completions (openai.py), Anthropic Messages (anthropic.py),
Gemini generateContent (gemini.py), both Batch APIs (batches.py), embeddings
(embeddings.py), the model catalogs (models.py) — over one core (core.py), plus
``/_sim/*``, the control plane tests use (faults, stats, reset, the bodies received). An unknown route, a wrong
method or a body over the size limit is a JSON error in the provider's shape the request
looks like (Gemini by path or key, Anthropic by its headers, else OpenAI)."""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from pipeline.config import ConfigError
from pipeline.simulator.anthropic import anthropic_error, anthropic_routes
from pipeline.simulator.batches import batch_routes
from pipeline.simulator.core import LATENCY_HEADER, Simulator
from pipeline.simulator.embeddings import embedding_routes
from pipeline.simulator.gemini import gemini_routes, google_error
from pipeline.simulator.models import is_anthropic, is_google, models_routes
from pipeline.simulator.openai import openai_error, openai_routes
from pipeline.simulator.profiles import SimulatorConfig, parse_faults

log = logging.getLogger("llmpipe.simulator")



# ----------------------------------------------------------------- control plane

def control_routes(sim: Simulator) -> list[web.RouteDef]:
    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(_faults_json(sim))

    async def put_faults(request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
            faults = parse_faults(data, "PUT /_sim/faults", "", set(sim.config.model_names()))
        except ValueError as exc:        # ConfigError and JSON errors alike
            detail = str(exc) if isinstance(exc, ConfigError) else f"invalid JSON: {exc}"
            return web.json_response({"error": detail}, status=400)
        sim.set_faults(faults)
        log.info("sim.faults %s", " ".join(f"{m}={f.kind.value}:{f.rate:g}"
                                            for m, f in sorted(faults.items())) or "none")
        return web.json_response(_faults_json(sim))

    async def delete_faults(request: web.Request) -> web.Response:
        sim.set_faults({})
        log.info("sim.faults none")
        return web.json_response({})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(sim.stats.snapshot())

    async def reset(request: web.Request) -> web.Response:
        sim.reset()
        return web.json_response({"reset": True})

    async def requests(request: web.Request) -> web.Response:
        """The latest chat bodies (OpenAI, Anthropic, Gemini) as received, oldest first."""
        return web.json_response({"requests": list(sim.requests)})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "models": len(sim.config.model_names())})

    return [web.get("/_sim/faults", get_faults), web.put("/_sim/faults", put_faults),
            web.delete("/_sim/faults", delete_faults), web.get("/_sim/stats", stats),
            web.post("/_sim/reset", reset), web.get("/_sim/requests", requests),
            web.get("/healthz", healthz)]


def _faults_json(sim: Simulator) -> dict[str, Any]:
    return {model: spec.to_json() for model, spec in sorted(sim.faults.items())}


# ------------------------------------------------------------------- app and runner

SIMULATOR = web.AppKey("simulator", Simulator)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _latency_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer says how much simulated provider time it carries (0 unless set)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.setdefault(LATENCY_HEADER, "0")
        raise
    if not response.prepared:
        response.headers.setdefault(LATENCY_HEADER, "0")
    return response


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Routing and size refusals as the provider's JSON error, never aiohttp's plain text."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed, web.HTTPRequestEntityTooLarge) as exc:
        return route_error(request, exc.status)


def route_error(request: web.Request, status: int) -> web.Response:
    route = f"{request.method} {request.path}"
    if status == 413:
        limit = request.app[SIMULATOR].config.max_body_bytes
        message = f"Request body too large: the limit is {limit} bytes."
    elif status == 405:
        message = f"Invalid method for URL ({route})"
    else:
        message = f"Invalid URL ({route})"
    if is_google(request):
        return google_error(status, message)
    if is_anthropic(request):
        kind = {404: "not_found_error", 413: "request_too_large"}.get(status,
                                                                      "invalid_request_error")
        return anthropic_error(status, kind, message)
    code = {413: "request_too_large", 405: "method_not_allowed"}.get(status)
    return openai_error(status, message, "invalid_request_error", code=code)


def build_app(config: SimulatorConfig) -> web.Application:
    sim = Simulator(config)
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[_latency_header, _json_errors])
    app[SIMULATOR] = sim
    app.add_routes(openai_routes(sim))
    app.add_routes(models_routes(sim))
    app.add_routes(embedding_routes(sim))
    app.add_routes(anthropic_routes(sim))
    app.add_routes(gemini_routes(sim))
    app.add_routes(batch_routes(sim))        # OpenAI files+batches, Anthropic message batches
    app.add_routes(control_routes(sim))

    async def close(_: web.Application) -> None:
        sim.closing = True          # releases hanging calls so shutdown does not wait on them

    app.on_shutdown.append(close)
    return app


class RunningSimulator:
    """A simulator serving in this process; ``url`` has no path (clients add ``/v1``)."""

    def __init__(self, app: web.Application, runner: web.AppRunner, host: str, port: int):
        self.app, self.host, self.port = app, host, port
        self._runner: web.AppRunner | None = runner

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI or Anthropic client takes as its base URL."""
        return f"{self.url}/v1"

    @property
    def gemini_base_url(self) -> str:
        """What a Gemini client takes as its base URL (``/v1`` answers too)."""
        return f"{self.url}/v1beta"

    @property
    def simulator(self) -> Simulator:
        return self.app[SIMULATOR]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("sim.stopped url=%s", self.url)

    async def __aenter__(self) -> "RunningSimulator":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


async def start_simulator(config: SimulatorConfig, host: str = "127.0.0.1",
                          port: int = 0) -> RunningSimulator:
    """Serve ``config`` on ``host:port`` (0 = a free port) until ``stop()``."""
    app = build_app(config)
    # Cancel a handler when its client disconnects (a hung call must not outlive it) and
    # do not wait a minute for in-flight calls on stop.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    running = RunningSimulator(app, runner, host, bound_port)
    log.info("sim.started url=%s models=%d seed=%d latency_scale=%g fixed_latency_ms=%s "
             "base_errors=%s", running.url, len(config.model_names()), config.seed,
             config.latency_scale, config.fixed_latency_ms, config.base_errors)
    return running
