"""Embeddings as OpenAI (``POST /v1/embeddings``) and Gemini (``:embedContent``,
``:batchEmbedContents``) serve them, from the embedding models of simulator.yaml.

A vector is deterministic and unit length: a hashed bag of the text's character trigrams
and words (each adds to a few signed dimensions), plus a little noise seeded by the text,
so similar texts get similar vectors and the same text always the same one. A smaller
``dimensions`` / ``outputDimensionality`` is the full vector's head, renormalised (as
OpenAI's text-embedding-3 shortens). Latency, faults and stats follow the model's profile
like a chat call."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import struct
from typing import Any

from aiohttp import web

from pipeline.routing.tokens import estimate_text_tokens
from pipeline.simulator.chat import ChatRequest, Message
from pipeline.simulator.core import (CLIENT_CLOSED, LATENCY_HEADER, NO_MODEL, CallPlan,
                                     ClientGone, Outcome, Simulator, bearer_key, json_body,
                                     key_fingerprint, truncated_json)
from pipeline.simulator.gemini import API_VERSIONS, GeminiShape, google_error
from pipeline.simulator.openai import OpenAIShape, key_refusal, openai_error, unknown_model
from pipeline.simulator.profiles import ModelProfile

MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_TEXT_CHARS = 20_000          # of one input, for the vector (the tokens count it all)
SPREAD = 4                       # dimensions each trigram or word adds to
NOISE = 0.05
OPENAI_PARAMETERS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})


def embedding_routes(sim: Simulator) -> list[web.RouteDef]:
    serve = Embeddings(sim)
    routes = [web.post("/v1/embeddings", serve.openai)]
    for version in API_VERSIONS:
        routes += [web.post(f"/{version}/models/{{model}}:embedContent", serve.gemini_one),
                   web.post(f"/{version}/models/{{model}}:batchEmbedContents", serve.gemini_batch)]
    return routes


def embed(text: str, dims: int, model: str) -> list[float]:
    """The unit vector of ``text``, ``dims`` long, for ``model``."""
    text = text[:MAX_TEXT_CHARS]
    seed = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    noise = random.Random(seed)
    vector = [noise.gauss(0.0, NOISE) for _ in range(dims)]
    padded = f" {text.lower()} "
    features = [padded[i:i + 3] for i in range(max(len(padded) - 2, 0))] + padded.split()
    for feature in features:
        digest = hashlib.blake2b(f"{model}\0{feature}".encode(), digest_size=4 * SPREAD).digest()
        for k in range(SPREAD):
            word = int.from_bytes(digest[4 * k:4 * k + 4], "little")
            vector[word % dims] += 1.0 if word & 0x80000000 else -1.0
    return normalised(vector)


def normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def shortened(vector: list[float], dims: int | None) -> list[float]:
    return vector if dims is None or dims >= len(vector) else normalised(vector[:dims])


class EmbeddingRefused(Exception):
    def __init__(self, response: web.Response):
        super().__init__(response.status)
        self.response = response


class Embeddings:
    def __init__(self, sim: Simulator):
        self.sim = sim
        self.openai_shape = OpenAIShape(sim)
        self.gemini_shape = GeminiShape(sim)

    async def _call(self, request: web.Request, model: str | None, fingerprint: str,
                    answer: Any) -> web.StreamResponse:
        with self.sim.stats.track(model if isinstance(model, str) and model else NO_MODEL,
                                  fingerprint) as call:
            try:
                response = await answer()
            except EmbeddingRefused as refused:
                response = refused.response
            except ClientGone as gone:
                return gone.response
            call.status = response.status
            return response

    async def _plan(self, request: web.Request, model: str, fingerprint: str) -> CallPlan:
        """Latency and faults as for a chat call to this model; hangs are held here."""
        plan = self.sim.plan(ChatRequest(model, (Message("user", ""),), None), fingerprint)
        if plan.hang_s is not None and not await self.sim.hold(request, plan.hang_s):
            raise ClientGone(web.Response(status=CLIENT_CLOSED))
        await asyncio.sleep(plan.latency_ms / 1000)
        return plan

    # -- OpenAI

    async def openai(self, request: web.Request) -> web.StreamResponse:
        api_key = bearer_key(request)
        body = await json_body(request)
        self.sim.requests.append(body)
        model = body.get("model") if isinstance(body, dict) else None
        fingerprint = key_fingerprint(api_key)
        return await self._call(request, model, fingerprint,
                                lambda: self._openai(request, api_key, fingerprint, body))

    async def _openai(self, request: web.Request, api_key: str | None, fingerprint: str,
                      body: Any) -> web.Response:
        refused = key_refusal(self.sim, api_key)
        if refused is not None:
            return refused
        if not isinstance(body, dict):
            return _invalid("We could not parse the JSON body of your request.", None)
        for name in body:
            if name not in OPENAI_PARAMETERS:
                return _invalid(f"Unrecognized request argument supplied: {name}", name)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _invalid("you must provide a model parameter", "model")
        texts, tokens = _openai_inputs(body.get("input"))
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return _invalid(f"Invalid value for 'encoding_format': expected 'float' or "
                            f"'base64', got {fmt!r}.", "encoding_format")
        profile = self.sim.config.profile(model)
        if profile is None:
            return unknown_model(model)
        if profile.kind != "embedding":
            return _invalid(f"The model `{model}` does not support embeddings.", "model")
        dims = _dimensions(body.get("dimensions"), profile)
        plan = await self._plan(request, model, fingerprint)
        headers = {LATENCY_HEADER: str(plan.reported_latency_ms)}
        data = []
        for index, text in enumerate(texts):
            vector = shortened(embed(text, profile.dimensions or 0, profile.name), dims)
            encoded: Any = vector
            if fmt == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        out = {"object": "list", "data": data, "model": model,
               "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}}
        if plan.outcome is Outcome.COMPLETION:
            return web.json_response(out, headers=headers)
        if plan.outcome is Outcome.MALFORMED:
            return truncated_json(out, headers)
        return self.openai_shape.render(plan, headers, False, api_key)

    # -- Gemini

    async def gemini_one(self, request: web.Request) -> web.StreamResponse:
        return await self._gemini(request, batch=False)

    async def gemini_batch(self, request: web.Request) -> web.StreamResponse:
        return await self._gemini(request, batch=True)

    async def _gemini(self, request: web.Request, batch: bool) -> web.StreamResponse:
        api_key = self.gemini_shape.api_key(request)
        fingerprint = key_fingerprint(api_key)
        model = request.match_info["model"]
        body = await json_body(request)
        return await self._call(request, model, fingerprint,
                                lambda: self._gemini_answer(request, api_key, fingerprint,
                                                            model, body, batch))

    async def _gemini_answer(self, request: web.Request, api_key: str | None, fingerprint: str,
                             model: str, body: Any, batch: bool) -> web.Response:
        shape = self.gemini_shape
        if api_key is None:
            return shape.missing_key()
        if not self.sim.config.accepts_key(api_key):
            return shape.bad_key(api_key)
        if not isinstance(body, dict):
            return google_error(400, "Invalid JSON payload received.")
        profile = self.sim.config.profile(model)
        if profile is None or profile.kind != "embedding":
            return google_error(404, f"models/{model} is not found for API version v1beta, or "
                                f"is not supported for embedContent.")
        requests = body.get("requests") if batch else [body]
        if not isinstance(requests, list) or not requests:
            return google_error(400, "* BatchEmbedContentsRequest.requests: requests is required")
        vectors = []
        for i, one in enumerate(requests):
            where = f"requests[{i}]" if batch else "EmbedContentRequest"
            text = _gemini_text(one, where)
            dims = _gemini_dimensions(one, profile, where)
            vectors.append({"values": shortened(embed(text, profile.dimensions or 0,
                                                      profile.name), dims)})
        plan = await self._plan(request, model, fingerprint)
        headers = {LATENCY_HEADER: str(plan.reported_latency_ms)}
        out = {"embeddings": vectors} if batch else {"embedding": vectors[0]}
        if plan.outcome is Outcome.COMPLETION:
            return web.json_response(out, headers=headers)
        if plan.outcome is Outcome.MALFORMED:
            return truncated_json(out, headers)
        return shape.render(plan, headers)


def _invalid(message: str, param: str | None) -> web.Response:
    return openai_error(400, message, "invalid_request_error", param=param)


def _openai_inputs(raw: Any) -> tuple[list[str], list[int]]:
    """(texts to embed, tokens of each); token arrays are embedded as their numbers."""
    invalid = EmbeddingRefused(_invalid(
        "'$.input' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference.", "input"))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or len(raw) > MAX_INPUTS:
        raise invalid
    if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        raw = [raw]                       # one token array
    texts, tokens = [], []
    for item in raw:
        if isinstance(item, str) and item:
            texts.append(item)
            tokens.append(estimate_text_tokens(item))
        elif (isinstance(item, list) and item
              and all(isinstance(t, int) and not isinstance(t, bool) for t in item)):
            texts.append(" ".join(map(str, item)))
            tokens.append(len(item))
        else:
            raise invalid
        if tokens[-1] > MAX_INPUT_TOKENS:
            raise EmbeddingRefused(_invalid(
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                f"requested {tokens[-1]} tokens ({tokens[-1]} in your prompt; 0 for the "
                f"completion). Please reduce your prompt; or completion length.", "input"))
    return texts, tokens


def _dimensions(raw: Any, profile: ModelProfile) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= (profile.dimensions or 0):
        raise EmbeddingRefused(_invalid(
            f"Invalid value for 'dimensions': expected an integer from 1 to "
            f"{profile.dimensions}, got {raw!r}.", "dimensions"))
    return raw


def _gemini_text(one: Any, where: str) -> str:
    content = one.get("content") if isinstance(one, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts or not all(
            isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
        raise EmbeddingRefused(google_error(400, f"* {where}.content.parts: a list of text "
                                                 f"parts is required"))
    return " ".join(p["text"] for p in parts)


def _gemini_dimensions(one: dict[str, Any], profile: ModelProfile, where: str) -> int | None:
    raw = one.get("outputDimensionality", one.get("output_dimensionality"))
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= (profile.dimensions or 0):
        raise EmbeddingRefused(google_error(
            400, f"* {where}.output_dimensionality: must be between 1 and {profile.dimensions}"))
    return raw
