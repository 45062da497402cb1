"""The simulator's OpenAI shape as the official SDK and a raw client see it: keys checked,
fields type-checked, stop/n/seed/logprobs honoured, JSON mode and JSON schema, tools
(forced, auto, round trip, streamed), images, the model lookup and JSON route errors."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field

from pipeline.routing.tokens import estimate_prompt_tokens
from pipeline.simulator.__main__ import build_parser, config_from_args
from pipeline.simulator.chat import OPENAI_IMAGE_TOKENS, OPENAI_LOW_DETAIL_IMAGE_TOKENS
from tests.unit.test_simulator import KEY, OTHER_KEY, chat, complete, fast, read_stream, serving

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}},
    "strict": True}}
CLOCK = {"type": "function", "function": {
    "name": "current_time", "parameters": {"type": "object", "properties": {
        "timezone": {"type": "string"}}, "required": ["timezone"]}}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


class Weather(BaseModel):
    city: str
    unit: str = Field(pattern="^(celsius|fahrenheit)$")


def sdk(running) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=running.base_url, api_key=KEY, max_retries=0)


def user(content, **extra) -> dict:
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": content}], **extra}


# ------------------------------------------------------------------------------ keys

@pytest.mark.asyncio
async def test_only_configured_keys_are_answered():
    async with serving(fast(api_keys={KEY})) as (_, client):
        good = await complete(client)
        wrong = await complete(client, headers={"Authorization": f"Bearer {OTHER_KEY}"})
        models = await client.get("/v1/models", headers={"Authorization": f"Bearer {OTHER_KEY}"})
        embed = await client.post("/v1/embeddings", json={"model": "text-embedding-3-small",
                                                          "input": "hi"},
                                  headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert good.status_code == 200
    for refused in (wrong, models, embed):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert OTHER_KEY not in refused.text


@pytest.mark.asyncio
async def test_without_a_key_list_any_non_empty_key_is_answered():
    async with serving(fast()) as (_, client):
        some = await complete(client, headers={"Authorization": "Bearer anything-at-all"})
        none = await complete(client, headers={"Authorization": ""})
    assert some.status_code == 200 and none.status_code == 401


def test_keys_come_from_the_flag_and_the_environment(monkeypatch):
    monkeypatch.setenv("LLMPIPE_SIM_KEYS", "sk-env-1, sk-env-2")
    config = config_from_args(build_parser().parse_args(["--key", "sk-flag"]))
    assert config.api_keys == {"sk-flag", "sk-env-1", "sk-env-2"}
    monkeypatch.delenv("LLMPIPE_SIM_KEYS")
    assert config_from_args(build_parser().parse_args([])).api_keys == frozenset()


# ----------------------------------------------------------------------------- types

@pytest.mark.asyncio
@pytest.mark.parametrize("extra, param", [
    ({"n": "two"}, "n"), ({"stop": 42}, "stop"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"temperature": "hot"}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
    ({"seed": 1.5}, "seed"), ({"top_logprobs": 3}, "top_logprobs"),
    ({"reponse_format": {"type": "json_object"}}, "reponse_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     "tools[0].function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
])
async def test_wrong_types_are_refused_naming_the_parameter(extra, param):
    async with serving(fast()) as (_, client):
        resp = await complete(client, chat(**extra))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.asyncio
async def test_malformed_messages_are_refused():
    bodies = [
        {"model": "gpt-4.1", "messages": "hello"},
        {"model": "gpt-4.1", "messages": [{"role": "wizard", "content": "hi"}]},
        user([{"type": "video", "video": "x"}]),
        user(None),
        {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"},
                                          {"role": "tool", "tool_call_id": "call_1",
                                           "content": "21C"}]},
    ]
    async with serving(fast()) as (_, client):
        statuses = [(await complete(client, body)).status_code for body in bodies]
    assert statuses == [400] * len(bodies)


# ------------------------------------------------------------------ stop, n, seed

@pytest.mark.asyncio
async def test_stop_ends_the_text_before_the_first_stop_sequence():
    async with serving(fast()) as (_, client):
        plain = (await complete(client, chat(max_tokens=400))).json()
    text = plain["choices"][0]["message"]["content"]
    word = text.split()[3]
    async with serving(fast()) as (_, client):      # the same call again, with a stop
        stopped = (await complete(client, chat(max_tokens=400, stop=[word, "zzz"]))).json()
    choice = stopped["choices"][0]
    assert choice["message"]["content"] == text[:text.index(word)]
    assert choice["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] < plain["usage"]["completion_tokens"]


@pytest.mark.asyncio
async def test_n_choices_are_all_counted_in_usage():
    async with serving(fast()) as (_, client):
        single = (await complete(client, chat())).json()
    async with serving(fast()) as (running, client):      # the same call, with n=3
        data = (await complete(client, chat(n=3))).json()
        reply = await sdk(running).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], n=2)
        refused = await complete(client, chat(model="deepseek-chat", n=2))
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in data["choices"]}) == 3
    assert data["choices"][0] == single["choices"][0]
    usage = data["usage"]
    assert usage["completion_tokens"] > single["usage"]["completion_tokens"] + 2 * 19
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert len(reply.choices) == 2
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"


@pytest.mark.asyncio
async def test_n_streams_every_choice_by_index():
    async with serving(fast()) as (_, client):
        _, events = await read_stream(client, chat(n=2, stream=True))
    texts = {0: "", 1: ""}
    finishes = {}
    for event in events[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert texts[0] and texts[1] and texts[0] != texts[1]
    assert set(finishes) == {0, 1}


@pytest.mark.asyncio
async def test_seed_at_temperature_zero_repeats_the_answer_streamed_or_not():
    body = chat(temperature=0, seed=42)
    async with serving(fast()) as (_, client):
        first = (await complete(client, body)).json()
        again = (await complete(client, body)).json()
        other_seed = (await complete(client, chat(temperature=0, seed=43))).json()
        warm = (await complete(client, chat(temperature=0.7, seed=42))).json()
        warm_again = (await complete(client, chat(temperature=0.7, seed=42))).json()
        _, events = await read_stream(client, {**body, "stream": True})
    text = first["choices"][0]["message"]["content"]
    assert again["choices"][0]["message"]["content"] == text
    assert first["usage"] == again["usage"]
    assert other_seed["choices"][0]["message"]["content"] != text
    assert warm["choices"][0]["message"]["content"] != warm_again["choices"][0]["message"]["content"]
    streamed = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in events[:-1] if c["choices"])
    assert streamed == text


@pytest.mark.asyncio
async def test_a_seeded_answer_with_a_stop_is_a_prefix_of_the_one_without():
    body = chat(temperature=0, seed=3, max_tokens=80)
    async with serving(fast()) as (_, client):
        text = (await complete(client, body)).json()["choices"][0]["message"]["content"]
        stop = text.split()[2]
        cut = (await complete(client, {**body, "stop": [stop], "n": 2})).json()["choices"][0]
    assert cut["message"]["content"] == text[:text.index(stop)]
    assert cut["finish_reason"] == "stop"


@pytest.mark.asyncio
async def test_logprobs_cover_every_token_streamed_or_not():
    async with serving(fast()) as (running, client):
        reply = await sdk(running).chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], logprobs=True,
            top_logprobs=3, max_tokens=30)
        _, events = await read_stream(client, chat(logprobs=True, stream=True, max_tokens=30))
        refused = await complete(client, chat(model="claude-sonnet-4-5", logprobs=True))
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in content)
    assert all(t.top_logprobs[0].token == t.token for t in content)
    pieces = [c["choices"][0] for c in events[:-1] if c["choices"] and
              c["choices"][0]["delta"].get("content")]
    assert all(p["logprobs"]["content"][0]["token"] == p["delta"]["content"] for p in pieces)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "logprobs"


# ------------------------------------------------------------------- structured output

@pytest.mark.asyncio
async def test_json_object_answers_json_and_needs_the_word_json():
    async with serving(fast()) as (_, client):
        ok = await complete(client, user("Answer in JSON: what is 2+2?",
                                         response_format={"type": "json_object"}))
        refused = await complete(client, user("what is 2+2?",
                                              response_format={"type": "json_object"}))
    assert isinstance(json.loads(ok.json()["choices"][0]["message"]["content"]), dict)
    assert refused.status_code == 400 and "json" in refused.json()["error"]["message"]


class Step(BaseModel):
    explanation: str
    output: str


class MathReasoning(BaseModel):
    steps: list[Step]
    final_answer: str
    confidence: float | None


@pytest.mark.asyncio
async def test_sdk_parse_with_a_pydantic_model():
    async with serving(fast()) as (running, client):
        client_sdk = sdk(running)
        for _ in range(5):
            reply = await client_sdk.beta.chat.completions.parse(
                model="gpt-4o-mini", response_format=MathReasoning,
                messages=[{"role": "system", "content": "You are a maths tutor."},
                          {"role": "user", "content": "Solve 8x + 7 = -23"}])
            parsed = reply.choices[0].message.parsed
            assert isinstance(parsed, MathReasoning) and parsed.steps
        loose = await complete(client, user("hi", response_format={
            "type": "json_schema", "json_schema": {"name": "loose", "strict": True,
                                                   "schema": {"type": "object", "properties": {
                                                       "a": {"type": "string"}}}}}))
        no_schema_model = await complete(client, chat(model="deepseek-chat", response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}))
    assert loose.status_code == 400 and "additionalProperties" in loose.json()["error"]["message"]
    assert no_schema_model.status_code == 400
    assert no_schema_model.json()["error"]["param"] == "response_format"


# ----------------------------------------------------------------------------- tools

@pytest.mark.asyncio
async def test_forced_and_required_tool_choice_call_with_valid_arguments():
    async with serving(fast()) as (_, client):
        forced = (await complete(client, user("How do I cut my LLM bill?", tools=[WEATHER, CLOCK],
                                              tool_choice={"type": "function",
                                                           "function": {"name": "get_weather"}}))).json()
        required = (await complete(client, user("Hello", tools=[CLOCK, WEATHER],
                                                tool_choice="required"))).json()
        none = (await complete(client, user("weather in Paris?", tools=[WEATHER],
                                            tool_choice="none"))).json()
    choice = forced["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    Weather.model_validate_json(call["function"]["arguments"])
    assert required["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "current_time"
    assert none["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in none["choices"][0]["message"]


@pytest.mark.asyncio
async def test_auto_calls_a_tool_only_when_it_clearly_fits():
    async with serving(fast()) as (_, client):
        fits = (await complete(client, user("What's the weather in Paris?",
                                            tools=[WEATHER, CLOCK]))).json()
        both = (await complete(client, user("Weather and current time in Tokyo?",
                                            tools=[WEATHER, CLOCK]))).json()
        one = (await complete(client, user("Weather and current time in Tokyo?",
                                           tools=[WEATHER, CLOCK],
                                           parallel_tool_calls=False))).json()
        unrelated = (await complete(client, user("Tell me a joke", tools=[WEATHER]))).json()
    assert [c["function"]["name"] for c in fits["choices"][0]["message"]["tool_calls"]] == [
        "get_weather"]
    assert len(both["choices"][0]["message"]["tool_calls"]) == 2
    assert len(one["choices"][0]["message"]["tool_calls"]) == 1
    assert unrelated["choices"][0]["finish_reason"] == "stop"
    assert unrelated["choices"][0]["message"]["content"]


@pytest.mark.asyncio
async def test_tool_round_trip_answers_with_the_result():
    async with serving(fast()) as (running, client):
        client_sdk = sdk(running)
        messages = [{"role": "user", "content": "What's the weather in Paris?"}]
        first = await client_sdk.chat.completions.create(model="gpt-4.1", messages=messages,
                                                         tools=[WEATHER])
        call = first.choices[0].message.tool_calls[0]
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id,
                      "content": json.dumps({"temperature": 21, "sky": "clear"})}]
        second = await client_sdk.chat.completions.create(model="gpt-4.1", messages=messages,
                                                          tools=[WEATHER])
        unanswered = await complete(client, {"model": "gpt-4.1", "messages": messages[:2] + [
            {"role": "user", "content": "and?"}]})
    answer = second.choices[0].message.content
    assert second.choices[0].finish_reason == "stop"
    assert answer.startswith('The get_weather tool returned: {"temperature": 21, "sky": "clear"}')
    assert unanswered.status_code == 400 and call.id in unanswered.json()["error"]["message"]


@pytest.mark.asyncio
async def test_streamed_tool_call_deltas_reassemble_into_valid_arguments():
    async with serving(fast()) as (running, client):
        stream = await sdk(running).chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "weather in Lyon please"}],
            tools=[WEATHER, CLOCK], tool_choice="required", stream=True)
        deltas, finish = [], None
        async for chunk in stream:
            for choice in chunk.choices:
                deltas += choice.delta.tool_calls or []
                finish = choice.finish_reason or finish
        _, raw = await read_stream(client, user("weather in Lyon please", tools=[WEATHER],
                                                stream=True))
    first = deltas[0]
    assert first.id.startswith("call_") and first.function.name == "get_weather"
    assert first.function.arguments == ""
    fragments = [d.function.arguments for d in deltas[1:]]
    assert len(fragments) > 2 and all(d.id is None for d in deltas[1:])
    Weather.model_validate_json("".join(fragments))
    assert finish == "tool_calls"
    assert raw[-1] == "[DONE]"


# ---------------------------------------------------------------------------- images

@pytest.mark.asyncio
async def test_images_count_fixed_tokens_and_need_a_vision_model():
    text = "What is in this picture?"
    low = {"type": "image_url", "image_url": {"url": "https://example.com/a.png",
                                              "detail": "low"}}
    async with serving(fast()) as (_, client):
        seen = (await complete(client, user([{"type": "text", "text": text}, IMAGE]))).json()
        cheap = (await complete(client, user([{"type": "text", "text": text}, low]))).json()
        blind = await complete(client, {"model": "deepseek-chat", "messages": [
            {"role": "user", "content": [{"type": "text", "text": text}, IMAGE]}]})
        bad_url = await complete(client, user([{"type": "image_url",
                                                "image_url": {"url": "ftp://x"}}]))
    base = estimate_prompt_tokens([text])
    assert seen["usage"]["prompt_tokens"] == base + OPENAI_IMAGE_TOKENS
    assert cheap["usage"]["prompt_tokens"] == base + OPENAI_LOW_DETAIL_IMAGE_TOKENS
    assert blind.status_code == 400 and "image_url" in blind.json()["error"]["message"]
    assert bad_url.status_code == 400


# ------------------------------------------------------------------ models and routes

@pytest.mark.asyncio
async def test_model_lookup_and_json_route_errors():
    async with serving(fast(max_body_bytes=4096)) as (running, client):
        model = await client.get("/v1/models/gpt-4.1")
        missing = await client.get("/v1/models/gpt-9")
        listed = await sdk(running).models.retrieve("text-embedding-3-small")
        unknown_route = await client.post("/v1/chat/complete", json=chat())
        wrong_method = await client.get("/v1/chat/completions")
        too_big = await complete(client, chat(content="x" * 10_000))
    assert model.status_code == 200
    assert model.json()["id"] == "gpt-4.1" and model.json()["object"] == "model"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert listed.id == "text-embedding-3-small"
    assert unknown_route.status_code == 404
    assert unknown_route.json()["error"]["message"] == "Invalid URL (POST /v1/chat/complete)"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"]
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"


@pytest.mark.asyncio
async def test_the_bodies_received_are_kept_until_reset():
    body = chat(seed=11, n=2, tools=[WEATHER], tool_choice="auto")
    async with serving(fast()) as (_, client):
        await complete(client, body)
        kept = (await client.get("/_sim/requests")).json()["requests"]
        await client.post("/_sim/reset")
        after = (await client.get("/_sim/requests")).json()["requests"]
    assert kept == [body] and after == []
