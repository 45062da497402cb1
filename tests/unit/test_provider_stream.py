"""Streamed provider calls (``complete(routed, on_delta)``) for the OpenAI, Anthropic and
Gemini adapters: against the provider simulator on loopback, through the real aiohttp
transport — deltas in order and as they arrive, usage, time to first token, refusals
before the stream and a stream cut part-way — and, over ``httpx.MockTransport``, the
stream events a healthy simulator never sends (error events, missing final events)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from pipeline import errors
from pipeline.embedded.ports import free_port
from pipeline.errors import GatewayError
from pipeline.providers import AnthropicAdapter, GeminiAdapter, OpenAIAdapter, make_adapter
from pipeline.providers.deployments import CallLimits, Deployment
from pipeline.providers.http import HTTPAdapter
from pipeline.secrets import Secret
from pipeline.simulator import FaultKind, FaultSpec, SimulatorConfig, start_simulator
from pipeline.simulator.server import RunningSimulator
from tests.unit.test_adapters_native import (ANTHROPIC, FOLLOW_UP, GEMINI, KEY, LIMITS, OPENING,
                                             answering, deployments, mock, routed)
from tests.unit.test_simulator import fast

OPENAI = deployments.by_id["openai-gpt-4.1"]
# (adapter class, deployment, the simulator's base URL for it)
ADAPTERS = [
    pytest.param(OpenAIAdapter, OPENAI, "base_url", id="openai"),
    pytest.param(AnthropicAdapter, ANTHROPIC, "base_url", id="anthropic"),
    pytest.param(GeminiAdapter, GEMINI, "gemini_base_url", id="gemini"),
]


class Deltas:
    """An ``on_delta`` that keeps what it was given and when the first piece came."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.first_at: float | None = None

    async def __call__(self, text: str) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        self.texts.append(text)


@contextlib.asynccontextmanager
async def simulated(deployment: Deployment, base: str, config: SimulatorConfig,
                    limits: CallLimits = LIMITS
                    ) -> AsyncIterator[tuple[RunningSimulator, HTTPAdapter]]:
    """An adapter for ``deployment`` pointed at a simulator serving ``config``."""
    async with await start_simulator(config) as sim:
        adapter = make_adapter(dataclasses.replace(deployment, base_url=getattr(sim, base)),
                               Secret(KEY), limits)
        try:
            yield sim, adapter
        finally:
            await adapter.aclose()


async def failure(call) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await call
    return info.value


# ------------------------------------------------ against the simulator (loopback)

@pytest.mark.parametrize("adapter_cls, deployment, base", ADAPTERS)
async def test_deltas_join_to_the_answer_with_the_same_usage(adapter_cls, deployment, base):
    # The seeded simulator answers the n-th call alike streamed or not: a fresh one per mode.
    requests = [routed(OPENING, max_tokens=1000), routed(FOLLOW_UP, max_tokens=10)]
    async with simulated(deployment, base, fast()) as (_, adapter):
        plain = [await adapter.complete(r) for r in requests]
    async with simulated(deployment, base, fast()) as (sim, adapter):
        deltas = [Deltas(), Deltas()]
        streamed = [await adapter.complete(r, on_delta=d) for r, d in zip(requests, deltas)]
        stats = sim.simulator.stats.snapshot()["models"][deployment.provider_model]

    for got, want, d in zip(streamed, plain, deltas):
        assert len(d.texts) > 1 and all(d.texts)
        assert "".join(d.texts) == got.content == want.content
        assert (got.finish_reason, got.prompt_tokens, got.completion_tokens,
                got.cached_tokens) == (want.finish_reason, want.prompt_tokens,
                                       want.completion_tokens, want.cached_tokens)
        assert want.ttft_ms == 0 and 0 < got.ttft_ms <= got.provider_ms
    assert streamed[0].finish_reason == "stop" and streamed[1].finish_reason == "length"
    assert streamed[1].completion_tokens == 10
    assert streamed[1].cached_tokens >= 1024          # the repeated prefix, reported in-stream
    assert stats["by_status"] == {"200": 2}


@pytest.mark.parametrize("adapter_cls, deployment, base", ADAPTERS)
async def test_the_first_delta_arrives_while_the_answer_is_still_streaming(
        adapter_cls, deployment, base):
    # 600 ms per call, the first token at about 45% of it: ~330 ms of pieces after it
    config = fast(latency_scale=1.0, fixed_latency_ms=600)
    async with simulated(deployment, base, config) as (_, adapter):
        deltas = Deltas()
        started = time.monotonic()
        done = await adapter.complete(routed(max_tokens=1000), on_delta=deltas)
        finished = time.monotonic()
    assert deltas.first_at is not None and finished - deltas.first_at >= 0.1
    assert 100 <= done.ttft_ms < done.provider_ms
    assert done.ttft_ms <= (deltas.first_at - started) * 1000 + 1


@pytest.mark.parametrize("adapter_cls, deployment, base", ADAPTERS)
async def test_refusals_before_the_stream_are_classified_as_unstreamed(
        adapter_cls, deployment, base):
    faults = [FaultSpec(FaultKind.RATE_LIMIT, retry_after_s=2),
              FaultSpec(FaultKind.SERVER_ERROR, status=503),
              FaultSpec(FaultKind.SERVER_ERROR, status=500),
              FaultSpec(FaultKind.CONTEXT_LENGTH), FaultSpec(FaultKind.UNAUTHORIZED)]
    async with simulated(deployment, base, fast()) as (sim, adapter):
        for fault in faults:
            sim.simulator.set_faults({deployment.provider_model: fault})
            plain = await failure(adapter.complete(routed()))
            deltas = Deltas()
            streamed = await failure(adapter.complete(routed(), on_delta=deltas))
            assert not deltas.texts
            assert (streamed.code, streamed.status, streamed.retry_after_s, streamed.message) == (
                plain.code, plain.status, plain.retry_after_s, plain.message), fault


@pytest.mark.parametrize("adapter_cls, deployment, base", ADAPTERS)
async def test_a_stream_cut_part_way_is_a_provider_error_not_a_short_answer(
        adapter_cls, deployment, base):
    config = fast(faults={deployment.provider_model: FaultSpec(FaultKind.MALFORMED)})
    async with simulated(deployment, base, config) as (_, adapter):
        deltas = Deltas()
        exc = await failure(adapter.complete(routed(max_tokens=1000), on_delta=deltas))
    assert exc.code == errors.PROVIDER_ERROR and exc.retryable
    assert deltas.texts and f"after {len(deltas.texts)} deltas" in exc.message, exc
    assert KEY not in exc.message


async def test_gemini_streams_only_as_server_sent_events():
    async with await start_simulator(fast()) as sim:
        async with httpx.AsyncClient(base_url=sim.gemini_base_url) as client:
            resp = await client.post("/models/gemini-2.5-flash:streamGenerateContent",
                                     headers={"x-goog-api-key": KEY},
                                     json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert resp.status_code == 400 and "alt=sse" in resp.json()["error"]["message"]


# ------------------------------------------- the connection failing part-way (loopback)

async def two_events_then(request: web.Request) -> web.StreamResponse:
    """Two OpenAI deltas, then a dropped connection or (``/stall``) silence."""
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for text in ("Hello", " there"):
        chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
    if request.path.startswith("/stall"):
        await asyncio.sleep(2)               # past the 0.3 s read timeout below
    else:
        request.transport.close()
    return resp


@pytest.fixture
async def breaking_server():
    app = web.Application()
    for path in ("/drop", "/stall"):
        app.router.add_post(f"{path}/chat/completions", two_events_then)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("path, code", [("/drop", errors.PROVIDER_ERROR),
                                        ("/stall", errors.TIMEOUT)])
async def test_a_connection_failing_mid_stream_says_how_far_it_got(breaking_server, path, code):
    limits = dataclasses.replace(LIMITS, total_timeout_s=0.3)
    adapter = OpenAIAdapter(dataclasses.replace(OPENAI, base_url=breaking_server + path),
                            Secret(KEY), limits)
    deltas = Deltas()
    try:
        exc = await failure(adapter.complete(routed(), on_delta=deltas))
    finally:
        await adapter.aclose()
    assert deltas.texts == ["Hello", " there"]
    assert exc.code == code and "stream broken after 2 deltas" in exc.message, exc


# ------------------------------------------------ stream events (httpx.MockTransport)

def sse(*events: dict | str, named: bool = False) -> bytes:
    """A stream body: each event's data (``[DONE]`` as is), named by its type if asked."""
    frames = []
    for e in events:
        data = e if isinstance(e, str) else json.dumps(e)
        name = f"event: {e['type']}\n" if named and isinstance(e, dict) else ""
        frames.append(f"{name}data: {data}\n\n")
    return "".join(frames).encode()


def openai_chunk(text: str | None = None, finish: str | None = None, usage=None) -> dict:
    choices = [] if usage else [{"index": 0, "delta": {} if text is None else {"content": text},
                                 "finish_reason": finish}]
    return {"object": "chat.completion.chunk", "choices": choices, "usage": usage}


def anthropic_events(*middle: dict, stop: bool = True) -> list[dict]:
    start = {"type": "message_start", "message": {"usage": {
        "input_tokens": 40, "cache_read_input_tokens": 1024, "cache_creation_input_tokens": 8,
        "output_tokens": 1}}}
    end = [{"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
            "usage": {"output_tokens": 12}}, {"type": "message_stop"}]
    return [start, {"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}},
            {"type": "ping"}, *middle, *(end if stop else [])]


def text_delta(text: str) -> dict:
    return {"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": text}}


def gemini_chunk(text: str, finish: str | None = None, **usage) -> dict:
    candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage}


async def streamed(adapter_cls, deployment, body: bytes, sent: list | None = None):
    """The Completion, or the GatewayError, of a streamed call answered with ``body``."""
    adapter = mock(adapter_cls, deployment, answering(
        200, body, headers={"content-type": "text/event-stream"}, sent=sent))
    deltas = Deltas()
    try:
        return await adapter.complete(routed(), on_delta=deltas), deltas.texts
    except GatewayError as exc:
        return exc, deltas.texts
    finally:
        await adapter.aclose()


async def test_each_adapter_asks_for_a_stream_in_its_providers_terms():
    sent: list[httpx.Request] = []
    await streamed(OpenAIAdapter, OPENAI, sse(openai_chunk("a", "stop"), "[DONE]"), sent)
    await streamed(AnthropicAdapter, ANTHROPIC, sse(*anthropic_events(), named=True), sent)
    await streamed(GeminiAdapter, GEMINI, sse(gemini_chunk("a", "STOP")), sent)
    openai, anthropic, gemini = [(r.url, json.loads(r.content)) for r in sent]
    assert openai[1]["stream"] is True and openai[1]["stream_options"] == {"include_usage": True}
    assert anthropic[1]["stream"] is True and anthropic[0].path.endswith("/messages")
    assert gemini[0].path.endswith("/models/gemini-2.5-flash:streamGenerateContent")
    assert gemini[0].params["alt"] == "sse" and "stream" not in gemini[1]
    assert "key" not in gemini[0].params


async def test_openai_usage_comes_from_the_last_chunk_and_is_zero_when_left_out():
    usage = {"prompt_tokens": 30, "completion_tokens": 2,
             "prompt_tokens_details": {"cached_tokens": 16}}
    with_usage, texts = await streamed(OpenAIAdapter, OPENAI, sse(
        openai_chunk(""), openai_chunk("Hi"), openai_chunk(" you"), openai_chunk(finish="stop"),
        openai_chunk(usage=usage), "[DONE]"))
    without, _ = await streamed(OpenAIAdapter, OPENAI, sse(openai_chunk("Hi", "length"), "[DONE]"))
    assert texts == ["Hi", " you"] and with_usage.content == "Hi you"
    assert (with_usage.prompt_tokens, with_usage.completion_tokens,
            with_usage.cached_tokens) == (30, 2, 16)
    assert without.finish_reason == "length"
    assert (without.prompt_tokens, without.completion_tokens, without.cached_tokens) == (0, 0, 0)


async def test_anthropic_counts_cache_reads_and_the_final_output_count():
    done, texts = await streamed(AnthropicAdapter, ANTHROPIC, sse(
        *anthropic_events(text_delta("Batch"), {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "thinking_delta",
                                                          "thinking": "hmm"}},
                          text_delta("ing helps.")), named=True))
    assert texts == ["Batch", "ing helps."] and done.finish_reason == "length"
    assert (done.prompt_tokens, done.completion_tokens, done.cached_tokens) == (1072, 12, 1024)


async def test_gemini_takes_the_last_counted_usage_and_skips_thoughts():
    thought = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "planning", "thought": True}]}, "index": 0}], "usageMetadata": {}}
    done, texts = await streamed(GeminiAdapter, GEMINI, sse(
        thought, gemini_chunk("Batching", promptTokenCount=90, totalTokenCount=90),
        gemini_chunk(" helps.", trafficType="ON_DEMAND"),
        gemini_chunk("", "MAX_TOKENS", promptTokenCount=90, candidatesTokenCount=7,
                     thoughtsTokenCount=5, cachedContentTokenCount=64)))
    assert texts == ["Batching", " helps."] and done.finish_reason == "length"
    assert (done.prompt_tokens, done.completion_tokens, done.cached_tokens) == (90, 12, 64)


@pytest.mark.parametrize("adapter_cls, deployment, body", [
    pytest.param(OpenAIAdapter, OPENAI, sse(openai_chunk("Hi"), openai_chunk(" yo")), id="openai"),
    pytest.param(AnthropicAdapter, ANTHROPIC,
                 sse(*anthropic_events(text_delta("Hi"), text_delta(" yo"), stop=False),
                     named=True), id="anthropic"),
    pytest.param(GeminiAdapter, GEMINI, sse(gemini_chunk("Hi"), gemini_chunk(" yo")), id="gemini"),
])
async def test_a_stream_without_its_final_event_is_a_provider_error(adapter_cls, deployment, body):
    exc, texts = await streamed(adapter_cls, deployment, body)
    assert texts == ["Hi", " yo"]
    assert isinstance(exc, GatewayError) and exc.code == errors.PROVIDER_ERROR
    assert "ended after 2 deltas without its final event" in exc.message


@pytest.mark.parametrize("adapter_cls, deployment, body", [
    pytest.param(OpenAIAdapter, OPENAI, sse(openai_chunk("Hi"), '{"choices": [{"del'), id="openai"),
    pytest.param(AnthropicAdapter, ANTHROPIC,
                 sse(*anthropic_events(text_delta("Hi"), "[]"), named=True), id="anthropic"),
    pytest.param(GeminiAdapter, GEMINI, sse(gemini_chunk("Hi"), "not json"), id="gemini"),
])
async def test_an_unreadable_event_is_a_provider_error(adapter_cls, deployment, body):
    exc, texts = await streamed(adapter_cls, deployment, body)
    assert texts == ["Hi"] and isinstance(exc, GatewayError)
    assert exc.code == errors.PROVIDER_ERROR
    assert "malformed stream event after 1 deltas" in exc.message


def anthropic_error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize("adapter_cls, deployment, error_event, code", [
    (AnthropicAdapter, ANTHROPIC, anthropic_error("overloaded_error", "Overloaded"),
     errors.OVERLOADED),
    (AnthropicAdapter, ANTHROPIC, anthropic_error("api_error", "Internal server error"),
     errors.PROVIDER_ERROR),
    (AnthropicAdapter, ANTHROPIC, anthropic_error("rate_limit_error", "slow down"),
     errors.RATE_LIMITED),
    (AnthropicAdapter, ANTHROPIC,
     anthropic_error("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"),
     errors.CONTEXT_LENGTH_EXCEEDED),
    (OpenAIAdapter, OPENAI, {"error": {"message": "The server had an error", "type": "server_error",
                                       "code": None}}, errors.PROVIDER_ERROR),
    (OpenAIAdapter, OPENAI, {"error": {"message": "slow down", "type": "requests",
                                       "code": "rate_limit_exceeded"}}, errors.RATE_LIMITED),
    # vLLM and other relays put the HTTP status in ``code``
    (OpenAIAdapter, OPENAI, {"error": {"message": "busy", "type": "ServiceUnavailableError",
                                       "code": 503}}, errors.OVERLOADED),
    (GeminiAdapter, GEMINI, {"error": {"code": 503, "message": "The model is overloaded.",
                                       "status": "UNAVAILABLE"}}, errors.OVERLOADED),
    (GeminiAdapter, GEMINI, {"error": {"code": 500, "message": "An internal error has occurred.",
                                       "status": "INTERNAL"}}, errors.PROVIDER_ERROR),
])
async def test_an_error_event_is_classified_like_the_status_it_stands_for(
        adapter_cls, deployment, error_event, code):
    first = {OpenAIAdapter: openai_chunk("Hi"), AnthropicAdapter: text_delta("Hi"),
             GeminiAdapter: gemini_chunk("Hi")}[adapter_cls]
    events = ([*anthropic_events(first, stop=False), error_event]
              if adapter_cls is AnthropicAdapter else [first, error_event])
    exc, texts = await streamed(adapter_cls, deployment,
                                sse(*events, named=adapter_cls is AnthropicAdapter))
    assert texts == ["Hi"] and isinstance(exc, GatewayError)
    assert exc.code == code and "stream error after 1 deltas" in exc.message, exc


async def test_an_error_event_never_carries_the_key():
    exc, _ = await streamed(OpenAIAdapter, OPENAI, sse(
        {"error": {"message": f"bad key {KEY}", "type": "invalid_request_error", "code": None}}))
    assert isinstance(exc, GatewayError) and KEY not in exc.message and "[redacted]" in exc.message
