"""The Anthropic adapter and the whole chat API: image, tool_use and tool_result blocks,
tools and tool_choice, structured output as a forced tool, n > 1 as n calls, refusals of
what Claude lacks, and streamed tool use. Over httpx.MockTransport with bodies in the
Messages API's documented shapes."""

from __future__ import annotations

import json

import httpx
import pytest

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import (ChatMessage, ContentPart, EmbeddingInput, ResponseFormat,
                                    Tool, ToolCall, ToolCallDelta, ToolChoice)
from pipeline.providers import AnthropicAdapter
from pipeline.providers.anthropic_blocks import ANSWER_TOOL
from tests.unit.test_adapters_native import ANTHROPIC, answering, mock, routed
from tests.unit.test_adapters_openai import (CALL, PERSON, WEATHER, answer_to, sent_body,
                                             streamed)
from tests.unit.test_provider_stream import anthropic_events, sse, text_delta

PNG = "iVBORw0KGgo="
QUESTION = ChatMessage("user", "What's the weather?")


def message(*content: dict, stop_reason="end_turn", input_tokens=100, output_tokens=20) -> dict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": list(content), "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def tool_use(id: str, name: str, input: dict) -> dict:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


OK = message(text("Fine."))


# ------------------------------------------------------------------ request

async def test_images_tool_uses_and_merged_tool_results_as_blocks():
    conversation = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "", parts=[
            ContentPart("text", "Compare these."),
            ContentPart("image_url", url="https://example.com/a.png", detail="high"),
            ContentPart("image_url", url=f"data:image/png;base64,{PNG}")]),
        ChatMessage("assistant", "Let me check both.",
                    tool_calls=[CALL, ToolCall("call_def", "get_weather", '{"city": "Rome"}')]),
        ChatMessage("tool", '{"celsius": 21}', tool_call_id="call_abc"),
        ChatMessage("tool", '{"celsius": 25}', tool_call_id="call_def"),
        ChatMessage("user", "Which is warmer?"),
    ]
    body = await sent_body(AnthropicAdapter, ANTHROPIC, routed(conversation), OK)
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "Compare these."},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check both."},
            {"type": "tool_use", "id": "call_abc", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_def", "name": "get_weather",
             "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_abc", "content": '{"celsius": 21}'},
            {"type": "tool_result", "tool_use_id": "call_def", "content": '{"celsius": 25}'},
            {"type": "text", "text": "Which is warmer?"}]},
    ]


async def test_tool_results_come_first_in_their_user_turn():
    conversation = [QUESTION, ChatMessage("assistant", "", tool_calls=[CALL]),
                    ChatMessage("user", "Be quick."),
                    ChatMessage("tool", "sunny", tool_call_id="call_abc")]
    body = await sent_body(AnthropicAdapter, ANTHROPIC, routed(conversation), OK)
    assert [b["type"] for b in body["messages"][-1]["content"]] == ["tool_result", "text"]


@pytest.mark.parametrize("choice, parallel, sent", [
    (None, None, None),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (ToolChoice("auto"), True, {"type": "auto", "disable_parallel_tool_use": False}),
    (ToolChoice("required"), None, {"type": "any"}),
    (ToolChoice("function", "get_weather"), False,
     {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
    (ToolChoice("none"), False, {"type": "none"}),
])
async def test_tools_and_tool_choice(choice, parallel, sent):
    request = routed([QUESTION], fields=dict(tools=[WEATHER, Tool("noop")], tool_choice=choice,
                                             parallel_tool_calls=parallel))
    body = await sent_body(AnthropicAdapter, ANTHROPIC, request, OK)
    assert body["tools"] == [
        {"name": "get_weather", "description": "The weather in a city now.",
         "input_schema": json.loads(WEATHER.parameters)},
        {"name": "noop", "input_schema": {"type": "object"}}]
    assert body.get("tool_choice") == sent


@pytest.mark.parametrize("fmt, schema", [
    (PERSON, json.loads(PERSON.schema)), (ResponseFormat("json_object"), {"type": "object"})])
async def test_structured_output_is_a_forced_answer_tool(fmt, schema):
    body = await sent_body(AnthropicAdapter, ANTHROPIC,
                           routed([QUESTION], fields=dict(response_format=fmt)), OK)
    (tool,) = body["tools"]
    assert tool["name"] == ANSWER_TOOL and tool["input_schema"] == schema
    assert body["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}


@pytest.mark.parametrize("choice, sent", [
    (None, {"type": "any"}), (ToolChoice("required"), {"type": "any"}),
    (ToolChoice("none"), {"type": "tool", "name": ANSWER_TOOL}),
    (ToolChoice("function", "get_weather"), {"type": "tool", "name": "get_weather"})])
async def test_structured_output_beside_the_callers_own_tools(choice, sent):
    request = routed([QUESTION], fields=dict(response_format=PERSON, tools=[WEATHER],
                                             tool_choice=choice))
    body = await sent_body(AnthropicAdapter, ANTHROPIC, request, OK)
    assert [t["name"] for t in body["tools"]] == ["get_weather", ANSWER_TOOL]
    assert body["tool_choice"] == sent


@pytest.mark.parametrize("fields, params, named", [
    ({}, {"presence_penalty": 0.5}, "presence_penalty"),
    ({}, {"frequency_penalty": -1.0}, "frequency_penalty"),
    ({}, {"logprobs": True}, "logprobs"),
    ({}, {"top_logprobs": 2}, "logprobs"),
    ({"tools": [Tool(ANSWER_TOOL)]}, {}, ANSWER_TOOL),
    ({"response_format": ResponseFormat("json_schema", "L", '{"type": "array"}')}, {},
     "object schema"),
    ({"tools": [Tool("t", parameters="{")]}, {}, "tool t's parameters"),
])
async def test_what_claude_cannot_serve_is_refused_not_dropped(fields, params, named):
    sent: list = []
    adapter = mock(AnthropicAdapter, ANTHROPIC, answering(200, OK, sent=sent))
    with pytest.raises(GatewayError) as info:
        await adapter.complete(routed([QUESTION], fields=fields, **params))
    await adapter.aclose()
    assert info.value.code == errors.INVALID_REQUEST and named in info.value.message
    assert not sent


async def test_zero_penalties_are_openais_defaults_and_pass():
    body = await sent_body(AnthropicAdapter, ANTHROPIC,
                           routed([QUESTION], presence_penalty=0.0, frequency_penalty=0.0), OK)
    assert "presence_penalty" not in body and "frequency_penalty" not in body


# ------------------------------------------------------------------- answer

async def test_tool_use_blocks_are_read_back_as_tool_calls():
    done = await answer_to(AnthropicAdapter, ANTHROPIC, message(
        text("Checking."), tool_use("toolu_1", "get_weather", {"city": "Paris"}),
        tool_use("toolu_2", "noop", {}), stop_reason="tool_use"))
    assert done.content == "Checking." and done.finish_reason == "tool_calls"
    assert [(c.id, c.name, json.loads(c.arguments)) for c in done.tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Paris"}), ("toolu_2", "noop", {})]


async def test_the_answer_tools_input_is_the_text_and_an_ordinary_stop():
    done = await answer_to(AnthropicAdapter, ANTHROPIC, message(
        tool_use("toolu_1", ANSWER_TOOL, {"name": "Ada", "note": "é"}), stop_reason="tool_use"))
    assert json.loads(done.content) == {"name": "Ada", "note": "é"}
    assert done.finish_reason == "stop" and done.tool_calls == ()


async def test_a_refusal_is_a_content_filter_with_the_refusal_text():
    done = await answer_to(AnthropicAdapter, ANTHROPIC,
                           message(text("I can't help with that."), stop_reason="refusal"))
    assert (done.finish_reason, done.refusal) == ("content_filter", "I can't help with that.")
    silent = await answer_to(AnthropicAdapter, ANTHROPIC, message(stop_reason="refusal"))
    assert silent.refusal and silent.content == ""


# ------------------------------------------------------------- n > 1: fan out

async def test_n_choices_are_n_calls_merged_with_their_usage_summed():
    answers = iter([message(text("One."), input_tokens=100, output_tokens=3),
                    message(text("Two."), stop_reason="max_tokens", input_tokens=100,
                            output_tokens=5),
                    message(tool_use("toolu_9", "get_weather", {"city": "Oslo"}),
                            stop_reason="tool_use", input_tokens=100, output_tokens=7)])
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=next(answers))

    adapter = mock(AnthropicAdapter, ANTHROPIC, handler)
    done = await adapter.complete(routed([QUESTION], n=3, fields=dict(tools=[WEATHER])))
    await adapter.aclose()
    assert len(sent) == 3 and all("n" not in json.loads(r.content) for r in sent)
    assert (done.content, done.finish_reason) == ("One.", "stop")
    assert [(c.index, c.content, c.finish_reason) for c in done.more_choices] == [
        (1, "Two.", "length"), (2, "", "tool_calls")]
    assert done.more_choices[1].tool_calls == [
        ToolCall("toolu_9", "get_weather", '{"city": "Oslo"}')]
    assert (done.prompt_tokens, done.completion_tokens) == (300, 15)


async def test_one_failed_call_of_a_fan_out_fails_the_request():
    answers = iter([httpx.Response(200, json=OK),
                    httpx.Response(529, json={"type": "error", "error": {
                        "type": "overloaded_error", "message": "Overloaded"}})])
    adapter = mock(AnthropicAdapter, ANTHROPIC, lambda request: next(answers))
    with pytest.raises(GatewayError) as info:
        await adapter.complete(routed([QUESTION], n=2))
    await adapter.aclose()
    assert info.value.code == errors.OVERLOADED


async def test_a_streamed_n_and_embeddings_are_refused():
    adapter = mock(AnthropicAdapter, ANTHROPIC, answering(200, OK))

    async def on_delta(text, tool_calls=()):
        pass

    with pytest.raises(GatewayError) as streamed_n:
        await adapter.complete(routed([QUESTION], n=2), on_delta=on_delta)
    with pytest.raises(GatewayError) as embedded:
        await adapter.embed(routed([], fields=dict(embedding=EmbeddingInput(["a"]))))
    await adapter.aclose()
    assert streamed_n.value.code == embedded.value.code == errors.INVALID_REQUEST
    assert "Anthropic has no embeddings API" in embedded.value.message


# ------------------------------------------------------------------- stream

def block_start(index: int, block: dict) -> dict:
    return {"type": "content_block_start", "index": index, "content_block": block}


def json_delta(index: int, partial: str) -> dict:
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": partial}}


def block_stop(index: int) -> dict:
    return {"type": "content_block_stop", "index": index}


def tool_stream(*middle: dict, stop_reason: str = "tool_use") -> bytes:
    events = anthropic_events(text_delta("Checking."), block_stop(0), *middle, stop=False)
    return sse(*events, {"type": "message_delta", "delta": {"stop_reason": stop_reason},
                         "usage": {"output_tokens": 30}}, {"type": "message_stop"}, named=True)


async def test_streamed_tool_use_is_numbered_among_the_calls():
    done, calls = await streamed(AnthropicAdapter, ANTHROPIC, tool_stream(
        block_start(1, {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                        "input": {}}),
        json_delta(1, ""), json_delta(1, '{"city": '), json_delta(1, '"Paris"}'), block_stop(1),
        block_start(2, {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}}),
        block_stop(2)))
    assert calls == [
        ("Checking.", []),
        ("", [ToolCallDelta(0, "toolu_1", "get_weather", "")]),
        ("", [ToolCallDelta(0, None, None, '{"city": ')]),
        ("", [ToolCallDelta(0, None, None, '"Paris"}')]),
        ("", [ToolCallDelta(1, "toolu_2", "noop", "")]),
        ("", [ToolCallDelta(1, None, None, "{}")])]
    assert done.content == "Checking." and done.finish_reason == "tool_calls"
    assert done.tool_calls == (ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),
                               ToolCall("toolu_2", "noop", "{}"))


async def test_the_answer_tool_streams_as_text():
    done, calls = await streamed(AnthropicAdapter, ANTHROPIC, tool_stream(
        block_start(1, {"type": "tool_use", "id": "toolu_1", "name": ANSWER_TOOL, "input": {}}),
        json_delta(1, '{"name": '), json_delta(1, '"Ada"}'), block_stop(1)))
    assert [text for text, _ in calls] == ["Checking.", '{"name": ', '"Ada"}']
    assert all(not pieces for _, pieces in calls)
    assert done.finish_reason == "stop" and done.tool_calls == ()


async def test_a_streamed_refusal_keeps_its_text_as_the_refusal():
    done, _ = await streamed(AnthropicAdapter, ANTHROPIC, tool_stream(stop_reason="refusal"))
    assert (done.finish_reason, done.refusal) == ("content_filter", "Checking.")
