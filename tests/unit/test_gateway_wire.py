"""The gateway's pure parts: an OpenAI body as our Request (tenant from the key), answers
in OpenAI's shapes, error codes as HTTP statuses, and API keys kept only as hashes."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from pipeline import errors
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from pipeline.events.models import (Choice, Chunk, EmbeddingInput, ErrorInfo, Response,
                                    ResponseFormat, TenantPolicy, ToolCall, ToolCallDelta,
                                    ToolChoice)
from pipeline.gateway import embeddings, stream, wire
from pipeline.gateway.keys import KeyRing, bearer, hash_key, new_key, valid_hash
from pipeline.intake import validation
from pipeline.intake.bounds import RequestBounds

REPLIES = dict(reply_topic="llm.gateway.gw.responses", chunk_topic="llm.gateway.gw.chunks")


def parse(bounds=RequestBounds(), **body):
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return wire.parse_chat(body, "acme", **REPLIES, bounds=bounds)


def test_a_body_becomes_a_request_of_the_keys_tenant():
    chat = parse(model="gpt-4o-mini", tenant="evil", max_completion_tokens=50, temperature=0.2,
                 stop="END", seed=3, user="u1", stream=True, metadata={"k": "v"},
                 stream_options={"include_usage": True},
                 llmpipe={"team": "search", "priority": "standard", "budget_per_mtok": "2.5"})
    r = chat.request
    assert r.tenant == "acme" and r.model == "gpt-4o-mini" and r.end_user == "u1"
    assert (r.params.max_tokens, r.params.temperature, r.params.stop, r.params.seed) == \
        (50, 0.2, ["END"], 3)
    assert r.team == "search" and r.hints.priority == "standard"
    assert str(r.hints.budget_per_mtok) == "2.5"
    assert r.stream and chat.include_usage and r.chunk_topic == REPLIES["chunk_topic"]
    assert r.reply_topic == REPLIES["reply_topic"] and r.metadata == {"k": "v"}


def test_defaults_auto_model_interactive_and_text_parts():
    chat = parse(model="auto", messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    r = chat.request
    assert r.model is None and r.hints.priority == "interactive" and not r.stream
    assert r.chunk_topic is None
    assert [(m.role, m.content, m.parts) for m in r.messages] == \
        [("system", "be brief", []), ("user", "a\nb", [])]
    assert r.params.n == 1 and not r.params.logprobs and r.tools == [] and r.tool_choice is None
    assert r.response_format is None and r.parallel_tool_calls is None and r.embedding is None


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                           "parameters": WEATHER, "strict": True}},
         {"type": "function", "function": {"name": "noop"}}]
CONVERSATION = [
    {"role": "system", "content": [{"type": "text", "text": "You help."}]},
    {"role": "user", "name": "ann", "content": [
        {"type": "text", "text": "What is here, and the weather?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
    {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "12C"}]},
    {"role": "assistant", "content": None, "refusal": "I cannot say more."},
    {"role": "user", "content": "Thanks"}]


def test_every_field_of_the_chat_api_reaches_the_request():
    r = parse(model="gpt-4o", messages=CONVERSATION, tools=TOOLS,
              tool_choice={"type": "function", "function": {"name": "get_weather"}},
              parallel_tool_calls=False, n=3, presence_penalty=0.5, frequency_penalty=-1,
              logprobs=True, top_logprobs=5, top_p=0.9, max_tokens=20,
              response_format={"type": "json_schema", "json_schema": {
                  "name": "Answer", "description": "the reply", "strict": True,
                  "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
              store=True, service_tier="auto", modalities=["text"], safety_identifier="u9",
              prompt_cache_key="k").request
    system, user, call, result, refusal, last = r.messages
    assert system.content == "You help." and system.parts == []
    assert user.name == "ann" and user.content == "" and user.text == \
        "What is here, and the weather?"
    assert [(p.type, p.url, p.detail) for p in user.images] == [
        ("image_url", "https://example.com/a.png", "low"),
        ("image_url", "data:image/png;base64,iVBORw0KGgo=", None)]
    assert call.role == "assistant" and call.content == "" and call.tool_calls == [
        ToolCall("call_1", "get_weather", '{"city": "Oslo"}')]
    assert (result.role, result.tool_call_id, result.content) == ("tool", "call_1", "12C")
    assert refusal.content == "I cannot say more.", "an earlier refusal is what was said"
    assert last.content == "Thanks"
    weather, noop = r.tools
    assert (weather.name, weather.description, weather.strict) == \
        ("get_weather", "Weather now", True)
    assert json.loads(weather.parameters) == WEATHER
    assert (noop.name, noop.description, noop.parameters, noop.strict) == \
        ("noop", None, "{}", False)
    assert r.tool_choice == ToolChoice("function", "get_weather")
    assert r.parallel_tool_calls is False
    fmt = r.response_format
    assert (fmt.type, fmt.name, fmt.strict) == ("json_schema", "Answer", True)
    assert json.loads(fmt.schema) == {"type": "object", "description": "the reply",
                                      "properties": {"a": {"type": "integer"}}}
    p = r.params
    assert (p.n, p.presence_penalty, p.frequency_penalty, p.logprobs, p.top_logprobs) == \
        (3, 0.5, -1.0, True, 5)
    assert (p.top_p, p.max_tokens) == (0.9, 20)
    assert r.end_user == "u9", "safety_identifier names the end user when user is absent"
    validation.check_request(r, r.created_at_ms, RequestBounds())   # intake takes it whole


@pytest.mark.parametrize("choice, expected", [
    ("none", ToolChoice("none")), ("auto", ToolChoice("auto")),
    ("required", ToolChoice("required")), (None, None)])
def test_tool_choice_modes(choice, expected):
    assert parse(tools=TOOLS, tool_choice=choice).request.tool_choice == expected


@pytest.mark.parametrize("fmt", [{"type": "text"}, {"type": "json_object"}])
def test_simple_response_formats(fmt):
    assert parse(response_format=fmt).request.response_format == ResponseFormat(fmt["type"])


def test_what_the_sdk_sends_back_with_a_reply_appended_is_accepted():
    """``messages.append(completion.choices[0].message)`` sends the reply's own fields
    back, nulls and the parsed copy included."""
    r = parse(messages=[{"role": "user", "content": "hi"},
                        {"content": '{"a":1}', "refusal": None, "role": "assistant",
                         "tool_calls": None, "parsed": {"a": 1}, "function_call": None,
                         "audio": None, "annotations": []},
                        {"role": "user", "content": "again"}]).request
    assert [m.content for m in r.messages] == ["hi", '{"a":1}', "again"]


def user(*parts):
    return {"messages": [{"role": "user", "content": list(parts)}]}


def after_call(message):
    return {"messages": [{"role": "user", "content": "x"}, {
        "role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                             "function": {"name": "f", "arguments": "{}"}}]},
        message]}


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "colour": "red"}]}, "messages[0].colour"),
    ({"messages": [{"role": "assistant", "content": "x",
                    "function_call": {"name": "f", "arguments": "{}"}}]},
     "messages[0].function_call"),
    ({"messages": [{"role": "assistant", "content": "x", "audio": {"id": "a"}}]},
     "messages[0].audio"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [{}]}]},
     "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "custom",
                                                         "custom": {}}]}]},
     "messages[0].tool_calls[0].type"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages[0].tool_calls[0].id"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{city"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f g", "arguments": "{}"}}]}]},
     "messages[0].tool_calls[0].function.name"),
    (after_call({"role": "tool", "content": "r"}), "messages[2].tool_call_id"),
    (after_call({"role": "tool", "tool_call_id": "c9", "content": "r"}),
     "messages[2].tool_call_id"),
    ({"messages": [{"role": "tool", "tool_call_id": "c1", "content": "r"}]},
     "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_call_id": "c1"}]},
     "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "refusal": "no"}]}, "messages[0].refusal"),
    (user({"type": "image_url"}), "messages[0].content[0].image_url"),
    (user({"type": "image_url", "image_url": {"url": "ftp://x/a.png"}}),
     "messages[0].content[0].image_url.url"),
    (user({"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}),
     "messages[0].content[0].image_url.url"),
    (user({"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "max"}}),
     "messages[0].content[0].image_url.detail"),
    (user({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}),
     "messages[0].content[0].type"),
    (user({"type": "file", "file": {"file_id": "f"}}), "messages[0].content[0].type"),
    (user({"type": "text"}), "messages[0].content[0].text"),
    ({"messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]},
     "messages[0].content[0].type"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f",
                                                  "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
     "tools[0].function.strict"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools[2].function.name"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]},
     "tools"),
    ({"tool_choice": "always", "tools": TOOLS}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls"),
    ({"tool_choice": {"type": "function", "function": {"name": "other"}}, "tools": TOOLS},
     "tool_choice.function.name"),
    ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}, "tools": TOOLS},
     "tool_choice"),
    ({"parallel_tool_calls": "no", "tools": TOOLS}, "parallel_tool_calls"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": []}}},
     "response_format.json_schema.schema"),
    ({"n": 0}, "n"),
    ({"n": 9}, "n"),
    ({"n": 3, "bounds": RequestBounds(max_choices=2)}, "n"),
    ({"n": 1.5}, "n"),
    ({"n": 2, "stream": True}, "n"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"logprobs": 1}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_completion_tokens": "ten", "max_tokens": 5}, "max_completion_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"stream_options": {"chunk_size": 3}}, "stream_options.chunk_size"),
    ({"stop": [1]}, "stop"),
    ({"model": 4}, "model"),
    ({"user": 4}, "user"),
    ({"llmpipe": {"tenant": "x"}}, "llmpipe"),
    ({"llmpipe": {"priority": "urgent"}}, "llmpipe.priority"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"temprature": 0.2}, "temprature"),
])
def test_every_bad_shape_is_a_400_naming_its_field(body, param):
    with pytest.raises(wire.BadRequest) as exc:
        parse(**body)
    assert exc.value.param == param, exc.value.message


def test_refusals_say_what_to_do_and_unknown_fields_are_named_as_openai_does():
    for body, words in [({"functions": [{"name": "f"}]}, "use tools"),
                        ({"n": 2, "stream": True}, "stream"),
                        ({"temprature": 0.2}, "Unrecognized request argument supplied: temprature"),
                        ({"top_logprobs": 3}, "requires logprobs")]:
        with pytest.raises(wire.BadRequest) as exc:
            parse(**body)
        assert words in exc.value.message


def test_null_and_empty_values_of_refused_and_ignored_fields_are_no_request():
    r = parse(functions=[], logit_bias={}, audio=None, reasoning_effort=None, tools=[],
              tool_choice=None, response_format=None, n=None, store=False,
              stream_options={"include_obfuscation": False}).request
    assert r.tools == [] and r.params.n == 1


def test_answers_in_openai_shapes():
    ok = Response(request_id="r1", tenant="acme", status="ok", completed_at_ms=1_700_000_000_000,
                  content="hello", finish_reason="stop", model="gpt-4o-mini", prompt_tokens=3,
                  completion_tokens=2, cached_tokens=1)
    body = wire.completion_body(ok, None)
    assert body["id"] == "chatcmpl-r1" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello",
                                             "refusal": None}
    assert body["usage"]["total_tokens"] == 5
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 1}
    assert wire.usage_chunk(ok, 1, "m")["choices"] == []
    assert wire.sse("[DONE]") == b"data: [DONE]\n\n"


def test_every_choice_in_the_shape_the_sdk_validates():
    logprobs = {"content": [{"token": "ok", "logprob": -0.01, "bytes": [111, 107],
                             "top_logprobs": []}], "refusal": None}
    r = Response(request_id="r1", tenant="acme", status="ok", completed_at_ms=1_700_000_000_000,
                 model="gpt-4o", finish_reason="tool_calls", prompt_tokens=9,
                 completion_tokens=7, tool_calls=[ToolCall("c1", "f", '{"a": 1}')],
                 more_choices=[Choice(2, "ok", "length", logprobs=json.dumps(logprobs)),
                               Choice(1, None, "stop", refusal="No.")])
    body = ChatCompletion.model_validate(wire.completion_body(r, None))
    calls, refusal, text = body.choices
    assert [c.index for c in body.choices] == [0, 1, 2]
    assert calls.message.content is None and calls.finish_reason == "tool_calls"
    assert calls.message.tool_calls[0].model_dump() == {
        "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    assert (refusal.message.content, refusal.message.refusal) == (None, "No.")
    assert (text.message.content, text.finish_reason) == ("ok", "length")
    assert text.logprobs.content[0].bytes == [111, 107]
    # a Response that names no finish reason: tool_calls when it made calls, else stop
    assert wire.completion_body(r.replace(finish_reason=None, more_choices=[]),
                                None)["choices"][0]["finish_reason"] == "tool_calls"
    assert wire.completion_body(r.replace(finish_reason=None, tool_calls=[], content="x"),
                                None)["choices"][0]["finish_reason"] == "stop"


def sse_chunks(parts: list[bytes]) -> list[ChatCompletionChunk | str]:
    out = []
    for part in parts:
        data = part.decode().removeprefix("data: ").strip()
        out.append(data if data == "[DONE]" else ChatCompletionChunk.model_validate_json(data))
    return out


def test_stream_endings_complete_text_and_tool_calls_in_the_chunk_shape():
    r = Response(request_id="r1", tenant="acme", status="ok", completed_at_ms=1,
                 content="Hello", tool_calls=[ToolCall("c1", "f", '{"a": 1}'),
                                              ToolCall("c2", "g", "{}")])
    carried = stream.Carried()
    carried.add(Chunk("r1", "acme", "s", 0, "He", 1, tool_calls=[
        ToolCallDelta(0, "c1", "f", '{"a"')]))
    text, calls, finish, usage, done = sse_chunks(stream.ending(r, carried, 1, "m", True))
    assert text.choices[0].delta.content == "llo"
    first, second = calls.choices[0].delta.tool_calls
    assert (first.index, first.id, first.type, first.function.name, first.function.arguments) \
        == (0, None, None, None, ": 1}"), "a started call gets only the rest of its arguments"
    assert (second.index, second.id, second.type, second.function.name,
            second.function.arguments) == (1, "c2", "function", "g", "{}")
    assert finish.choices[0].finish_reason == "tool_calls" and usage.usage.total_tokens == 0
    assert done == "[DONE]"


def test_carried_pieces_that_are_not_the_start_of_the_answer_are_no_splice():
    calls = [ToolCall("c1", "f", '{"a": 1}')]
    assert stream.rest_of_calls(calls, {0: ToolCallDelta(0, "c1", "f", '{"b"')}) is None
    assert stream.rest_of_calls(calls, {0: ToolCallDelta(0, "c1", "g", "")}) is None
    assert stream.rest_of_calls(calls, {1: ToolCallDelta(1, "c2", "f", "")}) is None
    assert stream.rest_of_calls(calls, {0: ToolCallDelta(0, "c1", "f", '{"a": 1}')}) == []
    assert stream.rest_of_calls([], {}) == []


def test_tool_call_pieces_name_the_call_on_its_first_piece_only():
    first, later = wire.tool_call_deltas([ToolCallDelta(0, "c1", "f", ""),
                                          ToolCallDelta(0, None, None, '{"a"')])
    assert first == {"index": 0, "id": "c1", "type": "function",
                     "function": {"name": "f", "arguments": ""}}
    assert later == {"index": 0, "function": {"arguments": '{"a"'}}
    body = wire.chunk_body("r1", 1, "m", {"tool_calls": [first, later]})
    assert ChatCompletionChunk.model_validate(body).choices[0].delta.tool_calls[1].index == 0


def test_embeddings_answer_in_the_shape_the_sdk_validates():
    r = Response(request_id="r1", tenant="acme", status="ok", completed_at_ms=1,
                 model="text-embedding-3-small", prompt_tokens=4,
                 embeddings=[[0.5, -0.25], [1.0, 2.0]])
    body = CreateEmbeddingResponse.model_validate(
        embeddings.embeddings_body(r, "asked", "float"))
    assert [d.embedding for d in body.data] == [[0.5, -0.25], [1.0, 2.0]]
    assert [d.index for d in body.data] == [0, 1] and body.usage.total_tokens == 4
    packed = embeddings.embeddings_body(r, "asked", "base64")["data"][1]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(packed)) == (1.0, 2.0)


def parse_embeddings(**body):
    return embeddings.parse_embeddings(body, "acme", reply_topic=REPLIES["reply_topic"])


def test_an_embeddings_body_becomes_an_embedding_request_of_the_keys_tenant():
    call = parse_embeddings(model="text-embedding-3-small", input="hello", dimensions=256,
                            tenant="evil",
                            encoding_format="base64", user="u1", llmpipe={"team": "search"})
    r = call.request
    assert (r.tenant, r.model, r.end_user, r.team, r.messages) == \
        ("acme", "text-embedding-3-small", "u1", "search", [])
    assert r.embedding == EmbeddingInput(["hello"], 256) and call.encoding_format == "base64"
    assert r.hints.priority == "interactive" and not r.stream
    assert parse_embeddings(model="m", input=["a", "b"]).encoding_format == "float"
    assert parse_embeddings(model="auto", input="a").request.model is None, "the default model"
    validation.check_request(r, r.created_at_ms, RequestBounds())


@pytest.mark.parametrize("body, param", [
    ({"input": "a"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": [""]}, "input"),
    ({"model": "m", "input": [1, 2]}, "input"),
    ({"model": "m", "input": [[1, 2]]}, "input"),
    ({"model": "m", "input": ["a", 3.5]}, "input"),
    ({"model": "m", "input": ["a"] * 2049}, "input"),
    ({"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
    ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "m", "input": "a", "user": 1}, "user"),
    ({"model": "m", "input": "a", "colour": "red"}, "colour"),
])
def test_bad_embeddings_bodies_are_400s_naming_the_field(body, param):
    with pytest.raises(wire.BadRequest) as exc:
        parse_embeddings(**body)
    assert exc.value.param == param, exc.value.message


@pytest.mark.parametrize("code, status", [
    (errors.INVALID_REQUEST, 400), (errors.CONTEXT_LENGTH_EXCEEDED, 400),
    ("invalid_api_key", 401), (errors.BUDGET_EXCEEDED, 402), (errors.MODEL_NOT_ALLOWED, 403),
    (errors.UNKNOWN_MODEL, 404), (errors.DUPLICATE, 409), (wire.TOO_LARGE, 413),
    (errors.RATE_LIMITED, 429),
    (errors.PROVIDER_ERROR, 502), (errors.OVERLOADED, 503), (errors.BREAKER_OPEN, 503),
    (errors.TIMEOUT, 504), ("something_new", 500)])
def test_error_codes_map_to_statuses(code, status):
    assert wire.status_of(code) == status
    assert wire.error_body(code, "why")["error"]["message"] == "why"
    assert ErrorInfo(code, "why").code == code


def test_keys_are_stored_as_hashes_and_name_their_tenant():
    key = new_key()
    digest = hash_key(key)
    assert valid_hash(digest) and key not in digest
    ring = KeyRing()
    ring.update("acme", TenantPolicy(tenant="acme", api_keys=[digest, "plain-text-key"]))
    assert ring.tenant(key) == "acme" and len(ring) == 1
    assert ring.tenant("plain-text-key") is None and ring.tenant(None) is None
    # a key claimed by two tenants names neither
    ring.update("globex", TenantPolicy(tenant="globex", api_keys=[digest]))
    assert ring.tenant(key) is None
    # revoking: the policy without the key
    ring.update("acme", TenantPolicy(tenant="acme"))
    ring.update("globex", None)
    assert ring.tenant(key) is None and len(ring) == 0
    assert bearer(f"Bearer {key}") == key and bearer("Basic x") is None and bearer(None) is None


def test_the_rest_of_an_answer_after_what_a_stream_carried():
    r = Response(request_id="r1", tenant="acme", status="ok", completed_at_ms=1,
                 content="Hello there")
    assert r.rest_after("") == "Hello there" and r.rest_after("Hello") == " there"
    assert r.rest_after("Hello there") == ""
    assert r.rest_after("Howdy") is None, "a different answer: nothing to splice"
    assert r.replace(content=None).rest_after("") == ""
