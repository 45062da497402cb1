"""The gateway's pure parts: an OpenAI body as our Request (tenant from the key), answers
in OpenAI's shapes, error codes as HTTP statuses, and API keys kept only as hashes."""

from __future__ import annotations

import pytest

from pipeline import errors
from pipeline.events.models import ErrorInfo, Response, TenantPolicy
from pipeline.gateway import wire
from pipeline.gateway.keys import KeyRing, bearer, hash_key, new_key, valid_hash

REPLIES = dict(reply_topic="llm.gateway.gw.responses", chunk_topic="llm.gateway.gw.chunks")


def parse(**body):
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return wire.parse_chat(body, "acme", **REPLIES)


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
    assert [(m.role, m.content) for m in r.messages] == [("system", "be brief"), ("user", "a\nb")]


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"n": 2}, "n"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"stop": [1]}, "stop"),
    ({"llmpipe": {"tenant": "x"}}, "llmpipe"),
    ({"llmpipe": {"priority": "urgent"}}, "llmpipe.priority"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{}]}]}, "messages[0]"),
])
def test_what_cannot_be_carried_is_refused_naming_the_field(body, param):
    with pytest.raises(wire.BadRequest) as exc:
        parse(**body)
    assert exc.value.param == param


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
