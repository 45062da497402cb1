"""The whole chat API through `llmpipe gateway` and over Kafka, on the embedded stack, for
each provider family (issue 19): tool-call round trips, streamed tool-call deltas,
structured outputs parsed by the SDK into pydantic models, n choices, stop sequences,
images to a vision model, embeddings; refusals that name the feature and the model; every
field reaching the provider; one exact usage row per call."""

from __future__ import annotations

import io
import json
import struct
import uuid

import fastavro
import openai
from openai.lib._pydantic import to_strict_json_schema
import pytest
from pydantic import BaseModel

from pipeline.client import GatewayClient, make_request
from pipeline.dev.gateway import issue_key, start_gateway
from pipeline.events.models import EmbeddingInput, Request, ResponseFormat, Tool, ToolChoice
from pipeline.events.registry import LocalRegistry
from tests.integration.conftest import answers, worker_stack

pytestmark = pytest.mark.integration

FAMILIES = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4.5",
            "gemini": "gemini-2.5-flash"}
EMBEDDERS = {"openai": "text-embedding-3-small", "gemini": "gemini-embedding-001"}
TIMEOUT = 60.0
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
FORCE = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# a 2x2 PNG, inline
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8"
         "z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==")


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: list[str]


@pytest.fixture(scope="module")
def gw(broker, tmp_path_factory):
    with worker_stack(broker, tmp_path_factory, "chat", seed=19) as stack:
        keys = {"acme": issue_key(stack, "acme")}
        gateway = start_gateway(stack, "chat-1")
        yield stack, gateway, keys


def sdk(gw) -> openai.OpenAI:
    _, gateway, keys = gw
    return openai.OpenAI(base_url=gateway.base_url, api_key=keys["acme"], max_retries=0,
                         timeout=TIMEOUT)


def rid(completion_id: str) -> str:
    return completion_id.split("-", 1)[1]


def usage(gw, ids: list[str]) -> dict[str, dict]:
    worker = gw[0].workers[0]
    counts = worker.wait_for_usage(ids)
    assert all(counts.get(i) == 1 for i in ids), counts
    return {row["request_id"]: row for row in worker.usage_rows(ids)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_tool_call_round_trip(gw, family):
    model, client = FAMILIES[family], sdk(gw)
    first = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER],
                                           tool_choice=FORCE, max_tokens=100)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and args["unit"] in ("c", "f")
    history = ASK + [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}]
    second = client.chat.completions.create(model=model, messages=history, tools=[WEATHER],
                                            max_tokens=300)
    answer = second.choices[0]
    assert answer.finish_reason in ("stop", "length") and answer.message.content, answer
    assert "get_weather" in answer.message.content     # the simulator answers from the result
    assert not answer.message.tool_calls
    rows = usage(gw, [rid(first.id), rid(second.id)])
    for completion in (first, second):
        row = rows[rid(completion.id)]
        assert row["status"] == "ok" and row["served_model"] == model
        assert row["prompt_tokens"] == completion.usage.prompt_tokens
        assert row["completion_tokens"] == completion.usage.completion_tokens


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_streamed_tool_call_deltas_reassemble_into_valid_arguments(gw, family):
    model, client = FAMILIES[family], sdk(gw)
    calls: dict[int, dict] = {}
    finish, ids = None, set()
    for chunk in client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER],
                                                tool_choice=FORCE, max_tokens=100,
                                                stream=True):
        ids.add(chunk.id)
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": None, "name": None, "arguments": ""})
                if piece.id:
                    call["id"] = piece.id
                if piece.function and piece.function.name:
                    call["name"] = piece.function.name
                if piece.function and piece.function.arguments:
                    call["arguments"] += piece.function.arguments
    assert finish == "tool_calls"
    (call,) = calls.values()
    assert call["id"] and call["name"] == "get_weather"
    args = json.loads(call["arguments"])
    assert set(args) == {"city", "unit"}
    usage(gw, [rid(ids.pop())])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_structured_output_parses_into_a_pydantic_model(gw, family):
    model, client = FAMILIES[family], sdk(gw)
    completion = client.beta.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "Weather in Oslo, as data."}],
        response_format=Weather, max_tokens=200)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Weather) and isinstance(parsed.conditions, list)
    usage(gw, [rid(completion.id)])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_n_choices_are_all_returned_and_all_billed(gw, family):
    model, client = FAMILIES[family], sdk(gw)
    one = client.chat.completions.create(model=model, messages=ASK, max_tokens=40,
                                         temperature=0, seed=7)
    two = client.chat.completions.create(model=model, messages=ASK, max_tokens=40, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert all(c.message.content and c.finish_reason for c in two.choices)
    rows = usage(gw, [rid(one.id), rid(two.id)])
    assert rows[rid(two.id)]["completion_tokens"] == two.usage.completion_tokens
    assert two.usage.completion_tokens > max(1, one.usage.completion_tokens // 2)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_stop_sequences_end_the_answer(gw, family):
    model, client = FAMILIES[family], sdk(gw)
    free = client.chat.completions.create(model=model, messages=ASK, max_tokens=80,
                                          temperature=0, seed=3)
    text = free.choices[0].message.content
    words = text.split()
    assert len(words) > 3, text
    stop = words[2]
    cut = client.chat.completions.create(model=model, messages=ASK, max_tokens=80,
                                         temperature=0, seed=3, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_an_image_part_reaches_a_vision_model(gw, family):
    model, client = FAMILIES[family], sdk(gw)
    completion = client.chat.completions.create(model=model, max_tokens=60, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                     {"type": "image_url", "image_url": {"url": PIXEL,
                                                                         "detail": "low"}}]}])
    assert completion.choices[0].message.content
    text_only = client.chat.completions.create(
        model=model, max_tokens=60,
        messages=[{"role": "user", "content": "What is in this picture?"}])
    assert completion.usage.prompt_tokens > text_only.usage.prompt_tokens     # the image counted


def test_an_unsupported_combination_is_a_400_naming_the_feature_and_the_model(gw):
    client = sdk(gw)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="deepseek-v3.2", max_tokens=20, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PIXEL}}]}])
    assert "deepseek-v3.2" in exc.value.message and "vision" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="claude-sonnet-4.5", messages=ASK, logprobs=True)
    assert "claude-sonnet-4.5" in exc.value.message and "logprobs" in exc.value.message


@pytest.mark.parametrize("family", sorted(EMBEDDERS))
def test_embeddings_are_routed_and_billed(gw, family):
    model, client = EMBEDDERS[family], sdk(gw)
    result = client.embeddings.create(model=model, input=["the sea", "海", "the ocean"])
    assert [d.index for d in result.data] == [0, 1, 2]
    dims = {len(d.embedding) for d in result.data}
    assert len(dims) == 1 and dims.pop() > 100
    assert result.usage.prompt_tokens > 0
    short = client.embeddings.create(model=model, input="the sea", dimensions=256)
    assert len(short.data[0].embedding) == 256


def test_embeddings_from_a_chat_model_are_a_400(gw):
    with pytest.raises(openai.BadRequestError) as exc:
        sdk(gw).embeddings.create(model="claude-sonnet-4.5", input="the sea")
    assert "claude-sonnet-4.5" in exc.value.message and "embedding" in exc.value.message


# --- over Kafka ---------------------------------------------------------------------------

def tool_request(model: str) -> Request:
    req = make_request("acme", "What is the weather in Paris?", model=model, max_tokens=100)
    return req.replace(tools=[Tool("get_weather", "Current weather in a city",
                                   json.dumps(WEATHER["function"]["parameters"]))],
                       tool_choice=ToolChoice("function", "get_weather"))


@pytest.mark.parametrize("fmt", ["avro", "json"])
async def test_the_same_features_over_kafka(gw, fmt):
    stack = gw[0]
    async with GatewayClient(stack.bootstrap, stack.topics, fmt=fmt) as client:
        calls = [tool_request(m) for m in FAMILIES.values()]
        structured = make_request("acme", "Weather in Oslo, as data.", model="gpt-4o-mini",
                                  max_tokens=200).replace(response_format=ResponseFormat(
                                      "json_schema", "Weather",
                                      json.dumps(to_strict_json_schema(Weather)), True))
        embedding = Request(str(uuid.uuid4()), "acme", [], model="text-embedding-3-small",
                            embedding=EmbeddingInput(["the sea", "the ocean"]))
        requests = calls + [structured, embedding]
        for r in requests:
            client.expect(r)
            await client.send(r)
        got = await answers(client, stack, requests, TIMEOUT)
    for r in calls:
        response = got[r.request_id]
        assert response.status == "ok" and response.finish_reason == "tool_calls", response
        (call,) = response.tool_calls
        assert call.name == "get_weather" and set(json.loads(call.arguments)) == {"city", "unit"}
    assert Weather.model_validate_json(got[structured.request_id].content)
    vectors = got[embedding.request_id].embeddings
    assert len(vectors) == 2 and len(vectors[0]) == 1536
    usage(gw, [r.request_id for r in requests])


async def test_a_request_in_the_first_schema_is_still_accepted(gw):
    """A producer still on request.v1 (no stream, tools, parts...) gets its answer."""
    stack = gw[0]
    old = LocalRegistry().versions[("Request", 1)]
    req = make_request("acme", "Say hi.", model="gpt-4o-mini", max_tokens=20)
    record = {f["name"]: req.to_dict()[f["name"]] for f in old.schema["fields"]}
    record["messages"] = [{"role": "user", "content": "Say hi.", "name": None}]
    record["params"] = {k: record["params"][k]
                        for k in ("max_tokens", "temperature", "top_p", "stop", "seed")}
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, old.schema_id))
    fastavro.schemaless_writer(buf, old.parsed, record)
    async with GatewayClient(stack.bootstrap, stack.topics) as client:
        client.expect(req)
        await stack.publish_raw([(stack.topics.requests, b"acme", buf.getvalue())])
        response = await client.wait(req, TIMEOUT)
    assert response is not None and response.status == "ok" and response.content
    usage(gw, [req.request_id])


def test_every_field_reaches_the_provider(gw):
    """Each field the gateway accepts is in the body the provider received."""
    stack, client = gw[0], sdk(gw)
    stack.reset_simulator()
    completion = client.chat.completions.create(
        model="gpt-4o", max_tokens=50, temperature=0.5, top_p=0.9, stop=["zzz"], seed=11,
        n=2, presence_penalty=0.5, frequency_penalty=0.25, logprobs=True, top_logprobs=2,
        user="u-1", tools=[WEATHER], tool_choice="auto", parallel_tool_calls=False,
        response_format={"type": "json_object"},
        messages=[{"role": "system", "content": "Answer in JSON."},
                  {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                               {"type": "image_url",
                                                "image_url": {"url": PIXEL, "detail": "low"}}]},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_9", "type": "function",
                       "function": {"name": "get_weather",
                                    "arguments": '{"city": "Paris", "unit": "c"}'}}]},
                  {"role": "tool", "tool_call_id": "call_9", "content": "18 C"}])
    assert len(completion.choices) == 2
    (body,) = [b for b in stack.simulator_requests() if b.get("seed") == 11]
    for name, value in [("max_tokens", 50), ("temperature", 0.5), ("top_p", 0.9),
                        ("stop", ["zzz"]), ("n", 2), ("presence_penalty", 0.5),
                        ("frequency_penalty", 0.25), ("logprobs", True), ("top_logprobs", 2),
                        ("user", "u-1"), ("tool_choice", "auto"),
                        ("parallel_tool_calls", False),
                        ("response_format", {"type": "json_object"})]:
        assert body.get(name) == value, (name, body.get(name))
    assert body["tools"][0]["function"]["parameters"] == WEATHER["function"]["parameters"]
    user, assistant, tool = body["messages"][1:]
    assert user["content"][1]["image_url"] == {"url": PIXEL, "detail": "low"}
    assert assistant["tool_calls"][0]["id"] == "call_9"
    assert tool == {"role": "tool", "tool_call_id": "call_9", "content": "18 C"}
