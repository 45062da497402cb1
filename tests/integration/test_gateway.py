"""The OpenAI-compatible gateway on the embedded stack, driven by the official `openai` SDK
(sync, async, streamed, errors as the SDK's exception types) and by raw httpx SSE: every
call ends in exactly one usage row of its key's tenant, whatever the body claims."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from decimal import Decimal

import httpx
import openai
import pytest

from pipeline.dev.gateway import issue_key, start_gateway
from pipeline.events.models import Budget, Cancel, Chunk, Response, TenantPolicy
from tests.integration.conftest import worker_stack

pytestmark = pytest.mark.integration

FAMILIES = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4.5",
            "gemini": "gemini-2.5-flash"}
PROMPT = [{"role": "user", "content": "Write two sentences about the sea."}]


@pytest.fixture(scope="module")
def gw(broker, tmp_path_factory):
    with worker_stack(broker, tmp_path_factory, "gw", seed=13) as stack:
        keys = {"acme": issue_key(stack, "acme"), "globex": issue_key(stack, "globex"),
                "broke": issue_key(stack, "broke", TenantPolicy(
                    tenant="broke", budgets=[Budget("day", hard_usd=Decimal("0"))])),
                "narrow": issue_key(stack, "narrow", TenantPolicy(
                    tenant="narrow", allowed_models=["gpt-4o-mini"]))}
        gateway = start_gateway(stack, "gw-1")
        yield stack, gateway, keys


def client(gw, tenant: str = "acme", **kw) -> openai.OpenAI:
    _, gateway, keys = gw
    return openai.OpenAI(base_url=gateway.base_url, api_key=keys[tenant], max_retries=0,
                         timeout=60, **kw)


def request_id(completion_id: str) -> str:
    assert completion_id.startswith("chatcmpl-")
    return completion_id[len("chatcmpl-"):]


def usage_of(gw, ids: list[str]) -> dict[str, dict]:
    stack = gw[0]
    counts = stack.workers[0].wait_for_usage(ids)
    assert all(counts.get(i) == 1 for i in ids), counts
    return {row["request_id"]: row for row in stack.workers[0].usage_rows(ids)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sync_sdk_plain_and_streamed_for_every_provider_family(gw, family):
    model = FAMILIES[family]
    sdk = client(gw)
    plain = sdk.chat.completions.create(model=model, messages=PROMPT, max_tokens=60)
    assert plain.choices[0].message.content and plain.choices[0].finish_reason
    assert plain.model == model and plain.usage.completion_tokens > 0

    pieces, ids, finish = [], set(), None
    for chunk in sdk.chat.completions.create(model=model, messages=PROMPT, max_tokens=60,
                                             stream=True):
        ids.add(chunk.id)
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert len(ids) == 1 and finish is not None and "".join(pieces)
    streamed_id = request_id(ids.pop())
    chunks = [c for c in gw[0].read_events(gw[0].topics.gateway_replies("gw-1")[1], Chunk)
              if c.request_id == streamed_id]
    assert chunks, "the provider's deltas travelled as Chunk events"
    assert "".join(pieces).startswith("".join(c.delta for c in sorted(chunks, key=lambda c: c.seq)))
    rows = usage_of(gw, [request_id(plain.id), streamed_id])
    streamed = [r for r in rows.values() if r["request_id"] != request_id(plain.id)][0]
    assert all(r["tenant"] == "acme" and r["status"] == "ok" for r in rows.values())
    assert streamed["ttft_ms"] is not None and streamed["ttft_ms"] >= 0


async def test_async_sdk_streams_with_usage_and_answers_concurrent_calls(gw):
    _, gateway, keys = gw
    sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=keys["acme"], max_retries=0,
                             timeout=60)

    async def one(i: int) -> tuple[str, str, object]:
        stream = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"Question {i}?"}],
            stream=True, stream_options={"include_usage": True})
        text, usage, cid = "", None, ""
        async for chunk in stream:
            cid = chunk.id
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        return cid, text, usage

    results = await asyncio.gather(*(one(i) for i in range(8)))
    for cid, text, usage in results:
        assert text and usage is not None and usage.completion_tokens > 0
    await sdk.close()
    ids = [request_id(cid) for cid, _, _ in results]
    assert len(set(ids)) == 8
    usage_of(gw, ids)


def test_the_tenant_comes_from_the_key_never_from_the_body(gw):
    sdk = client(gw, "globex")
    answer = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, extra_body={"tenant": "acme"})
    (row,) = usage_of(gw, [request_id(answer.id)]).values()
    assert row["tenant"] == "globex"


def test_errors_come_back_as_the_sdks_exception_types(gw):
    _, gateway, _ = gw
    bad_key = openai.OpenAI(base_url=gateway.base_url, api_key="sk-llmp-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    sdk = client(gw)
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.chat.completions.create(model="gpt-9-turbo", messages=PROMPT)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as invalid:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, temperature=5)
    assert "temperature" in invalid.value.message
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[])
    with pytest.raises(openai.BadRequestError) as unsupported:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, logit_bias={"1": 5})
    assert "logit_bias" in unsupported.value.message
    with pytest.raises(openai.APIStatusError) as budget:
        client(gw, "broke").chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                    stream=True)
    assert budget.value.status_code == 402 and budget.value.code == "budget_exceeded"


def test_models_are_listed_and_unknown_routes_answer_in_openai_shape(gw):
    sdk = client(gw)
    names = {m.id for m in sdk.models.list()}
    assert set(FAMILIES.values()) <= names
    assert sdk.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    _, gateway, keys = gw
    resp = httpx.get(f"{gateway.url}/v1/nothing", headers={"authorization": f"Bearer {keys['acme']}"})
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "invalid_request_error"
    health = httpx.get(f"{gateway.url}/healthz").json()
    assert health["status"] == "ok" and health["keys"] >= 4
    narrow = client(gw, "narrow")
    assert [m.id for m in narrow.models.list()] == ["gpt-4o-mini"]
    with pytest.raises(openai.NotFoundError):
        narrow.models.retrieve("gpt-4.1")


def test_an_oversize_body_is_refused_before_it_is_read_whole(gw):
    _, gateway, keys = gw
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 1_000_000}]}
    resp = httpx.post(f"{gateway.base_url}/chat/completions", json=big, timeout=30,
                      headers={"authorization": f"Bearer {keys['acme']}"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"


def test_raw_sse_stream(gw):
    _, gateway, keys = gw
    body = {"model": "gpt-4o-mini", "messages": PROMPT, "stream": True}
    events = []
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {keys['acme']}"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_two_gateway_replicas_each_read_only_their_own_replies(gw):
    stack, first, keys = gw
    second = start_gateway(stack, "gw-2")
    sdk1, sdk2 = client(gw), openai.OpenAI(base_url=second.base_url, api_key=keys["acme"],
                                           max_retries=0, timeout=60)
    a = [sdk1.chat.completions.create(model="gpt-4o-mini", messages=PROMPT) for _ in range(3)]
    b = [sdk2.chat.completions.create(model="gpt-4o-mini", messages=PROMPT) for _ in range(3)]
    ids_a, ids_b = {request_id(x.id) for x in a}, {request_id(x.id) for x in b}
    on_2 = {r.request_id for r in stack.read_events(
        stack.topics.gateway_replies("gw-2")[0], Response)}
    assert ids_b <= on_2 and not ids_a & on_2
    usage_of(gw, sorted(ids_a | ids_b))


def test_the_readme_snippet_works_as_written(gw, capsys):
    _, gateway, keys = gw
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Use it from the OpenAI SDK", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) == 5
    code = code.replace("http://127.0.0.1:PORT/v1", gateway.base_url)
    code = code.replace("sk-llmp-...", keys["acme"])
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_cancels_its_call_downstream(gw, stream):
    """The provider hangs until its caller leaves; the HTTP client gives up after 1.5 s.
    The gateway publishes a Cancel, dispatch stops the call at once (not at the 30 s call
    timeout) and the request ends cancelled, billed its prompt, with one usage row."""
    stack, gateway, keys = gw
    stack.set_faults({"gpt-4.1": {"kind": "hang", "rate": 1.0}})
    try:
        body = {"model": "gpt-4.1", "messages": PROMPT, "stream": stream}
        started, since_ms = time.monotonic(), int(time.time() * 1000)
        with pytest.raises(httpx.ReadTimeout):
            with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body,
                              timeout=httpx.Timeout(60, read=1.5),
                              headers={"authorization": f"Bearer {keys['acme']}"}) as resp:
                resp.read()
        deadline = time.monotonic() + 20
        cancels = []
        while not cancels and time.monotonic() < deadline:
            cancels = [c for c in stack.read_events(stack.topics.cancels, Cancel)
                       if c.at_ms >= since_ms and c.tenant == "acme"]
            time.sleep(0.2)
        assert cancels, "the gateway published a Cancel"
        rid = cancels[-1].request_id
        (row,) = usage_of(gw, [rid]).values()
        assert row["error_code"] == "cancelled" and row["tenant"] == "acme"
        assert float(row["cost_usd"]) > 0
        assert time.monotonic() - started < 20, "stopped well before the call timeout"
    finally:
        stack.clear_faults()
