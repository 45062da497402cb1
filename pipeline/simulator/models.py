"""The simulator's model catalog as each provider lists it: OpenAI ``GET /v1/models`` and
``/v1/models/{id}``, Anthropic the same paths (told apart by its ``x-api-key`` /
``anthropic-version`` headers), Gemini ``GET /v1beta/models`` and ``/v1beta/models/{name}``
(also under ``/v1`` with a Google key). Unknown models are each provider's 404."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pipeline.simulator.anthropic import anthropic_error
from pipeline.simulator.core import Simulator, bearer_key
from pipeline.simulator.gemini import GeminiShape, google_error
from pipeline.simulator.openai import key_refusal, unknown_model
from pipeline.simulator.profiles import ModelProfile

CREATED = 1_700_000_000               # a fixed creation time: the catalog does not change


def models_routes(sim: Simulator) -> list[web.RouteDef]:
    catalog = Catalog(sim)
    return [web.get("/v1/models", catalog.list_v1), web.get("/v1/models/{name}", catalog.get_v1),
            web.get("/v1beta/models", catalog.list_gemini),
            web.get("/v1beta/models/{name}", catalog.get_gemini)]


def is_anthropic(request: web.Request) -> bool:
    return ("anthropic-version" in request.headers
            or ("x-api-key" in request.headers and "Authorization" not in request.headers))


def is_google(request: web.Request) -> bool:
    return (request.path.startswith("/v1beta/") or "x-goog-api-key" in request.headers
            or "key" in request.query)


class Catalog:
    def __init__(self, sim: Simulator):
        self.sim = sim
        self.gemini = GeminiShape(sim)

    def _entries(self) -> list[tuple[str, ModelProfile]]:
        return [(name, profile) for name in self.sim.config.model_names()
                if (profile := self.sim.config.profile(name)) is not None]

    # -- OpenAI and Anthropic (/v1)

    async def list_v1(self, request: web.Request) -> web.Response:
        if is_google(request):
            return await self.list_gemini(request)
        if is_anthropic(request):
            refused = self._anthropic_key(request)
            if refused is not None:
                return refused
            data = [anthropic_model(name) for name, _ in self._entries()]
            return web.json_response({"data": data, "has_more": False,
                                      "first_id": data[0]["id"] if data else None,
                                      "last_id": data[-1]["id"] if data else None})
        refused = key_refusal(self.sim, bearer_key(request))
        if refused is not None:
            return refused
        return web.json_response({"object": "list",
                                  "data": [openai_model(name) for name, _ in self._entries()]})

    async def get_v1(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if is_google(request):
            return await self.get_gemini(request)
        known = self.sim.config.profile(name) is not None
        if is_anthropic(request):
            refused = self._anthropic_key(request)
            if refused is not None:
                return refused
            if not known:
                return anthropic_error(404, "not_found_error", f"model: {name}")
            return web.json_response(anthropic_model(name))
        refused = key_refusal(self.sim, bearer_key(request))
        if refused is not None:
            return refused
        return web.json_response(openai_model(name)) if known else unknown_model(name)

    def _anthropic_key(self, request: web.Request) -> web.Response | None:
        api_key = request.headers.get("x-api-key", "").strip()
        if not api_key:
            return anthropic_error(401, "authentication_error", "x-api-key header is required")
        if not self.sim.config.accepts_key(api_key):
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        return None

    # -- Gemini

    def _google_key(self, request: web.Request) -> web.Response | None:
        api_key = self.gemini.api_key(request)
        if api_key is None:
            return self.gemini.missing_key()
        return None if self.sim.config.accepts_key(api_key) else self.gemini.bad_key(api_key)

    async def list_gemini(self, request: web.Request) -> web.Response:
        refused = self._google_key(request)
        if refused is not None:
            return refused
        return web.json_response({"models": [gemini_model(name, profile)
                                             for name, profile in self._entries()]})

    async def get_gemini(self, request: web.Request) -> web.Response:
        refused = self._google_key(request)
        if refused is not None:
            return refused
        name = request.match_info["name"].removeprefix("models/")
        profile = self.sim.config.profile(name)
        if profile is None:
            return google_error(404, f"models/{name} is not found for API version v1beta, or is "
                                f"not supported for generateContent.")
        return web.json_response(gemini_model(name, profile))


def openai_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "llmpipe-simulator"}


def anthropic_model(name: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name,
            "created_at": "2025-09-29T00:00:00Z"}


def gemini_model(name: str, profile: ModelProfile) -> dict[str, Any]:
    methods = (["embedContent", "batchEmbedContents"] if profile.kind == "embedding"
               else ["generateContent", "streamGenerateContent", "countTokens"])
    return {"name": f"models/{name}", "version": "001", "displayName": name,
            "description": f"{name} (llmpipe simulator)",
            "inputTokenLimit": profile.context_window,
            "outputTokenLimit": profile.max_output_tokens,
            "supportedGenerationMethods": methods}
