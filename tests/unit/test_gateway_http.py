"""The gateway's HTTP app driven by the official ``openai`` SDK, in process: the SDK's own
requests go through the real routes, and a scripted pipeline stands in for Kafka and the
workers (each published Request is answered with the Chunks and Response a test gives).
What the SDK sends must reach the Request; what the gateway answers must parse, stream
and reassemble in the SDK as it would from OpenAI."""

from __future__ import annotations

import base64
import json
import struct
from typing import Callable

import httpx2
import openai
import pydantic
import pytest

from pipeline.events.models import (ERROR, OK, Choice, Chunk, ErrorInfo, Request, Response,
                                    TenantPolicy, ToolCall, ToolCallDelta)
from pipeline.gateway.app import Gateway
from pipeline.gateway.keys import KeyRing, hash_key
from pipeline.gateway.replies import Replies, Waiter
from pipeline.intake.bounds import RequestBounds

KEY = "sk-test-key"
Script = Callable[[Request], list]


class PassThrough:
    """The codec: the Request itself is the record."""

    def encode(self, event, topic):
        return event


class ScriptedReplies(Replies):
    def __init__(self):
        super().__init__("unused:9092", ("replies", "chunks"), PassThrough())
        self.by_id: dict[str, Waiter] = {}

    def expect(self, tenant: str, request_id: str) -> Waiter:
        waiter = super().expect(tenant, request_id)
        self.by_id[request_id] = waiter
        return waiter


class ScriptedPipeline:
    """The producer: answers each published Request with ``script(request)``."""

    def __init__(self, replies: ScriptedReplies):
        self.replies, self.script, self.requests = replies, None, []

    async def send_and_wait(self, topic, value, key):
        assert key == value.tenant.encode()
        self.requests.append(value)
        for event in self.script(value):
            self.replies.by_id[value.request_id].events.put_nowait(event)


@pytest.fixture
def gateway():
    keys = KeyRing()
    keys.update("acme", TenantPolicy(tenant="acme", api_keys=[hash_key(KEY)]))
    replies = ScriptedReplies()
    gw = Gateway(instance="t", bootstrap="", requests_topic="llm.requests",
                 reply_topics=("replies", "chunks"), codec=PassThrough(), catalog=None,
                 bounds=RequestBounds(), directory=None, keys=keys, replies=replies, wait_s=5)
    gw.producer = pipeline = ScriptedPipeline(replies)
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url="http://gateway/v1", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gw.app())))
    return client, pipeline


def answer(r: Request, **fields) -> Response:
    fields.setdefault("status", OK)
    fields.setdefault("model", "gpt-4o")
    fields.setdefault("prompt_tokens", 10)
    fields.setdefault("completion_tokens", 5)
    return Response(request_id=r.request_id, tenant=r.tenant, completed_at_ms=1_700_000_000_000,
                    **fields)


def chunk(r: Request, seq: int, delta: str = "", calls: list[ToolCallDelta] = ()) -> Chunk:
    return Chunk(request_id=r.request_id, tenant=r.tenant, stream_id="s1", seq=seq, delta=delta,
                 at_ms=1, model="gpt-4o", tool_calls=list(calls))


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}}
CALL = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
USER = [{"role": "user", "content": "Weather in Oslo?"}]


async def test_a_tool_call_round_trip(gateway):
    client, pipeline = gateway
    pipeline.script = lambda r: [answer(r, tool_calls=[CALL], finish_reason="tool_calls")]
    first = await client.chat.completions.create(
        model="gpt-4o", messages=USER, tools=[WEATHER_TOOL], tool_choice="required",
        parallel_tool_calls=False)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_1", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    sent = pipeline.requests[0]
    assert [t.name for t in sent.tools] == ["get_weather"]
    assert sent.tool_choice.mode == "required" and sent.parallel_tool_calls is False

    pipeline.script = lambda r: [answer(r, content="12C and clear.", finish_reason="stop")]
    second = await client.chat.completions.create(model="gpt-4o", tools=[WEATHER_TOOL], messages=[
        *USER, choice.message, {"role": "tool", "tool_call_id": call.id, "content": "12C"}])
    assert second.choices[0].message.content == "12C and clear."
    assistant, tool = pipeline.requests[1].messages[1:]
    assert assistant.tool_calls == [CALL] and (tool.tool_call_id, tool.content) == ("call_1", "12C")


async def test_several_choices_logprobs_and_a_refusal(gateway):
    client, pipeline = gateway
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
                             "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": None}]}],
                "refusal": None}
    pipeline.script = lambda r: [answer(r, content="Hi", finish_reason="stop",
                                        logprobs=json.dumps(logprobs), more_choices=[
        Choice(1, None, "stop", refusal="I can't help with that."),
        Choice(2, "Hey", "length")])]
    done = await client.chat.completions.create(model="gpt-4o", messages=USER, n=3,
                                                logprobs=True, top_logprobs=1)
    first, second, third = done.choices
    assert (first.message.content, first.logprobs.content[0].token) == ("Hi", "Hi")
    assert second.message.refusal == "I can't help with that." and second.message.content is None
    assert (third.index, third.message.content, third.finish_reason) == (2, "Hey", "length")
    p = pipeline.requests[0].params
    assert (p.n, p.logprobs, p.top_logprobs) == (3, True, 1)


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


class City(pydantic.BaseModel):
    city: str


async def test_structured_output_parses_into_the_callers_model(gateway):
    client, pipeline = gateway
    pipeline.script = lambda r: [answer(r, content='{"city": "Oslo", "celsius": 12}')]
    done = await client.chat.completions.parse(model="gpt-4o", messages=USER,
                                               response_format=Weather)
    assert done.choices[0].message.parsed == Weather(city="Oslo", celsius=12)
    fmt = pipeline.requests[0].response_format
    assert (fmt.type, fmt.name, fmt.strict) == ("json_schema", "Weather", True)
    assert json.loads(fmt.schema)["required"] == ["city", "celsius"]


def streamed_call(r: Request, cut: int) -> list:
    """A tool call streamed in pieces, of which the first ``cut`` arrive before the
    Response (which may overtake the rest)."""
    pieces = [ToolCallDelta(0, "call_1", "get_weather", ""), ToolCallDelta(0, None, None, '{"ci'),
              ToolCallDelta(0, None, None, 'ty": "Os'), ToolCallDelta(0, None, None, 'lo"}')]
    chunks = [chunk(r, i, calls=[p]) for i, p in enumerate(pieces)]
    return chunks[:cut] + [answer(r, tool_calls=[CALL], finish_reason="tool_calls")]


@pytest.mark.parametrize("cut", [4, 2, 0], ids=["all-pieces", "response-overtakes", "no-pieces"])
async def test_streamed_tool_call_reassembles_into_valid_json(gateway, cut):
    client, pipeline = gateway
    pipeline.script = lambda r: streamed_call(r, cut)
    async with client.chat.completions.stream(
            model="gpt-4o", messages=USER,
            tools=[openai.pydantic_function_tool(City, name="get_weather")]) as stream:
        async for _ in stream:
            pass
        done = await stream.get_final_completion()
    (call,) = done.choices[0].message.tool_calls
    assert (call.id, call.function.name, done.choices[0].finish_reason) == \
        ("call_1", "get_weather", "tool_calls")
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert call.function.parsed_arguments == City(city="Oslo")


async def test_a_streamed_call_that_differs_from_its_response_ends_in_an_error(gateway):
    """A call re-done after a crash answers differently: the stream says so, never splices."""
    client, pipeline = gateway

    def script(r):
        return [chunk(r, 0, calls=[ToolCallDelta(0, "call_1", "get_weather", '{"city": "Ber')]),
                answer(r, tool_calls=[CALL], finish_reason="tool_calls")]
    pipeline.script = script
    stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True,
                                                  tools=[WEATHER_TOOL])
    with pytest.raises(openai.APIError, match="re-done"):
        async for _ in stream:
            pass


async def test_streamed_text_logprobs_refusal_and_usage(gateway):
    client, pipeline = gateway
    logprobs = {"content": [{"token": "Hel", "logprob": -0.5, "bytes": None, "top_logprobs": []},
                            {"token": "lo", "logprob": -0.2, "bytes": None, "top_logprobs": []}]}
    pipeline.script = lambda r: [chunk(r, 0, "Hel"),
                                 answer(r, content="Hello", logprobs=json.dumps(logprobs))]
    async with client.chat.completions.stream(model="gpt-4o", messages=USER, logprobs=True,
                                              stream_options={"include_usage": True}) as stream:
        done = await stream.get_final_completion()
    assert done.choices[0].message.content == "Hello"
    assert [t.token for t in done.choices[0].logprobs.content] == ["Hel", "lo"]
    assert done.usage.total_tokens == 15

    pipeline.script = lambda r: [answer(r, refusal="No.", finish_reason="stop")]
    async with client.chat.completions.stream(model="gpt-4o", messages=USER) as stream:
        done = await stream.get_final_completion()
    assert done.choices[0].message.refusal == "No."


async def test_bad_bodies_are_400s_the_sdk_raises_naming_the_field(gateway):
    client, pipeline = gateway
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="gpt-4o", messages=USER, n=2, stream=True)
    assert exc.value.param == "n" and exc.value.code == "invalid_request"
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="gpt-4o", messages=USER,
                                             logit_bias={"1": 5})
    assert exc.value.param == "logit_bias"
    with pytest.raises(openai.BadRequestError) as exc:
        await client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3]])
    assert exc.value.param == "input" and "token ids" in exc.value.message
    assert pipeline.requests == [], "nothing refused was published"


VECTORS = [[0.25, -1.5, 3.0], [1e-3, 0.0, -2.0]]


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
async def test_embeddings(gateway, encoding):
    client, pipeline = gateway
    pipeline.script = lambda r: [answer(r, model="text-embedding-3-small", embeddings=VECTORS,
                                        completion_tokens=0)]
    extra = {} if encoding is None else {"encoding_format": encoding}
    done = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"],
                                          dimensions=3, user="u1", **extra)
    got = [d.embedding for d in done.data]
    if encoding == "base64":            # asked for by name: the SDK leaves it as sent
        got = [list(struct.unpack("<3f", base64.b64decode(g))) for g in got]
    assert [v == pytest.approx(w, rel=1e-6) for v, w in zip(got, VECTORS)] == [True, True]
    assert [d.index for d in done.data] == [0, 1] and done.model == "text-embedding-3-small"
    assert (done.usage.prompt_tokens, done.usage.total_tokens) == (10, 10)
    r = pipeline.requests[0]
    assert (r.embedding.inputs, r.embedding.dimensions, r.messages) == (["a", "b"], 3, [])
    assert (r.tenant, r.end_user, r.model, r.hints.priority) == \
        ("acme", "u1", "text-embedding-3-small", "interactive")


async def test_an_embedding_error_is_the_sdks_exception(gateway):
    client, pipeline = gateway
    pipeline.script = lambda r: [answer(r, status=ERROR, error=ErrorInfo(
        "rate_limited", "slow down", retryable=True, retry_after_ms=2000))]
    with pytest.raises(openai.RateLimitError) as exc:
        await client.embeddings.create(model="text-embedding-3-small", input="a")
    assert exc.value.response.headers["retry-after"] == "2"


async def test_cache_control_reaches_the_request_and_a_cache_answer_is_marked(gateway):
    client, pipeline = gateway
    pipeline.script = lambda r: [answer(r, content="Kept.", cache="exact")]
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=USER, extra_headers={"Cache-Control": "no-store"})
    assert raw.headers["x-llmpipe-cache"] == "hit; kind=exact"
    assert pipeline.requests[-1].cache_control == "no-store"
    stream = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=USER, stream=True)
    assert stream.headers["x-llmpipe-cache"] == "hit; kind=exact"       # streamed too
    text = [c.choices[0].delta.content async for c in stream.parse() if c.choices]
    assert "".join(t or "" for t in text) == "Kept."
    pipeline.script = lambda r: [answer(r, content="Fresh.")]
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)
    assert "x-llmpipe-cache" not in raw.headers and pipeline.requests[-1].cache_control == ""


async def test_a_context_override_reaches_the_request_and_what_it_removed_comes_back(gateway):
    client, pipeline = gateway
    note = "context top_k=2: ~900 -> ~400 tokens (-55.6%): retrieved -500 (kept 2 of 6)"
    pipeline.script = lambda r: [answer(r, content="Done.", context=note)]
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=USER, extra_headers={"x-llmpipe-context": "top_k=2"})
    assert raw.headers["x-llmpipe-context"] == note
    assert pipeline.requests[-1].metadata["x-llmpipe-context"] == "top_k=2"
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=USER, metadata={"x-llmpipe-context": "off"})
    assert pipeline.requests[-1].metadata["x-llmpipe-context"] == "off"
    sent = len(pipeline.requests)
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(
            model="gpt-4o", messages=USER, extra_headers={"x-llmpipe-context": "windw=8"})
    assert "windw=8" in str(exc.value) and len(pipeline.requests) == sent   # never published
