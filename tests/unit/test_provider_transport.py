"""The aiohttp transport under the provider adapters, against a real HTTP server on
loopback: answers (gzip included) read as httpx would, and each way a call can fail lands
on the error code the dispatcher retries or reports — a timeout as ``timeout``, a refused
connection or a provider hanging up mid-answer as ``provider_error``."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json

import pytest
from aiohttp import web

from pipeline import errors
from pipeline.catalog import load_catalog
from pipeline.embedded.ports import free_port
from pipeline.errors import GatewayError
from pipeline.events.models import ChatMessage, Request, RouteDecision, RoutedRequest
from pipeline.providers import OpenAIAdapter
from pipeline.providers.deployments import load_deployments
from pipeline.secrets import Secret

KEY = "sk-transport-test-0123456789abcdef"
deployments = load_deployments(load_catalog(), env={})
LIMITS = dataclasses.replace(deployments.calls, total_timeout_s=0.5, connect_timeout_s=0.5)
ANSWER = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
ROUTED = RoutedRequest(request=Request(request_id="r-1", tenant="acme",
                                       messages=[ChatMessage("user", "hello")]),
                       route=RouteDecision(deployment="d", model="m", provider="p", rule="pinned"),
                       max_tokens=16, reply_topic="llm.responses", received_at_ms=0, routed_at_ms=0)


async def plain(request: web.Request) -> web.Response:
    body = await request.json()
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    return web.json_response(ANSWER)


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(body=gzip.compress(json.dumps(ANSWER).encode()),
                        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})


async def hangs(request: web.Request) -> web.Response:
    await asyncio.sleep(2)              # past the 0.5 s timeout; short so the server stops soon
    return web.json_response(ANSWER)


async def hangs_up(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Length": "1000"})
    await resp.prepare(request)
    await resp.write(b'{"choices": [')
    request.transport.close()           # the provider drops the connection mid-answer
    return resp


@pytest.fixture
async def server():
    app = web.Application()
    for path, handler in (("/ok", plain), ("/gzip", gzipped), ("/hang", hangs),
                          ("/drop", hangs_up)):
        app.router.add_post(f"{path}/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def adapter(base_url: str) -> OpenAIAdapter:
    deployment = dataclasses.replace(deployments.by_id["openai-gpt-4.1"], base_url=base_url)
    return OpenAIAdapter(deployment, Secret(KEY), LIMITS)


async def outcome(base_url: str):
    a = adapter(base_url)
    try:
        return await a.complete(ROUTED)
    except GatewayError as exc:
        return exc
    finally:
        await a.aclose()


@pytest.mark.parametrize("path", ["/ok", "/gzip"])
async def test_answers_are_read_as_httpx_reads_them(server, path):
    done = await outcome(server + path)
    assert (done.content, done.prompt_tokens, done.completion_tokens) == ("hi", 5, 1)


async def test_a_call_past_its_timeout_is_a_timeout(server):
    err = await outcome(server + "/hang")
    assert isinstance(err, GatewayError) and err.code == errors.TIMEOUT, err


@pytest.mark.parametrize("where", ["refused", "/drop"])
async def test_refused_or_dropped_connections_are_provider_errors(server, where):
    url = f"http://127.0.0.1:{free_port()}" if where == "refused" else server + where
    err = await outcome(url)
    assert isinstance(err, GatewayError) and err.code == errors.PROVIDER_ERROR, err
