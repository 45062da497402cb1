"""Intake's bounds on every request field (pipeline/intake/validation.py), and what a refused
request's caller gets back: one error Response it can decode, on a topic it listens to, and
one Usage row that the ledger can store."""

from __future__ import annotations

import json
import random
import uuid

import pytest

from pipeline.catalog import load_catalog
from pipeline.providers.deployments import load_deployments
from pipeline.events.codec import Codec
from pipeline.events.models import Response, RoutedRequest, TenantPolicy, Usage
from pipeline.intake import Intake
from pipeline.outputs import Origin
from pipeline.routing.policy import Router, load_routing
from pipeline.settings import Topics
from pipeline.intake.bounds import RequestBounds, load_bounds
from pipeline.intake.validation import reply_topic_allowed, tenant_partition

catalog = load_catalog()
deployments = load_deployments(catalog, env={})
policy = load_routing(catalog)
codec = Codec()
topics = Topics()
NOW = 1_763_900_000_000
PARTITIONS = 6
POLICIES = {"acme": TenantPolicy("acme", reply_topics=["acme.replies", "acme.gw.*"])}


def intake() -> Intake:
    return Intake(codec, catalog, Router(catalog, deployments, policy, random.Random(1)), policy,
                  topics, clock=lambda: NOW, policies=POLICIES.get, bounds=load_bounds(),
                  partitions=PARTITIONS)


def origin(tenant: str = "acme", key: bytes | None = None, partition: int | None = None) -> Origin:
    key = tenant.encode() if key is None else key
    p = tenant_partition(tenant, PARTITIONS) if partition is None else partition
    return Origin(topics.requests, p, 7, key, NOW - 5)


def send(raw: bytes | None = None, where: Origin | None = None, **fields):
    data = {"request_id": str(uuid.uuid4()), "tenant": "acme",
            "messages": [{"role": "user", "content": "hello"}], **fields}
    raw = raw if raw is not None else json.dumps(data).encode()
    return intake().handle(raw, where or origin(data["tenant"]))


def refusal(outs) -> tuple[str, Response, Usage]:
    """The refusal's reply topic, Response and Usage — after the round trip a consumer makes."""
    assert len(outs) == 2, outs
    resp_out, usage_out = outs
    assert usage_out.topic == topics.usage
    encoded = (codec.encode_json(resp_out.event) if resp_out.fmt == "json"
               else codec.encode(resp_out.event, resp_out.topic))
    response = codec.decode(encoded, Response)
    usage = codec.decode(codec.encode(usage_out.event, topics.usage), Usage)
    assert response.status == "error" and usage.status == "error"
    assert usage.error_code == response.error.code
    return resp_out.topic, response, usage


@pytest.mark.parametrize("fields, fragment", [
    ({"messages": [{"role": "user", "content": "hi \ud800"}]}, "messages[0].content is not valid Unicode"),
    ({"metadata": {"k": "v \udfff"}}, "metadata['k'] is not valid Unicode"),
    ({"metadata": {"k\udc00": "v"}}, "metadata key 'k\\udc00' is not valid Unicode"),
    ({"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "x \ud800"}]},
     "messages[1].content is not valid Unicode (lone surrogate U+D800 at index 2)"),
    ({"team": "a\x07b"}, "team holds a control character"),
    ({"team": "*"}, "team '*' is reserved"),
    ({"end_user": "u" * 129}, "end_user is 129 characters long"),
    ({"model": " gpt-4"}, "model has leading or trailing whitespace"),
    ({"created_at_ms": -2**63}, "created_at_ms -9223372036854775808"),
    ({"created_at_ms": 2**62}, "s after intake's clock"),
    ({"created_at_ms": NOW - 86_401_000}, "86,401 s before"),
    ({"created_at_ms": 10**15}, "created_at_ms 1000000000000000"),
    ({"messages": [{"role": "user", "content": "x"}] * 1025}, "1,025 messages"),
    ({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata has 65 entries"),
    ({"metadata": {"k": "v" * 20_000}}, "metadata is 20,001 bytes"),
    ({"params": {"stop": ["x"] * 17}}, "params.stop has 17 sequences"),
    ({"params": {"stop": [""]}}, "params.stop[0] must be 1..256 characters"),
    ({"reply_topic": "not a topic!!"}, "reply_topic 'not a topic!!' is not a valid Kafka topic"),
    ({"reply_topic": "llm.usage"}, "reply_topic 'llm.usage' is not allowed for tenant 'acme'"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob\n"}]}, "messages[0].name holds"),
])
def test_out_of_bounds_fields_are_refused_with_the_field_named(fields, fragment):
    topic, response, usage = refusal(send(**fields))
    assert response.error.code == "invalid_request", response.error
    assert fragment in response.error.message, response.error.message
    assert topic == topics.responses


def test_refused_text_is_echoed_scrubbed_and_the_billing_time_stays_now():
    outs = send(created_at_ms=-2**63, team="support", metadata={"trace": "t \ud800"})
    _, response, usage = refusal(outs)
    assert usage.created_at_ms == NOW - 5               # the broker timestamp, not -2**63
    assert response.latency_ms == 5 and usage.team == "support"
    outs = send(messages=[{"role": "user", "content": "x"}], metadata={"trace": "t \ud800"})
    _, response, _ = refusal(outs)
    assert response.metadata == {"trace": "t \ufffd"}


def test_oversize_metadata_is_not_echoed():
    _, response, _ = refusal(send(metadata={"k": "v" * 20_000}))
    assert response.metadata == {}


def test_a_tenant_with_bad_text_still_gets_a_decodable_refusal():
    outs = intake().handle(json.dumps({"request_id": str(uuid.uuid4()), "tenant": "ac\ud800me",
                                       "messages": [{"role": "user", "content": "x"}]}).encode(),
                           origin())
    _, response, usage = refusal(outs)
    assert "tenant is not valid Unicode" in response.error.message
    assert response.tenant == usage.tenant == "ac\ufffdme"


def test_the_record_must_sit_on_its_tenants_partition_keyed_by_tenant():
    right = tenant_partition("acme", PARTITIONS)
    wrong = (right + 1) % PARTITIONS
    [routed] = send(where=origin(partition=right))
    assert isinstance(routed.event, RoutedRequest)
    _, response, _ = refusal(send(where=origin(partition=wrong)))
    assert f"belongs on partition {right} of llm.requests" in response.error.message
    _, response, _ = refusal(send(where=origin(key=b"globex")))
    assert "record key must be the tenant id ('acme')" in response.error.message
    _, response, _ = refusal(send(where=Origin(topics.requests, right, 1, None, NOW)))
    assert "this record has no key" in response.error.message


def test_request_size_is_bounded():
    big = "word " * 200_000
    _, response, _ = refusal(send(messages=[{"role": "user", "content": big}]))
    assert "bytes; at most 900,000 are accepted" in response.error.message


def test_reply_topics_allowed_by_policy():
    p = POLICIES["acme"]
    assert reply_topic_allowed(topics.responses, topics.responses, None)
    assert not reply_topic_allowed("acme.replies", topics.responses, None)
    assert reply_topic_allowed("acme.replies", topics.responses, p)
    assert reply_topic_allowed("acme.gw.7", topics.responses, p)
    assert not reply_topic_allowed("acme.gw", topics.responses, p)
    [routed] = send(reply_topic="acme.gw.7")
    assert routed.event.reply_topic == "acme.gw.7"
    # a refusal goes where the caller listens when that topic is allowed
    topic, _, _ = refusal(send(reply_topic="acme.replies", params={"max_tokens": 0}))
    assert topic == "acme.replies"


def test_valid_names_pass():
    for tenant in ("acme", "租户-01", "team.a_b:c@d+e"):
        [routed] = send(tenant=tenant, team="支持", end_user="user-1")
        assert isinstance(routed.event, RoutedRequest)


def test_bounds_load_from_config_and_must_leave_room_under_the_message_size(tmp_path):
    assert load_bounds() == RequestBounds()
    with pytest.raises(Exception, match="at most 90% of the broker's message size"):
        load_bounds(max_message_bytes=500_000)


def test_gateway_reply_topics_are_open_to_every_tenant_and_chunk_topics_are_checked():
    responses, chunks = topics.gateway_replies("gw-1")
    assert reply_topic_allowed(responses, topics.responses, None, topics)
    assert reply_topic_allowed(chunks, topics.chunks, None, topics)
    assert not reply_topic_allowed("llm.gateway.gw-1.usage", topics.responses, None, topics)
    [routed] = send(reply_topic=responses, chunk_topic=chunks, stream=True)
    assert routed.event.reply_topic == responses
    assert routed.event.request.chunk_topic == chunks and routed.event.request.stream
    _, response, _ = refusal(send(chunk_topic="llm.usage", stream=True))
    assert "chunk_topic 'llm.usage' is not allowed" in response.error.message
