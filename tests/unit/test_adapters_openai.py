"""The OpenAI adapter and the whole chat API: content parts, tool calls and results, tools,
tool_choice, response_format, n, penalties and logprobs on the way out; every choice, tool
calls, refusals and logprobs on the way back; streamed tool-call pieces; embeddings. Over
httpx.MockTransport with bodies in OpenAI's documented shapes."""

from __future__ import annotations

import json
from collections.abc import Sequence

import httpx
import pytest

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import (ChatMessage, ContentPart, EmbeddingInput, ResponseFormat,
                                    Tool, ToolCall, ToolCallDelta, ToolChoice)
from pipeline.providers import OpenAIAdapter
from tests.unit.test_adapters_native import KEY, answering, deployments, mock, routed
from tests.unit.test_provider_stream import openai_chunk, sse

OPENAI = deployments.by_id["openai-gpt-4.1"]
EMBEDDER = deployments.by_id["openai-text-embedding-3-small"]

WEATHER = Tool("get_weather", "The weather in a city now.",
               json.dumps({"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": False}), strict=True)
CALL = ToolCall("call_abc", "get_weather", '{"city": "Paris"}')
TOOL_CONVERSATION = [
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "", parts=[ContentPart("text", "What is this, and the weather?"),
                                   ContentPart("image_url", url="https://example.com/a.png",
                                               detail="low")]),
    ChatMessage("assistant", "", tool_calls=[CALL]),
    ChatMessage("tool", '{"celsius": 21}', tool_call_id="call_abc"),
]
PERSON = ResponseFormat("json_schema", name="Person", strict=True, schema=json.dumps(
    {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
     "additionalProperties": False}))


class Deltas:
    """An ``on_delta`` keeping each call's text and function-call pieces."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[ToolCallDelta]]] = []

    async def __call__(self, text: str, tool_calls: Sequence[ToolCallDelta] = ()) -> None:
        self.calls.append((text, list(tool_calls)))


async def sent_body(adapter_cls, deployment, request, answer: dict) -> dict:
    sent: list[httpx.Request] = []
    adapter = mock(adapter_cls, deployment, answering(200, answer, sent=sent))
    try:
        await adapter.complete(request)
    finally:
        await adapter.aclose()
    return json.loads(sent[0].content)


async def answer_to(adapter_cls, deployment, body: dict, request=None):
    adapter = mock(adapter_cls, deployment, answering(200, body))
    try:
        return await adapter.complete(request or routed())
    finally:
        await adapter.aclose()


async def streamed(adapter_cls, deployment, body: bytes, request=None):
    adapter = mock(adapter_cls, deployment, answering(
        200, body, headers={"content-type": "text/event-stream"}))
    deltas = Deltas()
    try:
        return await adapter.complete(request or routed(), on_delta=deltas), deltas.calls
    finally:
        await adapter.aclose()


def chat_answer(*choices: dict, usage=None) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4.1",
            "choices": list(choices),
            "usage": usage or {"prompt_tokens": 50, "completion_tokens": 30, "total_tokens": 80}}


def choice(index: int, content=None, finish="stop", **message) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": content, **message},
            "logprobs": None, "finish_reason": finish}


# ------------------------------------------------------------------ request

async def test_a_plain_request_sends_only_what_it_always_sent():
    body = await sent_body(OpenAIAdapter, OPENAI, routed([ChatMessage("user", "Hi")], seed=3),
                           chat_answer(choice(0, "Hello")))
    assert body == {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 256, "seed": 3}


async def test_every_chat_field_reaches_openai_in_its_own_terms():
    request = routed(TOOL_CONVERSATION, n=2, presence_penalty=0.5, frequency_penalty=-0.2,
                     logprobs=True, top_logprobs=3,
                     fields=dict(tools=[WEATHER, Tool("noop")],
                                 tool_choice=ToolChoice("function", "get_weather"),
                                 parallel_tool_calls=False, response_format=PERSON))
    body = await sent_body(OpenAIAdapter, OPENAI, request, chat_answer(choice(0, "{}")))
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this, and the weather?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png",
                                                "detail": "low"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "call_abc"},
    ]
    assert body["tools"] == [
        {"type": "function", "function": {"name": "get_weather",
                                          "description": "The weather in a city now.",
                                          "parameters": json.loads(WEATHER.parameters),
                                          "strict": True}},
        {"type": "function", "function": {"name": "noop"}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "Person", "schema": json.loads(PERSON.schema), "strict": True}}
    assert (body["n"], body["presence_penalty"], body["frequency_penalty"], body["logprobs"],
            body["top_logprobs"]) == (2, 0.5, -0.2, True, 3)


@pytest.mark.parametrize("choice_, fmt, sent_choice, sent_format", [
    (ToolChoice("required"), ResponseFormat("json_object"), "required", {"type": "json_object"}),
    (ToolChoice("none"), ResponseFormat("text"), "none", {"type": "text"}),
    (ToolChoice("auto"), None, "auto", None),
])
async def test_tool_choice_modes_and_plain_response_formats(choice_, fmt, sent_choice,
                                                            sent_format):
    request = routed([ChatMessage("user", "Hi")],
                     fields=dict(tools=[WEATHER], tool_choice=choice_, response_format=fmt))
    body = await sent_body(OpenAIAdapter, OPENAI, request, chat_answer(choice(0, "Hello")))
    assert body["tool_choice"] == sent_choice
    assert body.get("response_format") == sent_format
    assert "parallel_tool_calls" not in body


async def test_a_tool_message_naming_no_call_goes_as_labelled_user_text():
    body = await sent_body(OpenAIAdapter, OPENAI, routed(
        [ChatMessage("user", "Hi"), ChatMessage("tool", "42", name="answer")]),
        chat_answer(choice(0, "Hello")))
    assert body["messages"][1] == {"role": "user", "content": "[result of tool answer]\n42"}


async def test_tool_parameters_that_are_not_json_are_an_invalid_request():
    adapter = mock(OpenAIAdapter, OPENAI, answering(200, chat_answer(choice(0, "x"))))
    with pytest.raises(GatewayError) as info:
        await adapter.complete(routed(fields=dict(tools=[Tool("t", parameters="{not json")])))
    await adapter.aclose()
    assert info.value.code == errors.INVALID_REQUEST and "tool t's parameters" in info.value.message


# ------------------------------------------------------------------- answer

async def test_every_choice_is_read_back_with_its_calls_refusal_and_logprobs():
    logprobs = {"content": [{"token": "It", "logprob": -0.01, "bytes": [73, 116],
                             "top_logprobs": []}], "refusal": None}
    body = chat_answer(
        choice(0, None, "tool_calls", tool_calls=[
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]),
        {**choice(2, None, "stop", refusal="I can't help with that."), "logprobs": None},
        {**choice(1, "It is sunny.", "length"), "logprobs": logprobs},
        usage={"prompt_tokens": 50, "completion_tokens": 70, "total_tokens": 120})
    done = await answer_to(OpenAIAdapter, OPENAI, body)
    assert (done.content, done.finish_reason, done.refusal, done.logprobs) == (
        "", "tool_calls", None, None)
    assert done.tool_calls == (ToolCall("call_1", "get_weather", '{"city":"Paris"}'),
                               ToolCall("call_2", "get_weather", '{"city":"Rome"}'))
    second, third = done.more_choices
    assert (second.index, second.content, second.finish_reason) == (1, "It is sunny.", "length")
    assert json.loads(second.logprobs) == logprobs and second.tool_calls == []
    assert (third.index, third.content, third.refusal) == (2, None, "I can't help with that.")
    assert (done.prompt_tokens, done.completion_tokens) == (50, 70)


# ------------------------------------------------------------------- stream

def tool_piece(index: int, arguments: str, id: str | None = None, name: str | None = None):
    piece: dict = {"index": index, "function": {"arguments": arguments}}
    if id:
        piece.update(id=id, type="function")
        piece["function"]["name"] = name
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]}


async def test_streamed_tool_call_pieces_are_handed_on_and_assembled():
    usage = {"prompt_tokens": 40, "completion_tokens": 18}
    both = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {
        "content": "Checking.", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                               "function": {"name": "get_weather",
                                                            "arguments": ""}}]},
        "finish_reason": None}]}
    other_choice = {"object": "chat.completion.chunk", "choices": [
        {"index": 1, "delta": {"content": "ignored"}, "finish_reason": None}]}
    done, calls = await streamed(OpenAIAdapter, OPENAI, sse(
        both, tool_piece(0, '{"city"'), other_choice, tool_piece(0, ': "Paris"}'),
        tool_piece(1, "", id="call_2", name="get_weather"), tool_piece(1, '{"city": "Rome"}'),
        openai_chunk(finish="tool_calls"), openai_chunk(usage=usage), "[DONE]"))
    assert calls[0] == ("Checking.", [ToolCallDelta(0, "call_1", "get_weather", "")])
    assert calls[1:] == [
        ("", [ToolCallDelta(0, None, None, '{"city"')]),
        ("", [ToolCallDelta(0, None, None, ': "Paris"}')]),
        ("", [ToolCallDelta(1, "call_2", "get_weather", "")]),
        ("", [ToolCallDelta(1, None, None, '{"city": "Rome"}')])]
    assert done.content == "Checking." and done.finish_reason == "tool_calls"
    assert done.tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
                               ToolCall("call_2", "get_weather", '{"city": "Rome"}'))
    assert done.ttft_ms >= 1 and (done.prompt_tokens, done.completion_tokens) == (40, 18)


async def test_a_streamed_refusal_is_gathered():
    refusal = [{"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"refusal": piece}, "finish_reason": None}]}
        for piece in ("I can't ", "help with that.")]
    done, calls = await streamed(OpenAIAdapter, OPENAI, sse(
        *refusal, openai_chunk(finish="stop"), "[DONE]"))
    assert done.refusal == "I can't help with that." and done.content == "" and calls == []


async def test_streamed_logprobs_are_joined_into_one_object():
    def piece(text: str, logprob: float) -> dict:
        entry = {"token": text, "logprob": logprob, "bytes": list(text.encode()),
                 "top_logprobs": []}
        return {"object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"content": text}, "finish_reason": None,
             "logprobs": {"content": [entry], "refusal": None}}]}

    done, _ = await streamed(OpenAIAdapter, OPENAI, sse(
        piece("Hi", -0.1), piece(" you", -0.2), openai_chunk(finish="stop"), "[DONE]"))
    whole = json.loads(done.logprobs)
    assert [(e["token"], e["logprob"]) for e in whole["content"]] == [("Hi", -0.1), (" you", -0.2)]
    assert whole["refusal"] is None
    plain, _ = await streamed(OpenAIAdapter, OPENAI, sse(openai_chunk("Hi", "stop"), "[DONE]"))
    assert plain.logprobs is None


# --------------------------------------------------------------- embeddings

def embedding_request(*inputs: str, dimensions: int | None = None):
    return routed([], fields=dict(embedding=EmbeddingInput(list(inputs), dimensions)))


async def test_embeddings_are_asked_for_as_floats_and_read_in_input_order():
    sent: list[httpx.Request] = []
    answer = {"object": "list", "model": "text-embedding-3-small",
              "data": [{"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
                       {"object": "embedding", "index": 0, "embedding": [1, 0.5]}],
              "usage": {"prompt_tokens": 9, "total_tokens": 9}}
    adapter = mock(OpenAIAdapter, EMBEDDER, answering(200, answer, sent=sent))
    done = await adapter.embed(embedding_request("first", "second", dimensions=2))
    await adapter.aclose()
    (request,) = sent
    assert str(request.url) == "https://api.openai.com/v1/embeddings"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content) == {"model": "text-embedding-3-small",
                                           "input": ["first", "second"],
                                           "encoding_format": "float", "dimensions": 2}
    assert done.embeddings == ([1.0, 0.5], [0.0, 1.0])
    assert (done.prompt_tokens, done.completion_tokens, done.content) == (9, 0, "")


@pytest.mark.parametrize("handler, code", [
    (answering(429, {"error": {"message": "slow down", "type": "requests",
                               "code": "rate_limit_exceeded"}}, {"retry-after": "4"}),
     errors.RATE_LIMITED),
    (answering(200, {"data": [{"index": 0, "embedding": [0.1]}]}), errors.PROVIDER_ERROR),
    (answering(200, b"<html>"), errors.PROVIDER_ERROR),
])
async def test_embedding_failures_are_classified_as_chat_failures_are(handler, code):
    adapter = mock(OpenAIAdapter, EMBEDDER, handler)
    with pytest.raises(GatewayError) as info:
        await adapter.embed(embedding_request("first", "second"))
    await adapter.aclose()
    assert info.value.code == code and EMBEDDER.id in info.value.message


async def test_an_embedding_call_past_its_timeout_is_a_timeout():
    def handler(request):
        raise httpx.ReadTimeout("slow", request=request)

    adapter = mock(OpenAIAdapter, EMBEDDER, handler)
    with pytest.raises(GatewayError) as info:
        await adapter.embed(embedding_request("first"))
    await adapter.aclose()
    assert info.value.code == errors.TIMEOUT and info.value.retryable
