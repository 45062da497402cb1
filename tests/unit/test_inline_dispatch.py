"""Dispatch in intake (pipeline/agents/inline.py): which Batches of one intake dispatches
itself, the bound on the calls it holds, and the finished-hop record written to the
deployment's partition whichever agent wrote it."""

from __future__ import annotations

import asyncio
import random

import faust
import pytest
from faust.types import TP

from pipeline.agents.inline import InlineDispatch
from pipeline.batching.config import load_batching
from pipeline.catalog import load_catalog
from pipeline.config import ConfigError
from pipeline.dispatch.hops import FinishedHops
from pipeline.events.codec import Codec
from pipeline.intake import Intake
from pipeline.outputs import Origin, Out
from pipeline.providers.deployments import load_deployments
from pipeline.routing.policy import Router, load_routing
from pipeline.settings import Topics
from tests.unit.test_intake_dispatch import body

catalog = load_catalog()
deployments = load_deployments(catalog, env={})
policy = load_routing(catalog)
topics = Topics()
ORIGIN = Origin(topics.requests, 0, 7, b"acme", 1_000)


def onward(priority: str = "interactive", model: str = "deepseek-chat") -> Out:
    """What intake publishes for a windowless request (a Batch of one on llm.batches)."""
    step = Intake(Codec(), catalog, Router(catalog, deployments, policy, random.Random(1)),
                  policy, topics, clock=lambda: 2_000, windows=load_batching())
    (out,) = step.handle(body(model=model, hints={"priority": priority}), ORIGIN)
    return out


class Calls:
    """Stands in for dispatch: records calls; ``gate`` holds them until set."""

    def __init__(self):
        self.calls, self.finished, self.gate = [], [], asyncio.Event()
        self.gate.set()

    async def dispatch(self, batch, partition, origin):
        self.calls.append((batch.items[0].request.request_id, partition, origin))
        await self.gate.wait()
        return [Out(topics.responses, batch.items[0].request.request_id, "answer")]

    def done(self, batch, partition):
        self.finished.append((batch.items[0].request.request_id, partition))


async def inline_for(out: Out, owned: bool, max_in_flight: int = 4,
                     priorities=frozenset({"interactive"})) -> tuple[InlineDispatch, Calls, faust.App]:
    app = faust.App(f"inline-test-{random.random()}", autodiscover=False)
    inline = InlineDispatch(app, topics.batches, 6, priorities, max_in_flight)
    calls = Calls()
    inline.dispatch, inline.finished = calls.dispatch, calls.done
    p = inline.partition_of(out.event.deployment)
    mine = {TP(topics.batches, p if owned else (p + 1) % 6), TP(topics.requests, 0)}
    await app.on_partitions_assigned.send(assigned=mine)
    return inline, calls, app


def test_shipped_config_dispatches_interactive_and_quiet_standard_in_intake():
    config = load_batching()
    assert config.in_intake == frozenset({"interactive", "standard"})
    assert config.skip_quiet == frozenset({"standard"})      # batch windows exist to grow


def test_dispatch_in_intake_on_a_window_that_is_never_skipped_is_refused_by_name(tmp_path):
    from tests.unit.test_batching import SHIPPED
    path = tmp_path / "batching.yaml"
    path.write_text(SHIPPED.replace("    max_wait_ms: 5000",
                                    "    max_wait_ms: 5000\n    dispatch_in_intake: true"))
    with pytest.raises(ConfigError, match="priorities.batch.dispatch_in_intake"):
        load_batching(path)


async def test_a_batch_of_one_whose_deployment_this_worker_owns_is_dispatched_in_the_step():
    out = onward()
    inline, calls, _ = await inline_for(out, owned=True)
    outs = await inline.run([out], ORIGIN)
    rid = out.event.items[0].request.request_id
    p = inline.partition_of(out.event.deployment)
    assert calls.calls == [(rid, p, ORIGIN)]
    assert [o.topic for o in outs] == [topics.responses]          # no llm.batches record
    assert calls.finished == []                 # not finished until its outputs are out
    inline.published(ORIGIN)
    assert calls.finished == [(rid, p)]
    inline.published(ORIGIN)                    # once
    assert calls.finished == [(rid, p)]


async def test_another_workers_deployment_or_a_windowed_priority_takes_the_hop():
    out = onward()
    inline, calls, _ = await inline_for(out, owned=False)
    assert await inline.run([out], ORIGIN) == [out] and calls.calls == []
    inline, calls, _ = await inline_for(out, owned=True, priorities=frozenset())
    assert await inline.run([out], ORIGIN) == [out] and calls.calls == []
    windowed = onward(priority="batch")         # a RoutedRequest for the batcher
    inline, calls, _ = await inline_for(out, owned=True)
    assert await inline.run([windowed], ORIGIN) == [windowed] and calls.calls == []


async def test_a_revoke_stops_dispatch_in_intake_until_the_partition_is_assigned_again():
    out = onward()
    inline, calls, app = await inline_for(out, owned=True)
    await app.on_partitions_revoked.send(revoked=set())
    assert await inline.run([out], ORIGIN) == [out]           # mid-rebalance: the hop
    p = inline.partition_of(out.event.deployment)
    await app.on_partitions_assigned.send(assigned={TP(topics.batches, (p + 1) % 6)})
    assert await inline.run([out], ORIGIN) == [out]           # moved to another worker
    await app.on_partitions_assigned.send(assigned={TP(topics.batches, p)})
    assert await inline.run([out], ORIGIN) != [out] and len(calls.calls) == 1


async def test_intake_holds_at_most_max_in_flight_calls_the_rest_take_the_hop():
    first, second = onward(), onward()
    inline, calls, _ = await inline_for(first, owned=True, max_in_flight=1)
    calls.gate.clear()
    held = asyncio.ensure_future(inline.run([first], ORIGIN))
    await asyncio.sleep(0)
    assert inline.in_flight == 1
    other = Origin(topics.requests, 0, 8, b"acme", 1_000)
    assert await inline.run([second], other) == [second]          # over the bound: the hop
    calls.gate.set()
    assert [o.topic for o in await held] == [topics.responses]
    assert inline.in_flight == 0
    assert await inline.run([second], other) != [second]          # room again


async def test_a_failed_dispatch_releases_its_slot():
    out = onward()
    inline, calls, _ = await inline_for(out, owned=True, max_in_flight=1)

    async def broken(batch, partition, origin):
        raise RuntimeError("bug")
    inline.dispatch = broken
    with pytest.raises(RuntimeError):
        await inline.run([out], ORIGIN)
    assert inline.in_flight == 0
    inline.published(ORIGIN)
    assert calls.finished == []                 # nothing was dispatched: nothing finished


class PinLog(dict):
    """A table that notes the changelog partition each write and delete is pinned to."""

    def __init__(self, pins):
        super().__init__()
        self.pins, self.log = pins, []

    def __setitem__(self, key, value):
        self.log.append(("set", self.pins[key]))
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.log.append(("del", self.pins[key]))
        super().__delitem__(key)


def test_finished_hops_pin_each_write_and_delete_to_the_deployments_partition():
    out = onward()
    pins: dict = {}
    table = PinLog(pins)
    hops = FinishedHops(table, window_ms=10, sweep_every_ms=0, pins=pins)
    hops.record(out.event.items, partition=4, now_ms=0)
    assert hops.finished(out.event.items[0]) and pins == {}
    hops.sweep(4, now_ms=100)
    assert table.log == [("set", 4), ("del", 4)] and pins == {} and table == {}


# --- a window that would not fill is skipped (pipeline/batching/alone.py) ----------------

def test_a_deployment_is_quiet_until_its_arrivals_come_closer_than_half_the_window():
    from pipeline.batching.alone import QuietDeployments
    quiet = QuietDeployments()
    assert quiet.alone("dep", "standard", 0, 100)             # the first: nothing to wait for
    assert quiet.alone("dep", "standard", 60, 100)            # gap 60: < 2 more in 100 ms
    closer = [quiet.alone("dep", "standard", 60 + 10 * i, 100) for i in range(1, 30)]
    assert not closer[-1]                                      # 10 ms apart: a window fills
    assert quiet.alone("other", "standard", 400, 100)          # per deployment
    assert quiet.alone("dep", "batch", 400, 100)               # and per priority


def test_intake_sends_a_lone_standard_request_as_a_quiet_batch_of_one_and_dense_ones_to_the_batcher():
    from pipeline.events.models import Batch, RoutedRequest
    clock = [10_000]
    step = Intake(Codec(), catalog, Router(catalog, deployments, policy, random.Random(1)),
                  policy, topics, clock=lambda: clock[0], windows=load_batching())
    (alone,) = step.handle(body(model="deepseek-chat"), ORIGIN)
    assert alone.topic == topics.batches and isinstance(alone.event, Batch)
    assert alone.event.fill_reason == "quiet" and alone.event.priority == "standard"
    assert alone.key == alone.event.deployment
    outs = []
    for i in range(20):                                        # 5 ms apart
        clock[0] += 5
        outs += step.handle(body(model="deepseek-chat"), Origin(topics.requests, 0, 10 + i,
                                                                 b"acme", clock[0]))
    assert isinstance(outs[-1].event, RoutedRequest) and outs[-1].topic == topics.routed
    batch = step.handle(body(model="deepseek-chat", hints={"priority": "batch"}),
                        Origin(topics.requests, 0, 99, b"acme", clock[0]))
    assert batch[0].topic == topics.routed                     # batch never skips its window


def test_after_an_idle_spell_a_burst_fills_windows_from_its_fourth_request():
    from pipeline.batching.alone import QuietDeployments
    quiet = QuietDeployments()
    quiet.alone("dep", "standard", 0, 100)
    quiet.alone("dep", "standard", 200, 100)
    burst = [quiet.alone("dep", "standard", 600_000 + i, 100) for i in range(10)]
    assert burst == [True] * 3 + [False] * 7
