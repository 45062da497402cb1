"""Streamed dispatch: deltas become ordered Chunk events before the Response; a failure
before the first delta is retried and failed over unseen, one after it ends the request
with the delivered text, billed. And a caller that goes away (Dispatcher.cancel): its call
is stopped, or never made. Driven by the manual clock and scripted fakes of
test_dispatch_resilience (nothing sleeps)."""

from __future__ import annotations

import asyncio
import random

import pytest

from pipeline import errors
from pipeline.dispatch import Dispatcher
from pipeline.errors import GatewayError
from pipeline.events.models import Chunk, Response, ToolCall, ToolCallDelta, Usage
from pipeline.outputs import Out
from pipeline.providers.base import Completion
from pipeline.resilience.retry import RetryPolicy
from tests.unit.test_dispatch_resilience import (GPT4O, GPT41, FakeTime, catalog,
                                                 deployments_with, of, reroute, routed, topics)


class StreamingFake:
    """Each call plays a script: the deltas it streams, then "ok" or an error code."""

    def __init__(self, time: FakeTime, *plays: tuple[list[str], str | asyncio.Future]):
        self.time, self.plays = time, list(plays)
        self.calls: list[bool] = []           # whether each call was streamed

    async def complete(self, routed, on_delta=None) -> Completion:
        deltas, end = self.plays.pop(0)
        self.calls.append(on_delta is not None)
        for delta in deltas if on_delta else ():
            self.time.clock.advance(0.01)
            await on_delta(delta)
            await asyncio.sleep(0)
        if isinstance(end, asyncio.Future):
            end = await end                 # a call that hangs until the test says
        if end != "ok":
            raise GatewayError(f"fake {end}", end)
        return Completion("".join(deltas), "stop", 10, len(deltas), 0, 30)

    async def aclose(self) -> None:
        return None


class Broker:
    """The publish a dispatcher streams through: records what reached it, in order."""

    def __init__(self):
        self.outs: list[Out] = []

    async def publish(self, outs: list[Out]) -> None:
        await asyncio.sleep(0)
        self.outs += outs

    def chunks(self) -> list[Chunk]:
        return [o.event for o in self.outs]


def make(time: FakeTime, deps, adapters, broker: Broker | None) -> Dispatcher:
    return Dispatcher(catalog, deps, adapters, topics, RetryPolicy(1, 60, 0.25),
                      rng=random.Random(7), sleep=time.sleep, clock=time.wall_ms,
                      monotonic=time.clock, publish=broker.publish if broker else None)


def streamed(time, deps, **kw):
    r = routed(time, deps, **kw)
    return r.replace(request=r.request.replace(stream=True))


async def test_deltas_become_ordered_chunks_on_the_chunk_topic_before_the_response():
    time, broker, deps = FakeTime(), Broker(), deployments_with()
    words = ["Hello", " there", ",", " friend", "."]
    fake = StreamingFake(time, (words, "ok"))
    r = streamed(time, deps)
    outs = await make(time, deps, {GPT41: fake}, broker).handle(r)
    chunks = broker.chunks()
    assert fake.calls == [True]
    assert {o.topic for o in broker.outs} == {topics.chunks}
    assert {o.key for o in broker.outs} == {r.request.request_id}
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert len({c.stream_id for c in chunks}) == 1
    assert "".join(c.delta for c in chunks) == "Hello there, friend."
    (resp,) = of(outs, Response)
    (usage,) = of(outs, Usage)
    assert resp.status == "ok" and resp.content == "Hello there, friend."
    assert usage.first_token_at_ms == chunks[0].at_ms > 0


async def test_chunks_go_to_the_requests_own_chunk_topic():
    time, broker, deps = FakeTime(), Broker(), deployments_with()
    r = streamed(time, deps)
    r = r.replace(request=r.request.replace(chunk_topic="llm.gateway.gw-1.chunks"))
    await make(time, deps, {GPT41: StreamingFake(time, (["a", "b"], "ok"))}, broker).handle(r)
    assert {o.topic for o in broker.outs} == {"llm.gateway.gw-1.chunks"}


async def test_a_failure_before_the_first_delta_is_retried_unseen():
    time, broker, deps = FakeTime(), Broker(), deployments_with()
    fake = StreamingFake(time, ([], errors.OVERLOADED), (["fine"], "ok"))
    outs = await make(time, deps, {GPT41: fake}, broker).handle(streamed(time, deps))
    assert fake.calls == [True, True]
    assert [c.delta for c in broker.chunks()] == ["fine"]
    (resp,) = of(outs, Response)
    assert resp.status == "ok" and resp.attempts == 2


async def test_a_failure_before_the_first_delta_fails_over_as_usual():
    time, broker, deps = FakeTime(), Broker(), deployments_with()
    fake = StreamingFake(time, *[([], errors.OVERLOADED)] * 3)
    outs = await make(time, deps, {GPT41: fake}, broker).handle(streamed(time, deps))
    assert broker.outs == [] and reroute(outs).route.deployment == GPT4O


async def test_a_failure_after_the_first_delta_ends_the_request_billed_for_what_was_sent():
    time, broker, deps = FakeTime(), Broker(), deployments_with()
    fake = StreamingFake(time, (["Once", " upon", " a"], errors.PROVIDER_ERROR),
                         (["never"], "ok"))
    outs = await make(time, deps, {GPT41: fake}, broker).handle(streamed(time, deps))
    assert fake.calls == [True], "no second call once the caller has text"
    assert not [o for o in outs if o.topic == topics.routed], "no failover either"
    delivered = "".join(c.delta for c in broker.chunks())
    assert delivered == "Once upon a"
    (resp,) = of(outs, Response)
    (usage,) = of(outs, Usage)
    assert resp.status == "error" and resp.error.code == errors.PROVIDER_ERROR
    assert "stream broke after" in resp.error.message and resp.content == delivered
    assert usage.status == "error" and usage.completion_tokens > 0 and usage.cost_nanos > 0
    assert usage.prompt_tokens == 100 and usage.first_token_at_ms > 0


async def test_streamed_requests_are_not_hedged():
    time, broker, deps = FakeTime(), Broker(), deployments_with()
    r = streamed(time, deps)
    r = r.replace(request=r.request.replace(hints=r.request.hints.replace(
        priority="interactive", max_latency_ms=100)))
    gpt, other = StreamingFake(time, (["x"], "ok")), StreamingFake(time)
    outs = await make(time, deps, {GPT41: gpt, GPT4O: other}, broker).handle(r)
    assert gpt.calls == [True] and other.calls == []
    assert of(outs, Response)[0].status == "ok"


async def test_unstreamed_requests_and_dispatchers_without_publish_call_plainly():
    time, deps = FakeTime(), deployments_with()
    fake = StreamingFake(time, (["a"], "ok"), (["b"], "ok"))
    await make(time, deps, {GPT41: fake}, Broker()).handle(routed(time, deps))
    await make(time, deps, {GPT41: fake}, None).handle(streamed(time, deps))
    assert fake.calls == [False, False]


async def test_a_request_cancelled_before_it_arrives_ends_without_a_call():
    time, deps = FakeTime(), deployments_with()
    fake = StreamingFake(time, (["never"], "ok"))
    d = make(time, deps, {GPT41: fake}, Broker())
    r = streamed(time, deps)
    assert d.cancel(r.request.tenant, r.request.request_id) is False
    outs = await d.handle(r)
    (resp,) = of(outs, Response)
    (usage,) = of(outs, Usage)
    assert fake.calls == [] and resp.error.code == errors.CANCELLED
    assert usage.cost_nanos == 0 and not [o for o in outs if o.topic == topics.routed]
    # another tenant's request with the same id is not touched
    other = r.replace(request=r.request.replace(tenant="globex"))
    fake.plays.append((["fine"], "ok"))
    assert of(await d.handle(other), Response)[0].status == "ok"


async def test_a_call_in_flight_is_stopped_and_billed_its_prompt():
    time, deps = FakeTime(), deployments_with()
    hang = asyncio.get_running_loop().create_future()
    d = make(time, deps, {GPT41: StreamingFake(time, ([], hang))}, Broker())
    r = routed(time, deps)
    task = asyncio.create_task(d.handle(r))
    for _ in range(20):
        await asyncio.sleep(0)
    assert d.cancel(r.request.tenant, r.request.request_id) is True
    outs = await task
    (resp,) = of(outs, Response)
    (usage,) = of(outs, Usage)
    assert resp.error.code == errors.CANCELLED and "went away" in resp.error.message
    assert usage.prompt_tokens == 100 and usage.completion_tokens == 0 and usage.cost_nanos > 0
    assert not [o for o in outs if o.topic == topics.routed], "no failover for a cancel"


async def test_a_stream_cancelled_mid_way_keeps_and_bills_what_was_sent():
    time, broker, deps = FakeTime(), Broker(), deployments_with()
    hang = asyncio.get_running_loop().create_future()
    d = make(time, deps, {GPT41: StreamingFake(time, (["Once", " upon"], hang))}, broker)
    r = streamed(time, deps)
    task = asyncio.create_task(d.handle(r))
    for _ in range(20):
        await asyncio.sleep(0)
    d.cancel(r.request.tenant, r.request.request_id)
    outs = await task
    (resp,) = of(outs, Response)
    (usage,) = of(outs, Usage)
    assert resp.error.code == errors.CANCELLED and resp.content == "Once upon"
    assert "".join(c.delta for c in broker.chunks()) == "Once upon"
    assert usage.completion_tokens > 0


async def test_a_stopping_worker_is_not_mistaken_for_a_cancel():
    time, deps = FakeTime(), deployments_with()
    hang = asyncio.get_running_loop().create_future()
    d = make(time, deps, {GPT41: StreamingFake(time, ([], hang))}, Broker())
    r = routed(time, deps)
    d.cancel("someone-else", r.request.request_id)
    task = asyncio.create_task(d.handle(r))
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_deltas_are_gathered_between_chunks_and_finish_does_not_wait_to_gather():
    """After the first chunk the stream gathers deltas for its interval: a burst of 50
    deltas costs a couple of records, not 50; and the call's end sends the rest at once."""
    import time as wall

    from pipeline.dispatch.stream import ChunkStream

    time, broker, deps = FakeTime(), Broker(), deployments_with()
    stream = ChunkStream(streamed(time, deps), broker.publish, topics, time.wall_ms,
                         interval_s=1.0)
    for i in range(50):
        await stream.on_delta(f"w{i} ")
        await asyncio.sleep(0)
    started = wall.monotonic()
    await stream.finish()
    assert wall.monotonic() - started < 0.5, "finish cut the gathering short"
    chunks = broker.chunks()
    assert 2 <= len(chunks) <= 3 and [c.seq for c in chunks] == list(range(len(chunks)))
    assert "".join(c.delta for c in chunks) == "".join(f"w{i} " for i in range(50))


class ToolStreamingFake(StreamingFake):
    """Streams one function call in pieces, as OpenAI does, then answers with it whole."""

    async def complete(self, routed, on_delta=None) -> Completion:
        self.calls.append(on_delta is not None)
        pieces = [ToolCallDelta(0, "call_1", "get_weather", ""), ToolCallDelta(0, arguments='{"ci'),
                  ToolCallDelta(0, arguments='ty": "Paris"}')]
        for piece in pieces:
            self.time.clock.advance(0.001)
            await on_delta("", [piece])
        call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
        return Completion("", "tool_calls", 10, 8, 0, 30, tool_calls=(call,))


async def test_tool_call_pieces_are_streamed_and_the_response_carries_the_whole_call():
    time, broker, deps = FakeTime(), Broker(), deployments_with()
    outs = await make(time, deps, {GPT41: ToolStreamingFake(time)}, broker).handle(
        streamed(time, deps))
    pieces = [p for c in broker.chunks() for p in c.tool_calls]
    assert pieces[0].id == "call_1" and pieces[0].name == "get_weather"
    assert "".join(p.arguments for p in pieces) == '{"city": "Paris"}'
    assert len(pieces) <= 3                     # later pieces of one call are joined
    response = of(outs, Response)[0]
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == [ToolCall("call_1", "get_weather", '{"city": "Paris"}')]
