"""Publish failures: which are permanent, what replaces an output that can never be published,
and the emitter's per-output isolation, retries and stall bound (pipeline/outputs/rescue.py,
pipeline/agents/flow.py)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiokafka.errors import (InvalidTopicError, KafkaConnectionError, KafkaTimeoutError,
                             MessageSizeTooLargeError, NotLeaderForPartitionError,
                             UnknownTopicOrPartitionError)

from pipeline.outputs import Emitter
from pipeline.outputs.rescue import (BAD_TOPIC, GAVE_UP, TOO_LARGE, UNENCODABLE, Rescuer,
                               Unpublishable, check_record, classify, invalid_topic_name,
                               is_permanent)
from pipeline.events.codec import Codec
from pipeline.events.models import (Alert, Batch, BatchJob, ChatMessage, DeadLetter, Request,
                                    Response, RouteDecision, RoutedRequest, Usage)
from pipeline.outputs import Origin, Out
from pipeline.settings import Topics

topics = Topics()
codec = Codec()


def routed(content: str = "hi", tenant: str = "acme", **request) -> RoutedRequest:
    req = Request(**{"request_id": str(uuid.uuid4()), "tenant": tenant,
                     "messages": [ChatMessage("user", content)], "created_at_ms": 1_000, **request})
    return RoutedRequest(request=req, route=RouteDecision("openai-gpt-4o", "gpt-4o", "openai",
                                                          "pinned"),
                         max_tokens=64, reply_topic=topics.responses, received_at_ms=1_000,
                         routed_at_ms=1_001, tenant_partition=2)


def response(rid: str, content: str = "answer", **kw) -> Response:
    return Response(request_id=rid, tenant="acme", status="ok", completed_at_ms=2_000,
                    content=content, **kw)


@pytest.mark.parametrize("exc, permanent", [
    (MessageSizeTooLargeError(), True), (InvalidTopicError(), True),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), True),
    (OverflowError("int too big"), True), (ValueError("bad"), True),
    (KafkaTimeoutError(), False), (KafkaConnectionError(), False),
    (NotLeaderForPartitionError(), False), (UnknownTopicOrPartitionError(), False),
    (ConnectionError(), False), (RuntimeError("who knows"), False),
])
def test_permanent_and_transient_failures(exc, permanent):
    assert is_permanent(exc) is permanent


def test_classified_codes():
    assert classify(MessageSizeTooLargeError()).code == TOO_LARGE
    assert classify(InvalidTopicError()).code == BAD_TOPIC
    assert classify(OverflowError("x")).code == UNENCODABLE


@pytest.mark.parametrize("name", ["not a topic!!", "", ".", "..", "x" * 250, "tópico", "a/b"])
def test_invalid_topic_names(name):
    assert invalid_topic_name(name)
    with pytest.raises(Unpublishable) as info:
        check_record(name, None, b"v", 1000)
    assert info.value.code == BAD_TOPIC


@pytest.mark.parametrize("name", ["llm.responses", "t1a2.llm.dead-letter", "a_b-c.d", "x" * 249])
def test_valid_topic_names(name):
    assert invalid_topic_name(name) is None


def test_record_size_checked_against_the_broker_limit():
    check_record("t", b"k", b"v" * 400, 1000)
    with pytest.raises(Unpublishable) as info:
        check_record("t", b"k", b"v" * 600, 1000)
    assert info.value.code == TOO_LARGE and "1,000" in info.value.reason


# --- rescues -------------------------------------------------------------------------

rescuer = Rescuer(topics, codec, max_message_bytes=100_000, clock=lambda: 5_000)


def test_unencodable_text_is_scrubbed_not_dropped():
    out = Out("replies.acme", "rid", response(str(uuid.uuid4()), "bad \ud800 text"))
    [copy] = rescuer.rescue(out, Unpublishable(UNENCODABLE, "surrogate"), 0, agent="dispatch")
    assert copy.topic == "replies.acme" and copy.event.content == "bad \ufffd text"


def test_a_response_that_cannot_go_out_becomes_a_short_error_on_the_default_topic():
    rid = str(uuid.uuid4())
    out = Out("replies.gone", rid, response(rid, "x" * 10, metadata={"k": "v"}, latency_ms=12))
    [short] = rescuer.rescue(out, Unpublishable(TOO_LARGE, "too big"), 0, agent="dispatch")
    assert short.topic == topics.responses and short.key == rid
    e = short.event
    assert e.status == "error" and e.error.code == "internal_error" and e.content is None
    assert "too_large" in e.error.message and e.request_id == rid and e.tenant == "acme"
    # and if even that cannot go out: a dead letter naming the request
    [letter] = rescuer.rescue(short, Unpublishable(BAD_TOPIC, "?"), 1, agent="dispatch")
    assert letter.topic == topics.dead_letter and letter.event.request_id == rid


def test_a_routed_request_too_large_ends_in_an_error_response_and_a_usage_row():
    r = routed()
    outs = rescuer.rescue(Out(topics.routed, "dep", r), Unpublishable(TOO_LARGE, "2 MB"), 0,
                          agent="intake")
    assert [o.topic for o in outs] == [topics.responses, topics.usage]
    resp, usage = outs[0].event, outs[1].event
    assert resp.error.code == "invalid_request" and "2 MB" in resp.error.message
    assert usage.status == "error" and usage.error_code == "invalid_request"
    assert outs[1].partition == 2 and usage.request_id == r.request.request_id


def test_a_batch_is_split_and_a_single_request_ends_alone():
    items = [routed(f"q{i}") for i in range(5)]
    batch = Batch(batch_id=str(uuid.uuid4()), deployment="dep", opened_at_ms=1, flushed_at_ms=2,
                  items=items)
    halves = rescuer.rescue(Out(topics.batches, "dep", batch, partition=3),
                            Unpublishable(TOO_LARGE, "big"), 0, agent="batcher")
    assert [len(h.event.items) for h in halves] == [2, 3]
    assert all(h.partition == 3 for h in halves)
    assert len({batch.batch_id, *(h.event.batch_id for h in halves)}) == 3
    single = Batch(batch_id=str(uuid.uuid4()), deployment="dep", opened_at_ms=1, flushed_at_ms=2,
                   items=items[:1])
    outs = rescuer.rescue(Out(topics.batches, "dep", single), Unpublishable(TOO_LARGE, "big"), 0,
                          agent="batcher")
    assert [type(o.event) for o in outs] == [Response, Usage]


def test_a_huge_dead_letter_is_cut_to_fit():
    letter = DeadLetter(source_topic=topics.requests, source_partition=1, source_offset=7,
                        reason_code="undecodable", reason="garbage", agent="intake", at_ms=1,
                        key=b"k", value=b"\x07" * 300_000)
    [cut] = rescuer.rescue(Out(topics.dead_letter, b"k", letter), Unpublishable(TOO_LARGE, "big"),
                           0, agent="intake")
    assert len(cut.event.value) == 100_000 - 16 * 1024
    assert cut.event.source_offset == 7 and "value cut from 300,000" in cut.event.reason


def test_other_events_become_dead_letters_with_their_json_and_ids():
    rid = str(uuid.uuid4())
    usage = Usage(request_id=rid, tenant="acme", created_at_ms=1, completed_at_ms=2, status="ok")
    [letter] = rescuer.rescue(Out(topics.usage, "acme", usage), Unpublishable(BAD_TOPIC, "no"), 0,
                              agent="dispatch", origin_topic=topics.batches, origin_partition=4,
                              origin_offset=9)
    e = letter.event
    assert (e.source_topic, e.source_partition, e.source_offset) == (topics.batches, 4, 9)
    assert e.request_id == rid and e.tenant == "acme" and e.reason_code == BAD_TOPIC
    assert json.loads(e.value)["request_id"] == rid


def test_a_batch_job_is_never_replaced():
    job = BatchJob(job_id=str(uuid.uuid4()), deployment="d", adapter="openai",
                   provider_job_id="p", submitted_at_ms=1, updated_at_ms=1)
    with pytest.raises(Unpublishable):
        rescuer.rescue(Out(topics.batch_jobs, job.job_id, job), Unpublishable(TOO_LARGE, "x"), 0,
                       agent="dispatch")


def test_rescues_end():
    out = Out(topics.responses, "k", response(str(uuid.uuid4())))
    r = Rescuer(topics, codec, 100_000)
    assert r.rescue(out, Unpublishable(BAD_TOPIC, "x"), 3, agent="a") == [] and r.lost == 1


# --- the emitter ----------------------------------------------------------------------

class Broker:
    """A fake producer: ``fail`` decides, per (topic, attempt), what a send raises."""

    def __init__(self, fail=lambda topic, value, n: None, limit: int = 1_000_000):
        self.fail, self.limit = fail, limit
        self.sent: list[tuple[str, bytes]] = []
        self.calls: dict[bytes, int] = {}

    async def send(self, topic, key, value, partition):
        n = self.calls[value] = self.calls.get(value, 0) + 1
        exc = self.fail(topic, value, n)
        fut = asyncio.get_running_loop().create_future()
        if exc is not None:
            fut.set_exception(exc)
        else:
            self.sent.append((topic, value))
            fut.set_result(None)
        return fut

    def events(self, topic, cls):
        return [codec.decode(v, cls) for t, v in self.sent if t == topic]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    async def sleep(self, s):
        self.now += s


def emitter(broker: Broker, clock: Clock | None = None, **kw) -> Emitter:
    clock = clock or Clock()
    return Emitter(broker.send, codec, topics, clock=clock, sleep=clock.sleep, **kw)


async def test_one_bad_output_costs_its_neighbours_nothing():
    good = [routed(f"ok {i}") for i in range(3)]
    bad = routed(created_at_ms=-2**63)
    bad_response = response(bad.request.request_id, latency_ms=2**64)   # does not encode
    broker = Broker()
    outs = [Out(topics.routed, "d", r) for r in good] + [Out(topics.responses, "x", bad_response)]
    await emitter(broker).emit(outs, agent="dispatch")
    assert len(broker.events(topics.routed, RoutedRequest)) == 3
    [short] = broker.events(topics.responses, Response)
    assert short.request_id == bad.request.request_id and short.error.code == "internal_error"
    assert all(n == 1 for n in broker.calls.values())       # nothing sent twice


async def test_transient_failures_are_retried_alone_until_they_pass():
    flaky = routed("flaky")
    flaky_bytes = codec.encode(flaky, topics.routed)
    broker = Broker(lambda topic, value, n: KafkaTimeoutError() if value == flaky_bytes and n < 4
                    else None)
    others = [routed(f"fine {i}") for i in range(2)]
    await emitter(broker).emit([Out(topics.routed, "d", r) for r in [flaky, *others]])
    assert broker.calls[flaky_bytes] == 4
    assert sorted(broker.calls.values()) == [1, 1, 4]
    assert len(broker.events(topics.routed, RoutedRequest)) == 3


async def test_the_broker_refusing_a_size_is_not_retried():
    broker = Broker(lambda topic, value, n: MessageSizeTooLargeError() if topic == topics.routed
                    else None)
    r = routed()
    await emitter(broker).emit([Out(topics.routed, "d", r)], agent="intake")
    assert broker.calls[codec.encode(r, topics.routed)] == 1
    [resp] = broker.events(topics.responses, Response)
    assert resp.error.code == "invalid_request"


async def test_an_output_that_never_goes_out_while_others_do_is_rescued_after_the_bound():
    clock = Clock()
    broker = Broker(lambda topic, value, n: UnknownTopicOrPartitionError()
                    if topic == "replies.nowhere" else None)
    em = emitter(broker, clock, stall_s=30.0)
    rid = str(uuid.uuid4())

    async def other_traffic():
        while clock.now < 40:
            await em.emit([Out(topics.usage, "acme", Usage(request_id=str(uuid.uuid4()),
                                                          tenant="acme", created_at_ms=1,
                                                          completed_at_ms=2, status="ok"))])
            await asyncio.sleep(0)

    traffic = asyncio.create_task(other_traffic())
    await em.emit([Out("replies.nowhere", rid, response(rid))], agent="dispatch")
    traffic.cancel()
    [short] = [r for r in broker.events(topics.responses, Response) if r.request_id == rid]
    assert short.error.code == "internal_error" and GAVE_UP in short.error.message
    assert 30 <= clock.now < 40


async def test_while_the_broker_is_away_nothing_is_given_up_and_one_alert_goes_out():
    clock = Clock()
    down = {"until": 200.0}
    broker = Broker(lambda topic, value, n: KafkaConnectionError()
                    if clock.now < down["until"] else None)
    em = emitter(broker, clock, stall_s=60.0)
    r = routed()
    await em.emit([Out(topics.routed, "d", r)], agent="intake")
    assert clock.now >= 200 and em.stalls == 1 and em.rescuer.lost == 0
    assert broker.events(topics.routed, RoutedRequest)[0].request.request_id == r.request.request_id
    await asyncio.sleep(0)            # the stall alert goes out in the background
    for _ in range(3):
        await asyncio.sleep(0)
    [alert] = broker.events(topics.alerts, Alert)
    assert alert.rule == "publish_stalled" and alert.severity == "critical"


async def test_dead_letters_name_the_input():
    broker = Broker(lambda topic, value, n: InvalidTopicError() if topic == topics.usage else None)
    usage = Usage(request_id=str(uuid.uuid4()), tenant="acme", created_at_ms=1, completed_at_ms=2,
                  status="ok")
    origin = Origin(topics.batches, 5, 42, b"dep", None)
    await emitter(broker).emit([Out(topics.usage, "acme", usage)], agent="dispatch", origin=origin)
    [letter] = broker.events(topics.dead_letter, DeadLetter)
    assert (letter.source_topic, letter.source_partition, letter.source_offset, letter.agent) == \
        (topics.batches, 5, 42, "dispatch")
