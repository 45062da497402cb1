"""Codec: Confluent wire format round trips, the reference `avro` package as an oracle,
schema defaults, JSON requests, and clear errors on bad bytes."""

from __future__ import annotations

import io
import json
import struct
import uuid
from decimal import Decimal

import avro.io
import avro.schema
import pytest

from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import (EVENT_TYPES, AttemptRecord, Batch, ChatMessage, DeadLetter,
                                    GenerationParams, Request, Response, RouteDecision,
                                    RoutedRequest, RoutingHints, TenantPolicy, Budget, Usage, Alert,
                                    ErrorInfo, CanaryRule, Choice, Chunk, ContentPart,
                                    EmbeddingInput, ResponseFormat, Tool, ToolCall, ToolCallDelta,
                                    ToolChoice)
from pipeline.events.registry import LocalRegistry

codec = Codec()
registry = LocalRegistry()


def a_request(**kw) -> Request:
    base = dict(request_id=str(uuid.uuid4()), tenant="acme", team="search", end_user="u-1",
                created_at_ms=1_763_000_000_000, model="gpt-4",
                messages=[ChatMessage("system", "be brief"), ChatMessage("user", "总结一下这段话 and more")],
                params=GenerationParams(max_tokens=256, temperature=0.2, stop=["\n\n"], seed=3),
                hints=RoutingHints(required_quality=0.9, max_latency_ms=800,
                                   budget_per_mtok=Decimal("1.250000000"), priority="interactive"),
                reply_topic="replies.acme", metadata={"trace": "abc"})
    base.update(kw)
    return Request(**base)


def samples():
    req = a_request()
    routed = RoutedRequest(
        request=req, route=RouteDecision("deepseek-v3.2", "deepseek-v3.2", "deepseek", "budget",
                                         region="cn-north", complexity=0.2, candidates=["deepseek-v3.2"]),
        max_tokens=256, reply_topic="llm.responses", received_at_ms=1, routed_at_ms=2,
        fallbacks=["google-gemini-2.5-flash"], tried=[AttemptRecord("x", "timeout", 3)])
    return [
        req, routed,
        Batch(str(uuid.uuid4()), "deepseek-v3.2", 1, 2, [routed, routed]),
        Response(req.request_id, "acme", "error", 5, error=ErrorInfo("timeout", "slow", True),
                 tried=["a", "b"], metadata={"k": "v"}),
        Usage(req.request_id, "acme", 1, 2, "ok", prompt_tokens=10, completion_tokens=20,
              cost_nanos=12_000_000_000_000),
        Alert(str(uuid.uuid4()), "spend", "firing", "10.5", "10", 7, labels={"a": "b"}),
        DeadLetter("llm.requests", 3, 99, "undecodable", "bad", "intake", 8, key=b"k", value=b"\x00\xff"),
        TenantPolicy("acme", budgets=[Budget("day", hard_usd=Decimal("100.000000000"))],
                     canary=CanaryRule("c1", 10, "deepseek-v3.2")),
        a_chat_request_with_everything(),
        Request(str(uuid.uuid4()), "acme", [], model="text-embedding-3-small",
                embedding=EmbeddingInput(["一", "two"], dimensions=256)),
        Response(req.request_id, "acme", "ok", 5, content=None, finish_reason="tool_calls",
                 tool_calls=[ToolCall("call_1", "get_weather", '{"city": "Paris"}')],
                 refusal=None, logprobs='{"content": []}',
                 more_choices=[Choice(1, "two", "stop"), Choice(2, None, "tool_calls",
                                                               [ToolCall("c", "f", "{}")])]),
        Response(req.request_id, "acme", "ok", 5, embeddings=[[0.5, -0.25], [1.0, 0.0]]),
        Chunk(req.request_id, "acme", "s", 0, "", 9,
              tool_calls=[ToolCallDelta(0, "call_1", "get_weather", '{"ci'),
                          ToolCallDelta(0, arguments='ty": "Paris"}')]),
    ]


def a_chat_request_with_everything() -> Request:
    """Every chat feature the contract carries (issue 19)."""
    return a_request(
        messages=[ChatMessage("system", "be brief"),
                  ChatMessage("user", "", parts=[ContentPart("text", "what is this?"),
                                                 ContentPart("image_url", url="https://x/a.png",
                                                             detail="low")]),
                  ChatMessage("assistant", "", tool_calls=[ToolCall("call_1", "look", "{}")]),
                  ChatMessage("tool", "a cat", tool_call_id="call_1")],
        params=GenerationParams(max_tokens=64, n=2, presence_penalty=0.5, frequency_penalty=-0.5,
                                logprobs=True, top_logprobs=3),
        tools=[Tool("look", "looks", '{"type": "object", "properties": {}}', strict=True)],
        tool_choice=ToolChoice("function", "look"), parallel_tool_calls=False,
        response_format=ResponseFormat("json_schema", "answer", '{"type": "object"}', True))


@pytest.mark.parametrize("event", samples(), ids=lambda e: type(e).__name__)
def test_round_trip_avro(event):
    data = codec.encode(event, "llm.test")
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == registry.current(event.AVRO_NAME).schema_id
    assert codec.decode(data, type(event)) == event


@pytest.mark.parametrize("event", samples(), ids=lambda e: type(e).__name__)
def test_reference_avro_reads_ours_and_we_read_theirs(event):
    """The reference implementation is the oracle: byte-identical encoding both ways."""
    version = registry.current(event.AVRO_NAME)
    ref_schema = avro.schema.parse(json.dumps(version.schema))
    ours = codec.encode(event, "llm.test")
    decoded = avro.io.DatumReader(ref_schema).read(avro.io.BinaryDecoder(io.BytesIO(ours[5:])))
    buf = io.BytesIO()
    avro.io.DatumWriter(ref_schema).write(_for_reference(decoded), avro.io.BinaryEncoder(buf))
    assert buf.getvalue() == ours[5:]
    assert codec.decode(ours[:5] + buf.getvalue(), type(event)) == event


def _for_reference(value):
    # the reference package hands back uuid strings and Decimals as-is: nothing to convert
    return value


def test_defaults_fill_missing_fields_in_json():
    rid = str(uuid.uuid4())
    req = codec.decode(json.dumps({"request_id": rid, "tenant": "t",
                                   "messages": [{"role": "user", "content": "hi"}]}).encode(), Request)
    assert req.params == GenerationParams() and req.hints.priority == "standard"
    assert req.metadata == {} and req.model is None and req.reply_topic is None


def test_json_decimal_budget_is_exact():
    rid = str(uuid.uuid4())
    req = codec.decode(json.dumps({"request_id": rid, "tenant": "t", "messages": [{"role": "user", "content": "x"}],
                                   "hints": {"budget_per_mtok": 0.1}}).encode(), Request)
    assert req.hints.budget_per_mtok == Decimal("0.1")


@pytest.mark.parametrize("raw, code, fragment", [
    (b"", "undecodable", "empty"),
    (b"\x07garbage", "undecodable", "magic byte 0x07"),
    (b"\x01\x00\x00\x00\x01xx", "undecodable", "magic byte 0x01"),
    (b"\x00\x00\x00\x00\x2a\x02", "unknown_schema", "schema id 42"),
    (b"{not json", "undecodable", "not valid JSON"),
    (b"[1,2]", "undecodable", "magic byte 0x5b"),
    (b'  "str"', "undecodable", "magic byte 0x20"),
    (b'{"tenant": "t", "messages": []}', "schema_violation", "request_id: required field is missing"),
    (b'{"request_id": "nope", "tenant": "t", "messages": []}', "schema_violation", "is not a UUID"),
    (b'{"request_id": "6f1c3f0e-8d0e-4a55-9f0b-0d8a3f1d2c11", "tenant": "t", "messages": [], "max_token": 5}',
     "schema_violation", "unknown field(s) max_token"),
    (b'{"request_id": "6f1c3f0e-8d0e-4a55-9f0b-0d8a3f1d2c11", "tenant": 5, "messages": []}',
     "schema_violation", "tenant: expected a string"),
    (b'{"request_id": "6f1c3f0e-8d0e-4a55-9f0b-0d8a3f1d2c11", "tenant": "t", "messages": [],'
     b' "params": {"max_tokens": "lots"}}', "schema_violation", "max_tokens"),
    (b'{"request_id": "6f1c3f0e-8d0e-4a55-9f0b-0d8a3f1d2c11", "tenant": "t", "messages": [],'
     b' "hints": {"budget_per_mtok": "1e30"}}', "schema_violation",
     "budget_per_mtok: 1e30 does not fit 18 digits with 9 decimals"),
    (b'{"request_id": "6f1c3f0e-8d0e-4a55-9f0b-0d8a3f1d2c11", "tenant": "t", "messages": [],'
     b' "hints": {"budget_per_mtok": 1e12}}', "schema_violation", "does not fit 18 digits"),
])
def test_bad_bytes_give_a_code_and_a_reason(raw, code, fragment):
    with pytest.raises(DecodeError) as info:
        codec.decode(raw, Request)
    assert info.value.code == code
    assert fragment in info.value.reason


def test_truncated_avro_body_is_undecodable():
    data = codec.encode(a_request(), "llm.requests")
    with pytest.raises(DecodeError) as info:
        codec.decode(data[:-7], Request)
    assert info.value.code == "undecodable"


def test_trailing_bytes_are_rejected():
    data = codec.encode(a_request(), "llm.requests")
    with pytest.raises(DecodeError):
        codec.decode(data + b"\x00\x01", Request)


def test_json_response_round_trip():
    resp = samples()[3]
    assert codec.decode(codec.encode_json(resp), Response) == resp


def test_every_event_type_has_a_schema():
    assert set(EVENT_TYPES) == {name for name, version in registry.versions if version == 0}


def test_a_request_written_with_an_older_schema_still_decodes():
    """Producers on request.v1 / v2 (before tools, parts, n, embeddings) keep working: the
    new fields take their defaults."""
    import fastavro
    old = registry.versions[("Request", 1)]
    record = {k: v for k, v in a_request(stream=False).to_dict().items()
              if k in {f["name"] for f in old.schema["fields"]}}
    record["messages"] = [{"role": "user", "content": "hi", "name": None}]
    record["params"] = {k: record["params"][k] for k in
                        ("max_tokens", "temperature", "top_p", "stop", "seed")}
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, old.schema_id))
    fastavro.schemaless_writer(buf, old.parsed, record)
    decoded = codec.decode(buf.getvalue(), Request)
    assert decoded.messages == [ChatMessage("user", "hi")]
    assert decoded.params.n == 1 and decoded.tools == [] and decoded.embedding is None
    assert decoded.response_format is None and decoded.tool_choice is None


@pytest.mark.parametrize("event", samples(), ids=lambda e: type(e).__name__)
def test_compiled_conversions_agree_with_the_generic_walk(event):
    """event.py converts with per-class work done once (issue 17); the generic walk it
    replaced stays as the reference, on every sample and on the JSON shape."""
    from pipeline.events.event import _from_plain_generic, _to_plain_generic

    plain = event.to_dict()
    assert plain == _to_plain_generic(event)
    assert type(event).from_dict(plain) == _from_plain_generic(type(event), plain) == event
    via_json = json.loads(codec.encode_json(event))
    assert type(event).from_dict(via_json) == _from_plain_generic(type(event), via_json)
