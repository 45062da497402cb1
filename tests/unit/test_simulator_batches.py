"""The simulator's Batch APIs and the Batch API clients, against each other: OpenAI files +
batches and Anthropic message batches, item results with live usage, injected item
failures and expiries, failed and cancelled jobs."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import pytest

from pipeline import errors
from pipeline.batchapi.clients import AnthropicBatchClient, OpenAIBatchClient
from pipeline.batchapi.jobs import CANCELED, ERRORED, EXPIRED, SUCCEEDED
from pipeline.catalog import load_catalog
from pipeline.providers.deployments import load_deployments
from pipeline.events.models import ChatMessage, Request, RouteDecision, RoutedRequest
from pipeline.routing.tokens import estimate_prompt_tokens
from pipeline.secrets import Secret
from pipeline.simulator import load_config, start_simulator

KEY = "sk-batch-test-0123456789abcdef"
deployments = load_deployments(load_catalog(), env={})
LIMITS = deployments.calls


def routed(i: int, text: str = "Summarise the quarterly report.", max_tokens: int = 64) -> RoutedRequest:
    request = Request(request_id=f"r-{i}", tenant="acme",
                      messages=[ChatMessage("system", "Be brief."), ChatMessage("user", f"{text} #{i}")])
    route = RouteDecision(deployment="d", model="m", provider="p", rule="pinned")
    return RoutedRequest(request=request, route=route, max_tokens=max_tokens,
                         reply_topic="llm.responses", received_at_ms=0, routed_at_ms=0)


@pytest.fixture
async def sim():
    running = await start_simulator(load_config(latency_scale=0.001, base_errors=False))
    try:
        yield running
    finally:
        await running.stop()


def client(cls, dep_id: str, sim) -> OpenAIBatchClient | AnthropicBatchClient:
    dep = dataclasses.replace(deployments.by_id[dep_id], base_url=sim.base_url)
    return cls(dep, Secret(KEY), LIMITS, timeout_s=5.0)


async def configure(sim, **settings) -> dict:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        resp = await http.put("/_sim/batches", json=settings)
        assert resp.status_code == 200, resp.text
        return resp.json()


async def until_ended(c, job_id: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        status = await c.status(job_id)
        if status.ended or status.failed or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.02)


OPENAI, ANTHROPIC = (OpenAIBatchClient, "openai-gpt-4o-mini"), \
    (AnthropicBatchClient, "anthropic-claude-sonnet-4.5")


@pytest.mark.parametrize("kind", [OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
async def test_job_runs_after_the_delay_and_answers_every_item_with_live_usage(sim, kind):
    await configure(sim, completion_delay_s=0.3)
    c = client(*kind, sim)
    items = [routed(i) for i in range(3)]
    try:
        created = await c.create("job-1", items)
        first = await c.status(created.provider_job_id)
        assert not first.ended and first.raw in ("in_progress", "validating")
        status = await until_ended(c, created.provider_job_id)
        assert status.ended and (status.done, status.total) == (3, 3)
        results = await c.results(created.provider_job_id)
    finally:
        await c.aclose()
    assert sorted(results) == [0, 1, 2]
    for i, item in enumerate(items):
        r = results[i]
        assert r.kind == SUCCEEDED, r
        assert r.completion.prompt_tokens == estimate_prompt_tokens(m.content for m in item.request.messages)
        assert 0 < r.completion.completion_tokens <= 64 and r.completion.content
    if kind is OPENAI:
        assert created.input_file_id.startswith("file-")


@pytest.mark.parametrize("kind", [OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
async def test_failed_and_expired_items_are_told_apart_and_classified(sim, kind):
    await configure(sim, completion_delay_s=0, fail_custom_ids=["item-1"],
                    expire_custom_ids=["item-2"])
    c = client(*kind, sim)
    items = [routed(0), routed(1), routed(2), routed(3, max_tokens=10**6)]
    try:
        created = await c.create("job-2", items)
        status = await until_ended(c, created.provider_job_id)
        results = await c.results(created.provider_job_id)
    finally:
        await c.aclose()
    assert status.ended
    if kind is OPENAI:
        assert status.raw == "expired"       # OpenAI: a job with expired requests expired
    assert results[0].kind == SUCCEEDED
    assert (results[1].kind, results[1].code, results[1].retryable) == \
        (ERRORED, errors.PROVIDER_ERROR, True)
    assert results[2].kind == EXPIRED
    # max_tokens above the model's limit: the request itself is wrong, as it would be live
    assert (results[3].kind, results[3].code, results[3].retryable) == \
        (ERRORED, errors.INVALID_REQUEST, False)
    assert KEY not in results[3].message


async def test_openai_job_failing_validation_has_no_results(sim):
    await configure(sim, fail_jobs=True)
    c = client(*OPENAI, sim)
    try:
        created = await c.create("job-3", [routed(0)])
        status = await c.status(created.provider_job_id)
    finally:
        await c.aclose()
    assert status.failed and not status.ended and status.raw.startswith("failed")


@pytest.mark.parametrize("kind", [OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
async def test_cancelled_job_ends_with_its_items_cancelled(sim, kind):
    await configure(sim, completion_delay_s=60)
    c = client(*kind, sim)
    try:
        created = await c.create("job-4", [routed(0), routed(1)])
        await c.cancel(created.provider_job_id)
        status = await until_ended(c, created.provider_job_id)
        results = await c.results(created.provider_job_id)
    finally:
        await c.aclose()
    assert status.ended
    assert {r.kind for r in results.values()} == {CANCELED} and len(results) == 2


async def test_simulator_refuses_what_the_providers_refuse(sim):
    async with httpx.AsyncClient(base_url=sim.url) as http:
        auth = {"Authorization": f"Bearer {KEY}"}
        assert (await http.post("/v1/files", files={"file": ("a.jsonl", b"{}")},
                                data={"purpose": "batch"})).status_code == 401
        wrong = await http.post("/v1/files", headers=auth, files={"file": ("a.jsonl", b"{}")},
                                data={"purpose": "fine-tune"})
        assert wrong.status_code == 400 and "purpose" in wrong.text
        bad_window = await http.post("/v1/batches", headers=auth, json={
            "input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "1h"})
        assert bad_window.status_code == 400
        missing = await http.get("/v1/batches/batch_nope", headers=auth)
        assert missing.status_code == 404
        anth = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        dup = await http.post("/v1/messages/batches", headers=anth, json={"requests": [
            {"custom_id": "a", "params": {}}, {"custom_id": "a", "params": {}}]})
        assert dup.status_code == 400 and "duplicate" in dup.text
        bad_id = await http.post("/v1/messages/batches", headers=anth, json={"requests": [
            {"custom_id": "has space", "params": {}}]})
        assert bad_id.status_code == 400
        assert (await http.put("/_sim/batches", json={"completion_delay_s": -1})).status_code == 400
        assert (await http.put("/_sim/batches", json={"nope": 1})).status_code == 400


async def test_anthropic_results_are_refused_before_the_job_ends(sim):
    await configure(sim, completion_delay_s=60)
    c = client(*ANTHROPIC, sim)
    try:
        created = await c.create("job-5", [routed(0)])
        with pytest.raises(errors.GatewayError) as failure:
            await c.results(created.provider_job_id)
    finally:
        await c.aclose()
    assert failure.value.code == errors.INVALID_REQUEST
