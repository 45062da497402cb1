"""The simulator's Anthropic and Gemini shapes honour what their providers honour: keys
checked, fields type-checked, tools (tool_use / functionCall, streamed too) with a round
trip, images, stop sequences, several Gemini candidates and JSON schemas, model lookups."""

from __future__ import annotations

import json

import httpx
import pytest

from pipeline.routing.tokens import estimate_prompt_tokens
from pipeline.simulator.chat import ANTHROPIC_IMAGE_TOKENS, GEMINI_IMAGE_TOKENS
from tests.unit.test_simulator import KEY, OTHER_KEY, fast, serving

ANTHROPIC = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "Authorization": ""}
GOOGLE = {"x-goog-api-key": KEY, "Authorization": ""}
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                                   "days": {"type": "integer", "minimum": 1,
                                                            "maximum": 7}},
                  "required": ["city", "days"]}
PNG = "iVBORw0KGgo="


def message(content, **extra) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 300,
            "messages": [{"role": "user", "content": content}], **extra}


async def messages(client: httpx.AsyncClient, body: dict, **headers) -> httpx.Response:
    return await client.post("/v1/messages", json=body, headers={**ANTHROPIC, **headers})


async def generate(client: httpx.AsyncClient, body: dict, model: str = "gemini-2.5-flash",
                   **headers) -> httpx.Response:
    return await client.post(f"/v1beta/models/{model}:generateContent", json=body,
                             headers={**GOOGLE, **headers})


def anthropic_events(text: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines()
            if line.startswith("data: ")]


# ------------------------------------------------------------------------- Anthropic

@pytest.mark.asyncio
async def test_anthropic_keys_and_types():
    async with serving(fast(api_keys={KEY})) as (_, client):
        wrong = await messages(client, message("hi"), **{"x-api-key": OTHER_KEY})
        extra = await messages(client, message("hi", n=2))
        bad_stop = await messages(client, message("hi", stop_sequences="END"))
        bad_block = await messages(client, message([{"type": "video"}]))
        bad_tool = await messages(client, message("hi", tools=[{"name": "x"}]))
        model = await client.get("/v1/models/claude-sonnet-4-5", headers=ANTHROPIC)
        missing = await client.get("/v1/models/claude-9", headers=ANTHROPIC)
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert extra.status_code == 400 and "n: Extra inputs are not permitted" in extra.text
    for refused in (bad_stop, bad_block, bad_tool):
        assert refused.status_code == 400
        assert refused.json()["error"]["type"] == "invalid_request_error"
    assert model.json()["type"] == "model" and model.json()["id"] == "claude-sonnet-4-5"
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


@pytest.mark.asyncio
async def test_anthropic_tool_use_round_trip():
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}]
    async with serving(fast()) as (_, client):
        first = (await messages(client, message("What's the weather in Oslo?",
                                                tools=tools))).json()
        forced = (await messages(client, message("Hello", tools=tools, tool_choice={
            "type": "tool", "name": "get_weather"}))).json()
        call = first["content"][0]
        follow_up = message("What's the weather in Oslo?", tools=tools)
        follow_up["messages"] += [
            {"role": "assistant", "content": first["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                          "content": "4 degrees and snow"}]}]
        answer = (await messages(client, follow_up)).json()
        orphan = await messages(client, message([{"type": "tool_result",
                                                  "tool_use_id": "toolu_x", "content": "?"}]))
    assert first["stop_reason"] == "tool_use"
    assert call["type"] == "tool_use" and call["id"].startswith("toolu_")
    assert call["name"] == "get_weather" and 1 <= call["input"]["days"] <= 7
    assert forced["content"][0]["name"] == "get_weather"
    assert answer["stop_reason"] == "end_turn"
    assert answer["content"][0]["text"].startswith(
        "The get_weather tool returned: 4 degrees and snow.")
    assert orphan.status_code == 400 and "tool_use_id" in orphan.text


@pytest.mark.asyncio
async def test_anthropic_streams_tool_input_as_json_deltas():
    tools = [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]
    async with serving(fast()) as (_, client):
        resp = await messages(client, message("weather in Rome", tools=tools, stream=True,
                                              tool_choice={"type": "any"}))
    events = anthropic_events(resp.text)
    start = next(e for e in events if e["type"] == "content_block_start")
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["id"].startswith("toolu_") and start["content_block"]["input"] == {}
    partial = "".join(e["delta"]["partial_json"] for e in events
                      if e["type"] == "content_block_delta")
    assert json.loads(partial)["city"]
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert events[-1]["type"] == "message_stop"


@pytest.mark.asyncio
async def test_anthropic_images_and_stop_sequences():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}}
    async with serving(fast()) as (_, client):
        plain = (await messages(client, message("hi"))).json()
        seen = (await messages(client, message([{"type": "text", "text": "What is this?"},
                                                image]))).json()
    text = plain["content"][0]["text"]
    word = text.split()[2]
    async with serving(fast()) as (_, client):          # the same call, with a stop
        stopped = (await messages(client, message("hi", stop_sequences=[word]))).json()
        bad_media = await messages(client, message([{**image, "source": {
            **image["source"], "media_type": "image/tiff"}}]))
    assert seen["usage"]["input_tokens"] == estimate_prompt_tokens(["What is this?"]) + \
        ANTHROPIC_IMAGE_TOKENS
    assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == word
    assert stopped["content"][0]["text"] == text[:text.index(word)]
    assert bad_media.status_code == 400


@pytest.mark.asyncio
async def test_anthropic_temperature_zero_repeats():
    body = message("Explain retries", temperature=0)
    async with serving(fast()) as (_, client):
        texts = [(await messages(client, body)).json()["content"][0]["text"] for _ in range(2)]
        stop = texts[0].split()[2]
        cut = (await messages(client, {**body, "stop_sequences": [stop]})).json()
    assert texts[0] == texts[1]
    assert cut["content"][0]["text"] == texts[0][:texts[0].index(stop)]


# ---------------------------------------------------------------------------- Gemini

def contents(text: str) -> list[dict]:
    return [{"role": "user", "parts": [{"text": text}]}]


@pytest.mark.asyncio
async def test_gemini_keys_types_and_models():
    async with serving(fast(api_keys={KEY})) as (_, client):
        wrong = await generate(client, {"contents": contents("hi")},
                               **{"x-goog-api-key": OTHER_KEY})
        unknown_field = await generate(client, {"contents": contents("hi"), "temprature": 1})
        bad_count = await generate(client, {"contents": contents("hi"),
                                            "generationConfig": {"candidateCount": "two"}})
        model = await client.get("/v1beta/models/gemini-2.5-flash", headers=GOOGLE)
        missing = await client.get("/v1beta/models/gemini-9", headers=GOOGLE)
        listed = await client.get("/v1beta/models", headers=GOOGLE)
    assert wrong.status_code == 400
    assert wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert unknown_field.status_code == 400 and "temprature" in unknown_field.text
    assert bad_count.status_code == 400
    assert model.json()["name"] == "models/gemini-2.5-flash"
    assert "generateContent" in model.json()["supportedGenerationMethods"]
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    assert "models/gemini-embedding-001" in {m["name"] for m in listed.json()["models"]}


@pytest.mark.asyncio
async def test_gemini_function_call_round_trip_and_stream():
    tools = [{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
                                        "parameters": {**WEATHER_SCHEMA, "type": "OBJECT"}}]}]
    async with serving(fast()) as (_, client):
        first = (await generate(client, {"contents": contents("weather in Kyoto?"),
                                         "tools": tools})).json()
        forced = (await generate(client, {"contents": contents("Hello"), "tools": tools,
                                          "toolConfig": {"functionCallingConfig": {
                                              "mode": "ANY"}}})).json()
        part = first["candidates"][0]["content"]["parts"][0]
        answer = (await generate(client, {"tools": tools, "contents": contents(
            "weather in Kyoto?") + [
            {"role": "model", "parts": [part]},
            {"role": "user", "parts": [{"functionResponse": {
                "name": "get_weather", "response": {"temp": 12}}}]}]})).json()
        streamed = await client.post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            json={"contents": contents("weather in Kyoto?"), "tools": tools}, headers=GOOGLE)
    assert part["functionCall"]["name"] == "get_weather"
    assert 1 <= part["functionCall"]["args"]["days"] <= 7
    assert forced["candidates"][0]["content"]["parts"][0]["functionCall"]["name"] == "get_weather"
    text = answer["candidates"][0]["content"]["parts"][0]["text"]
    assert text.startswith('The get_weather tool returned: {"temp": 12}.')
    events = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: ")]
    calls = [p["functionCall"] for e in events for c in e["candidates"]
             for p in c["content"]["parts"] if "functionCall" in p]
    assert len(calls) == 1 and calls[0]["args"]["city"]
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"


@pytest.mark.asyncio
async def test_gemini_candidates_schema_images_stop_and_seed():
    schema = {"type": "OBJECT", "properties": {"title": {"type": "STRING"},
                                               "year": {"type": "INTEGER"}},
              "required": ["title", "year"]}
    image = {"inlineData": {"mimeType": "image/png", "data": PNG}}
    seeded = {"contents": contents("a story"),
              "generationConfig": {"temperature": 0, "seed": 5, "candidateCount": 2}}
    async with serving(fast()) as (_, client):
        structured = (await generate(client, {"contents": contents("a film"),
                                              "generationConfig": {
                                                  "responseMimeType": "application/json",
                                                  "responseSchema": schema}})).json()
        pictured = (await generate(client, {"contents": [{"role": "user", "parts": [
            {"text": "What is this?"}, image]}]})).json()
        first = (await generate(client, seeded)).json()
        again = (await generate(client, seeded)).json()
        seeded_text = first["candidates"][0]["content"]["parts"][0]["text"]
        seeded_stop = seeded_text.split()[2]
        seeded_cut = (await generate(client, {**seeded, "generationConfig": {
            **seeded["generationConfig"], "stopSequences": [seeded_stop]}})).json()
        schema_without_json = await generate(client, {"contents": contents("x"),
                                                      "generationConfig": {"responseSchema": schema}})
    async with serving(fast()) as (_, client):
        plain = (await generate(client, {"contents": contents("hi")})).json()
    text = plain["candidates"][0]["content"]["parts"][0]["text"]
    word = text.split()[2]
    async with serving(fast()) as (_, client):          # the same call, with a stop
        stopped = (await generate(client, {"contents": contents("hi"), "generationConfig": {
            "stopSequences": [word]}})).json()
    film = json.loads(structured["candidates"][0]["content"]["parts"][0]["text"])
    assert isinstance(film["title"], str) and isinstance(film["year"], int)
    assert pictured["usageMetadata"]["promptTokenCount"] == estimate_prompt_tokens(
        ["What is this?"]) + GEMINI_IMAGE_TOKENS
    assert [c["index"] for c in first["candidates"]] == [0, 1]
    assert first["candidates"] == again["candidates"]
    assert seeded_cut["candidates"][0]["content"]["parts"][0]["text"] == \
        seeded_text[:seeded_text.index(seeded_stop)]
    assert stopped["candidates"][0]["content"]["parts"][0]["text"] == text[:text.index(word)]
    assert schema_without_json.status_code == 400
