"""The Gemini adapter and the whole chat API: inlineData/fileData images, functionCall and
functionResponse parts, functionDeclarations and toolConfig, JSON output with its schema,
candidateCount, every candidate read back with its calls, streamed calls, embeddings. Over
httpx.MockTransport with bodies in Gemini's documented shapes."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import (ChatMessage, ContentPart, EmbeddingInput, ResponseFormat,
                                    Tool, ToolCall, ToolCallDelta, ToolChoice)
from pipeline.providers import GeminiAdapter
from tests.unit.test_adapters_native import GEMINI, KEY, answering, mock, routed
from tests.unit.test_adapters_openai import (CALL, PERSON, WEATHER, answer_to, sent_body,
                                             streamed)
from tests.unit.test_provider_stream import gemini_chunk, sse

PNG = "iVBORw0KGgo="
QUESTION = ChatMessage("user", "What's the weather?")
USAGE = {"promptTokenCount": 60, "candidatesTokenCount": 24}


def candidate(index: int, *parts: dict, finish: str = "STOP") -> dict:
    return {"index": index, "content": {"role": "model", "parts": list(parts)},
            "finishReason": finish}


def answer(*candidates: dict) -> dict:
    return {"candidates": list(candidates), "usageMetadata": USAGE}


def call(name: str, args: dict) -> dict:
    return {"functionCall": {"name": name, "args": args}}


OK = answer(candidate(0, {"text": "Fine."}))


# ------------------------------------------------------------------ request

async def test_images_calls_and_results_as_parts():
    conversation = [
        ChatMessage("user", "", parts=[
            ContentPart("text", "Compare these."),
            ContentPart("image_url", url=f"data:image/png;base64,{PNG}"),
            ContentPart("image_url", url="https://example.com/photo.jpg", detail="low"),
            ContentPart("image_url", url="https://example.com/photo")]),
        ChatMessage("assistant", "", tool_calls=[CALL]),
        ChatMessage("tool", '{"celsius": 21}', tool_call_id="call_abc"),
    ]
    body = await sent_body(GeminiAdapter, GEMINI, routed(conversation), OK)
    assert body["contents"] == [
        {"role": "user", "parts": [
            {"text": "Compare these."},
            {"inlineData": {"mimeType": "image/png", "data": PNG}},
            {"fileData": {"fileUri": "https://example.com/photo.jpg", "mimeType": "image/jpeg"}},
            {"fileData": {"fileUri": "https://example.com/photo"}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather",
                                                      "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {
            "name": "get_weather", "response": {"content": '{"celsius": 21}'}}}]},
    ]


async def test_tools_tool_choice_schema_candidates_and_penalties():
    request = routed([QUESTION], n=2, presence_penalty=0.5, frequency_penalty=0.25,
                     fields=dict(tools=[WEATHER, Tool("noop")],
                                 tool_choice=ToolChoice("function", "get_weather"),
                                 response_format=PERSON))
    body = await sent_body(GeminiAdapter, GEMINI, request, OK)
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "The weather in a city now.",
         "parametersJsonSchema": json.loads(WEATHER.parameters)},
        {"name": "noop"}]}]
    assert body["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert body["generationConfig"] == {
        "maxOutputTokens": 256, "candidateCount": 2, "presencePenalty": 0.5,
        "frequencyPenalty": 0.25, "responseMimeType": "application/json",
        "responseJsonSchema": json.loads(PERSON.schema)}


@pytest.mark.parametrize("choice, mode", [
    (ToolChoice("auto"), "AUTO"), (ToolChoice("required"), "ANY"), (ToolChoice("none"), "NONE")])
async def test_tool_choice_modes(choice, mode):
    body = await sent_body(GeminiAdapter, GEMINI, routed(
        [QUESTION], fields=dict(tools=[WEATHER], tool_choice=choice,
                                response_format=ResponseFormat("json_object"))), OK)
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": mode}}
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert "responseJsonSchema" not in body["generationConfig"]


@pytest.mark.parametrize("messages, params, named", [
    ([QUESTION], {"logprobs": True}, "logprobs"),
    ([QUESTION, ChatMessage("tool", "21", tool_call_id="call_zzz")], {}, "call_zzz"),
    ([ChatMessage("assistant", "", tool_calls=[ToolCall("c1", "f", "{oops")])], {},
     "tool call c1's arguments"),
    ([ChatMessage("user", "", parts=[ContentPart("image_url", url="data:image/png,abc")])], {},
     "data URL"),
])
async def test_what_gemini_cannot_take_is_refused(messages, params, named):
    sent: list = []
    adapter = mock(GeminiAdapter, GEMINI, answering(200, OK, sent=sent))
    with pytest.raises(GatewayError) as info:
        await adapter.complete(routed(messages, **params))
    await adapter.aclose()
    assert info.value.code == errors.INVALID_REQUEST and named in info.value.message
    assert not sent


async def test_a_tool_result_without_a_known_call_may_still_name_its_function():
    body = await sent_body(GeminiAdapter, GEMINI, routed(
        [QUESTION, ChatMessage("tool", "21", name="get_weather", tool_call_id="call_zzz")]), OK)
    assert body["contents"][0]["parts"][-1]["functionResponse"]["name"] == "get_weather"


# ------------------------------------------------------------------- answer

async def test_every_candidate_with_its_function_calls():
    body = answer(
        candidate(1, {"text": "It is sunny."}, finish="MAX_TOKENS"),
        candidate(0, {"text": "Checking."}, call("get_weather", {"city": "Paris"}),
                  call("get_weather", {"city": "Rome"})))
    done = await answer_to(GeminiAdapter, GEMINI, body)
    assert (done.content, done.finish_reason) == ("Checking.", "tool_calls")
    assert [(c.name, json.loads(c.arguments)) for c in done.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    ids = [c.id for c in done.tool_calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    (second,) = done.more_choices
    assert (second.index, second.content, second.finish_reason) == (1, "It is sunny.", "length")
    assert (done.prompt_tokens, done.completion_tokens) == (60, 24)


async def test_one_call_at_a_time_keeps_each_candidates_first_call():
    body = answer(candidate(0, call("get_weather", {"city": "Paris"}),
                            call("get_weather", {"city": "Rome"})))
    done = await answer_to(GeminiAdapter, GEMINI, body,
                           routed([QUESTION], fields=dict(tools=[WEATHER],
                                                          parallel_tool_calls=False)))
    assert [json.loads(c.arguments) for c in done.tool_calls] == [{"city": "Paris"}]


# ------------------------------------------------------------------- stream

async def test_a_streamed_function_call_arrives_whole():
    with_call = {"candidates": [candidate(0, call("get_weather", {"city": "Paris"}))]}
    del with_call["candidates"][0]["finishReason"]
    done, calls = await streamed(GeminiAdapter, GEMINI, sse(
        gemini_chunk("Checking."), with_call,
        gemini_chunk("", "STOP", promptTokenCount=30, candidatesTokenCount=9)))
    assert calls[0] == ("Checking.", [])
    (text, [piece]), = calls[1:]
    assert text == "" and (piece.index, piece.name) == (0, "get_weather")
    assert piece.id.startswith("call_") and json.loads(piece.arguments) == {"city": "Paris"}
    assert done.finish_reason == "tool_calls"
    assert done.tool_calls == (ToolCall(piece.id, "get_weather", piece.arguments),)
    assert isinstance(piece, ToolCallDelta)


# --------------------------------------------------------------- embeddings

EMBEDDER = dataclasses.replace(GEMINI, id="google-gemini-embedding-001",
                               model="gemini-embedding-001",
                               provider_model="gemini-embedding-001")


async def test_embeddings_are_one_batch_with_intakes_token_estimate():
    sent: list[httpx.Request] = []
    reply = {"embeddings": [{"values": [0.5, 0.5]}, {"values": [1, 0]}]}
    adapter = mock(GeminiAdapter, EMBEDDER, answering(200, reply, sent=sent))
    done = await adapter.embed(routed([], fields=dict(
        embedding=EmbeddingInput(["first text", "second"], dimensions=2))).replace(
            estimated_prompt_tokens=5))
    await adapter.aclose()
    (request,) = sent
    assert str(request.url) == ("https://generativelanguage.googleapis.com/v1beta/models/"
                                "gemini-embedding-001:batchEmbedContents")
    assert request.headers["x-goog-api-key"] == KEY and KEY not in str(request.url)
    assert json.loads(request.content) == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "first text"}]},
         "outputDimensionality": 2},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "second"}]},
         "outputDimensionality": 2}]}
    assert done.embeddings == ([0.5, 0.5], [1.0, 0.0])
    assert done.prompt_tokens == 5          # no usage from Gemini: intake's estimate


async def test_an_embedding_refusal_is_classified_as_a_chat_refusal():
    error = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota"}}
    adapter = mock(GeminiAdapter, EMBEDDER, answering(429, error))
    with pytest.raises(GatewayError) as info:
        await adapter.embed(routed([], fields=dict(embedding=EmbeddingInput(["a"]))))
    await adapter.aclose()
    assert info.value.code == errors.RATE_LIMITED
