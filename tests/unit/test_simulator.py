"""The provider simulator as a client sees it: OpenAI shapes, usage, determinism, faults,
stats, streaming and latency, served in-process on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pipeline.config import ConfigError
from pipeline.routing.tokens import estimate_prompt_tokens, estimate_text_tokens
from pipeline.simulator import (LATENCY_HEADER, FaultKind, FaultSpec, RunningSimulator,
                                SimulatorConfig, key_fingerprint, load_config,
                                parse_fault_flag, start_simulator)
from pipeline.simulator.profiles import lognormal_fit

KEY = "sk-sim-test-0123456789abcdef"
OTHER_KEY = "sk-sim-other-fedcba9876543210"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parents[2]


def fast(**options) -> SimulatorConfig:
    """The packaged profiles with near-zero latency and no background 500s."""
    return load_config(**{"latency_scale": 0.001, "base_errors": False, **options})


def chat(model: str = "gpt-4.1", content: str = "How do I cut my LLM bill?", **extra) -> dict:
    return {"model": model, "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": content}], **extra}


@contextlib.asynccontextmanager
async def serving(config: SimulatorConfig, timeout: float = 5.0
                  ) -> AsyncIterator[tuple[RunningSimulator, httpx.AsyncClient]]:
    running = await start_simulator(config)
    try:
        async with httpx.AsyncClient(base_url=running.url, headers=AUTH, timeout=timeout) as client:
            yield running, client
    finally:
        await asyncio.wait_for(running.stop(), 5)


async def complete(client: httpx.AsyncClient, body: dict | None = None, **kw) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=body or chat(), **kw)


# ------------------------------------------------------------------ profiles

def test_profiles_carry_the_measured_figures():
    config = load_config()
    gpt = config.profile("gpt-4.1")
    assert (gpt.mean_ms, gpt.p99_ms, gpt.ttft_ms, gpt.tokens_per_s, gpt.error_rate) == (
        680, 1250, 320, 45, 0.003)
    assert gpt.context_window == 1047576
    assert config.profile("claude-sonnet-4.5").context_window == 200000
    assert config.profile("deepseek-v3.2").p99_ms == 350
    # the provider-side names deployments.yaml sends answer like their profile
    assert config.profile("deepseek-chat") is config.profile("deepseek-v3.2")
    assert config.profile("claude-sonnet-4-5") is config.profile("claude-sonnet-4.5")
    assert config.profile("gpt-5") is None


def test_latency_lognormal_has_the_profile_mean_and_p99():
    z99 = statistics.NormalDist().inv_cdf(0.99)
    for profile in load_config().profiles.values():
        mu, sigma = profile.lognormal()
        assert math.exp(mu + sigma ** 2 / 2) == pytest.approx(profile.mean_ms, rel=1e-9)
        assert math.exp(mu + z99 * sigma) == pytest.approx(profile.p99_ms, rel=1e-9)
    with pytest.raises(ValueError):
        lognormal_fit(100, 90)


def test_config_errors_name_file_key_and_expectation(tmp_path):
    packaged = (REPO / "pipeline" / "config" / "simulator.yaml").read_text()
    bad = tmp_path / "simulator.yaml"
    bad.write_text(packaged.replace("p99_ms: 1250", "p99_ms: slow"))
    with pytest.raises(ConfigError, match=r"simulator\.yaml: models\.gpt-4\.1\.p99_ms: expected a number"):
        load_config(bad)
    bad.write_text(packaged.replace("faults: {}", "faults: {gpt-4.1: {kind: explode}}"))
    with pytest.raises(ConfigError, match=r"faults\.gpt-4\.1\.kind: expected one of"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"--fault"):
        parse_fault_flag("gpt-4.1", {"gpt-4.1"})


def test_fault_flags_parse_kind_rate_and_settings():
    known = set(load_config().model_names())
    assert parse_fault_flag("gpt-4.1=rate_limit:0.5:retry_after_s=2", known) == (
        "gpt-4.1", FaultSpec(FaultKind.RATE_LIMIT, rate=0.5, retry_after_s=2.0))
    assert parse_fault_flag("*=hang", known) == ("*", FaultSpec(FaultKind.HANG))
    with pytest.raises(ConfigError, match="one of the models"):
        parse_fault_flag("gpt-9=hang", known)


# --------------------------------------------------------- chat completions

@pytest.mark.asyncio
async def test_completion_has_openai_shape_and_usage():
    async with serving(fast()) as (_, client):
        resp = await complete(client, chat(content="Explain circuit breakers in one paragraph."))
    assert resp.status_code == 200
    assert int(resp.headers[LATENCY_HEADER]) >= 0
    data = resp.json()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-") and data["model"] == "gpt-4.1"
    assert isinstance(data["created"], int)
    choice = data["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] == estimate_prompt_tokens(
        ["Be brief.", "Explain circuit breakers in one paragraph."])
    assert 20 <= usage["completion_tokens"] <= 600
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    # the text is about as long as the tokens it claims (~4 characters per token)
    assert 0.5 < len(choice["message"]["content"]) / (4 * usage["completion_tokens"]) < 1.5


@pytest.mark.asyncio
async def test_chinese_prompts_are_counted_by_the_calibrated_estimate_and_get_chinese_answers():
    question = "请详细解释一下如何降低大模型调用的成本" * 5      # 95 CJK characters
    english = "x" * len(question)
    async with serving(fast()) as (_, client):
        zh = (await complete(client, chat(content=question))).json()
        en = (await complete(client, chat(content=english))).json()
    assert zh["usage"]["prompt_tokens"] - en["usage"]["prompt_tokens"] == \
        estimate_text_tokens(question) - estimate_text_tokens(english)
    text = zh["choices"][0]["message"]["content"]
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in text) > len(text) / 2


@pytest.mark.asyncio
async def test_same_seed_same_answers_and_latencies():
    async def run(seed: int) -> list:
        seen = []
        async with serving(fast(seed=seed)) as (_, client):
            for model in ["gpt-4.1", "deepseek-v3.2", "gpt-4.1", "gemini-2.5-flash", "gpt-4.1"]:
                resp = await complete(client, chat(model=model))
                data = resp.json()
                seen.append((data["id"], data["choices"][0]["message"]["content"], data["usage"],
                             resp.headers["x-sim-drawn-latency-ms"]))
        return seen

    first, again, other = await run(7), await run(7), await run(8)
    assert first == again
    assert first != other
    assert len({content for _, content, _, _ in first}) == len(first)   # calls differ


@pytest.mark.asyncio
async def test_max_tokens_caps_completion_with_finish_reason_length():
    async with serving(fast()) as (_, client):
        capped = [(await complete(client, chat(max_tokens=5))).json() for _ in range(10)]
        newer = (await complete(client, chat(max_completion_tokens=7))).json()
        roomy = [(await complete(client, chat(max_tokens=1000))).json() for _ in range(10)]
    for data in capped:
        assert data["usage"]["completion_tokens"] == 5          # every draw is >= 20
        assert data["choices"][0]["finish_reason"] == "length"
    assert newer["usage"]["completion_tokens"] == 7
    for data in roomy:
        assert data["usage"]["completion_tokens"] <= 600
        assert data["choices"][0]["finish_reason"] == "stop"


@pytest.mark.asyncio
async def test_requests_refused_like_openai():
    long_prompt = "word " * 130_000                              # 125,000 tokens
    async with serving(fast()) as (_, client):
        no_key = await client.post("/v1/chat/completions", json=chat(),
                                   headers={"Authorization": ""})
        unknown = await complete(client, chat(model="gpt-9"))
        too_long = await complete(client, chat(model="deepseek-v3.2", content=long_prompt,
                                               max_tokens=8000))
        too_many = await complete(client, chat(model="deepseek-v3.2", max_tokens=9000))
        not_json = await client.post("/v1/chat/completions", content=b"{nope")
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "invalid_api_key"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert "gpt-9" in unknown.json()["error"]["message"]
    assert too_long.status_code == 400
    error = too_long.json()["error"]
    assert error["code"] == "context_length_exceeded"
    prompt = estimate_prompt_tokens(["Be brief.", long_prompt])
    assert error["message"].startswith(
        f"This model's maximum context length is 128000 tokens. However, you requested "
        f"{prompt + 8000} tokens ({prompt} in the messages, 8000 in the completion).")
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_tokens"
    assert not_json.status_code == 400


@pytest.mark.asyncio
async def test_models_and_health():
    async with serving(fast()) as (_, client):
        models = (await client.get("/v1/models")).json()
        health = await client.get("/healthz", headers={"Authorization": ""})
    assert models["object"] == "list"
    assert {"gpt-4.1", "deepseek-chat", "gpt-4o-mini"} <= {m["id"] for m in models["data"]}
    assert health.status_code == 200 and health.json()["status"] == "ok"


@pytest.mark.asyncio
async def test_repeated_long_prefix_is_reported_as_cached():
    history = [{"role": "system", "content": "policy " * 1200},   # ~1,800 tokens
               {"role": "user", "content": "first question"}]
    async with serving(fast()) as (_, client):
        first = (await complete(client, {"model": "gpt-4o", "messages": history})).json()
        follow_up = history + [{"role": "assistant", "content": "an answer"},
                               {"role": "user", "content": "and then?"}]
        second = (await complete(client, {"model": "gpt-4o", "messages": follow_up})).json()
        other_key = (await complete(client, {"model": "gpt-4o", "messages": follow_up},
                                    headers={"Authorization": f"Bearer {OTHER_KEY}"})).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 1024 and cached % 128 == 0
    assert cached <= first["usage"]["prompt_tokens"]
    assert other_key["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


# -------------------------------------------------------------------- faults

@pytest.mark.asyncio
async def test_rate_limit_fault_answers_429_with_retry_after():
    config = fast(faults={"gpt-4.1": FaultSpec(FaultKind.RATE_LIMIT, retry_after_s=2)})
    async with serving(config) as (_, client):
        limited = await complete(client)
        other = await complete(client, chat(model="gpt-4o"))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert other.status_code == 200


@pytest.mark.asyncio
async def test_server_error_fault_uses_the_configured_status():
    config = fast(faults={"gpt-4.1": FaultSpec(FaultKind.SERVER_ERROR),
                          "gpt-4o": FaultSpec(FaultKind.SERVER_ERROR, status=502)})
    async with serving(config) as (_, client):
        default = await complete(client)
        bad_gateway = await complete(client, chat(model="gpt-4o"))
    assert default.status_code == 503 and default.json()["error"]["type"] == "server_error"
    assert bad_gateway.status_code == 502


@pytest.mark.asyncio
async def test_malformed_fault_returns_a_body_that_is_not_json():
    config = fast(faults={"gpt-4.1": FaultSpec(FaultKind.MALFORMED)})
    async with serving(config) as (_, client):
        resp = await complete(client)
    assert resp.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.text)


@pytest.mark.asyncio
async def test_hang_fault_times_out_a_client_and_is_seen_as_client_closed():
    config = fast(faults={"gpt-4.1": FaultSpec(FaultKind.HANG)})
    async with serving(config, timeout=0.3) as (_, client):
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await complete(client)
        assert time.monotonic() - started < 2
        # once the client has gone the simulator records the call as client-closed (499)
        deadline = time.monotonic() + 3
        while True:
            stats = (await client.get("/_sim/stats")).json()
            if stats["models"]["gpt-4.1"]["by_status"].get("499") == 1:
                break
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_bounded_hang_then_normal_answer():
    config = fast(faults={"gpt-4.1": FaultSpec(FaultKind.HANG, hang_s=0.2)})
    async with serving(config) as (_, client):
        started = time.monotonic()
        resp = await complete(client)
    assert resp.status_code == 200
    assert time.monotonic() - started >= 0.2
    assert int(resp.headers[LATENCY_HEADER]) >= 200


@pytest.mark.asyncio
async def test_stop_does_not_wait_for_hanging_calls():
    running = await start_simulator(fast(faults={"*": FaultSpec(FaultKind.HANG)}))
    async with httpx.AsyncClient(base_url=running.url, headers=AUTH, timeout=5) as client:
        pending = asyncio.create_task(complete(client))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await asyncio.wait_for(running.stop(), 5)
        assert time.monotonic() - started < 1.5
        with contextlib.suppress(httpx.HTTPError):
            await asyncio.wait_for(pending, 5)


@pytest.mark.asyncio
async def test_context_length_and_unauthorized_faults():
    config = fast(faults={"gpt-4.1": FaultSpec(FaultKind.CONTEXT_LENGTH),
                          "gpt-4o": FaultSpec(FaultKind.UNAUTHORIZED)})
    async with serving(config) as (_, client):
        too_long = await complete(client, chat(max_tokens=100))
        refused = await complete(client, chat(model="gpt-4o"))
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    assert too_long.json()["error"]["message"].startswith(
        "This model's maximum context length is 1047576 tokens. However, you requested")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert KEY not in refused.text


@pytest.mark.asyncio
async def test_wildcard_fault_hits_every_model_unless_a_model_has_its_own():
    config = fast(faults={"*": FaultSpec(FaultKind.SERVER_ERROR, status=500),
                          "gpt-4o-mini": FaultSpec(FaultKind.RATE_LIMIT)})
    async with serving(config) as (_, client):
        statuses = {m: (await complete(client, chat(model=m))).status_code
                    for m in ["gpt-4.1", "deepseek-chat", "gpt-4o-mini"]}
    assert statuses == {"gpt-4.1": 500, "deepseek-chat": 500, "gpt-4o-mini": 429}


@pytest.mark.asyncio
async def test_fault_rate_is_a_per_call_probability():
    config = fast(latency_scale=0.0001,
                  faults={"gpt-4o-mini": FaultSpec(FaultKind.SERVER_ERROR, rate=0.5)})
    async with serving(config) as (_, client):
        statuses = [(await complete(client, chat(model="gpt-4o-mini"))).status_code
                    for _ in range(200)]
    failures = statuses.count(503)
    assert failures + statuses.count(200) == 200
    assert 70 <= failures <= 130


@pytest.mark.asyncio
async def test_base_errors_follow_the_profile_error_rate_and_can_be_switched_off():
    config = fast(base_errors=True)
    noisy = dataclasses.replace(config.profiles["gpt-4o"], error_rate=0.4)
    config = dataclasses.replace(config, profiles={**config.profiles, "gpt-4o": noisy})
    async with serving(config) as (_, client):
        on = [(await complete(client, chat(model="gpt-4o"))).status_code for _ in range(100)]
    async with serving(dataclasses.replace(config, base_errors=False)) as (_, client):
        off = [(await complete(client, chat(model="gpt-4o"))).status_code for _ in range(50)]
    assert 25 <= on.count(500) <= 55 and on.count(500) + on.count(200) == 100
    assert off.count(200) == 50


@pytest.mark.asyncio
async def test_faults_change_at_runtime():
    async with serving(fast()) as (_, client):
        assert (await client.get("/_sim/faults")).json() == {}
        put = await client.put("/_sim/faults", json={
            "gpt-4.1": {"kind": "rate_limit", "rate": 1.0, "retry_after_s": 3}})
        assert put.status_code == 200
        assert (await client.get("/_sim/faults")).json() == {
            "gpt-4.1": {"kind": "rate_limit", "rate": 1.0, "retry_after_s": 3.0}}
        limited = await complete(client)
        # PUT replaces the whole set
        await client.put("/_sim/faults", json={"gpt-4o": {"kind": "malformed"}})
        after_replace = await complete(client)
        bad = await client.put("/_sim/faults", json={"gpt-4.1": {"kind": "hang", "rate": 2}})
        assert (await client.delete("/_sim/faults")).json() == {}
        healed = await complete(client, chat(model="gpt-4o"))
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    assert after_replace.status_code == 200
    assert bad.status_code == 400 and "gpt-4.1.rate" in bad.json()["error"]
    assert healed.status_code == 200 and healed.json()["object"] == "chat.completion"


# --------------------------------------------------------------------- stats

@pytest.mark.asyncio
async def test_stats_count_calls_per_model_status_and_key_fingerprint():
    config = fast(faults={"gpt-4o": FaultSpec(FaultKind.RATE_LIMIT)})
    async with serving(config) as (_, client):
        for _ in range(3):
            await complete(client)
        for _ in range(2):
            await complete(client, headers={"Authorization": f"Bearer {OTHER_KEY}"})
        await complete(client, chat(model="gpt-4o"))
        await complete(client, chat(model="gpt-9"))
        raw = (await client.get("/_sim/stats")).text
        await client.post("/_sim/reset")
        after_reset = (await client.get("/_sim/stats")).json()
    assert KEY not in raw and OTHER_KEY not in raw
    stats = json.loads(raw)["models"]
    fingerprint, other = key_fingerprint(KEY), key_fingerprint(OTHER_KEY)
    assert hashlib.sha256(KEY.encode()).hexdigest().startswith(fingerprint)
    assert stats["gpt-4.1"]["calls"] == 5
    assert stats["gpt-4.1"]["by_status"] == {"200": 5}
    assert stats["gpt-4.1"]["keys"][fingerprint]["calls"] == 3
    assert stats["gpt-4.1"]["keys"][other]["calls"] == 2
    times = stats["gpt-4.1"]["keys"][fingerprint]["call_times_ms"]
    assert len(times) == 3 and times == sorted(times)
    assert stats["gpt-4o"]["by_status"] == {"429": 1}
    assert stats["gpt-9"]["by_status"] == {"404": 1}
    assert after_reset["models"] == {}


@pytest.mark.asyncio
async def test_reset_replays_the_seeded_sequence():
    async with serving(fast()) as (_, client):
        first = (await complete(client)).json()["choices"][0]["message"]["content"]
        await client.post("/_sim/reset")
        replay = (await complete(client)).json()["choices"][0]["message"]["content"]
    assert replay == first


# ----------------------------------------------------------------- streaming

async def read_stream(client: httpx.AsyncClient, body: dict) -> tuple[httpx.Response, list]:
    events = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                payload = line[len("data: "):]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return resp, events


@pytest.mark.asyncio
async def test_stream_sends_sse_chunks_and_usage_matching_the_plain_answer():
    body = chat(model="deepseek-chat", max_tokens=300)
    async with serving(fast()) as (_, client):
        plain = (await complete(client, body)).json()
    async with serving(fast()) as (_, client):
        resp, events = await read_stream(
            client, {**body, "stream": True, "stream_options": {"include_usage": True}})
        _, bare = await read_stream(client, {**body, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]        # same call, same answer
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert not any("usage" in c for c in bare if c != "[DONE]")


@pytest.mark.asyncio
async def test_stream_waits_for_the_first_token():
    config = fast(latency_scale=1.0, fixed_latency_ms=400)
    async with serving(config) as (_, client):
        started = time.monotonic()
        async with client.stream("POST", "/v1/chat/completions",
                                 json=chat(model="gpt-4.1", stream=True)) as resp:
            async for _ in resp.aiter_lines():
                first_chunk_s = time.monotonic() - started
                break
    # TTFT is 320/680 of the 400 ms total: ~188 ms; only a lower bound is asserted
    assert first_chunk_s >= 0.15


# ------------------------------------------------------------------- latency

@pytest.mark.asyncio
async def test_sampled_latency_matches_the_profile():
    config = load_config(latency_scale=0.01, base_errors=False)
    profile = config.profile("gemini-2.5-flash")
    async with serving(config) as (_, client):
        responses = [await complete(client, chat(model="gemini-2.5-flash", max_tokens=20))
                     for _ in range(300)]
    drawn = [int(r.headers["x-sim-drawn-latency-ms"]) for r in responses]
    slept = [int(r.headers[LATENCY_HEADER]) for r in responses]
    assert statistics.fmean(drawn) == pytest.approx(profile.mean_ms, rel=0.1)
    p99 = statistics.quantiles(drawn, n=100)[98]
    assert 0.7 * profile.p99_ms < p99 < 1.3 * profile.p99_ms
    assert all(abs(s - d * 0.01) <= 1 for s, d in zip(slept, drawn))


@pytest.mark.asyncio
async def test_fixed_latency_overrides_sampling():
    async with serving(fast(fixed_latency_ms=5)) as (_, client):
        headers = {(await complete(client, chat(model=m))).headers[LATENCY_HEADER]
                   for m in ["gpt-4.1", "claude-sonnet-4.5", "gpt-4.1"]}
    assert headers == {"5"}


# ----------------------------------------------------------------------- CLI

def test_cli_prints_its_url_serves_and_exits_cleanly_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.simulator", "--latency-scale", "0.001",
         "--fault", "gpt-4o=rate_limit:1.0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()          # the first line, flushed on start
        assert line.startswith("simulator listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        with httpx.Client(base_url=url, headers=AUTH, timeout=5) as client:
            assert client.get("/healthz").status_code == 200
            assert client.post("/v1/chat/completions", json=chat(model="gpt-4o")).status_code == 429
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
