"""Micro-batch windows with an injected clock: size, token and age triggers, per-priority
limits, flush on shutdown/rebalance, and no request left behind; the batcher stage's
acknowledgement rule; dispatch of a Batch (concurrent, isolated, offload contract)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from pipeline.agents.batcher import BatcherStage
from pipeline.agents.dispatch import dispatch_batch
from pipeline.batching.config import BatchingConfig, load_batching
from pipeline.batching.window import WindowKey, WindowLimits, Windows
from pipeline.config import ConfigError
from pipeline.events.codec import Codec
from pipeline.events.models import (Batch, ChatMessage, DeadLetter, Request, RouteDecision,
                                    RoutedRequest, RoutingHints)
from pipeline.outputs import Origin, Out
from pipeline.settings import Topics


class Clock:
    def __init__(self, t: int = 1_000_000):
        self.t = t

    def __call__(self) -> int:
        return self.t


STD = WindowLimits(max_batch_size=8, max_batch_tokens=4000, max_wait_ms=100)
LIMITS = {"interactive": WindowLimits(8, 4000, 5), "standard": STD, "batch": WindowLimits(64, 64000, 5000)}
CONFIG = BatchingConfig(LIMITS)
K = WindowKey(0, "deepseek-v3.2", "standard")


def windows(clock: Clock, limits=CONFIG.limits) -> Windows:
    return Windows(limits, clock)


# --- triggers ----------------------------------------------------------------------------

def test_size_trigger_closes_the_window_at_max_batch_size():
    clock = Clock()
    w = windows(clock)
    for i in range(7):
        assert w.add(K, i, 10) == []
        clock.t += 1
    (flush,) = w.add(K, 7, 10)
    assert flush.items == list(range(8)) and flush.fill_reason == "size"
    assert flush.opened_at_ms == 1_000_000 and flush.flushed_at_ms == 1_000_007
    assert flush.waits_ms() == [7, 6, 5, 4, 3, 2, 1, 0]
    assert w.pending() == 0 and w.next_due_ms() is None


def test_token_budget_closes_the_window_before_it_would_overflow():
    clock = Clock()
    w = windows(clock)
    assert w.add(K, "a", 1500) == [] and w.add(K, "b", 1500) == []
    (full,) = w.add(K, "c", 1500)               # 4500 > 4000: a and b leave without c
    assert (full.items, full.tokens, full.fill_reason) == (["a", "b"], 3000, "tokens")
    assert w.pending() == 1                     # c opened the next window
    (exact,) = w.add(K, "d", 2500)              # 1500 + 2500 = 4000: the budget is reached
    assert (exact.items, exact.fill_reason) == (["c", "d"], "tokens")


def test_a_batch_closes_before_it_would_outgrow_a_broker_record():
    clock = Clock()
    w = Windows(CONFIG.limits, clock, max_bytes=1_000)
    assert w.add(K, "a", 10, 400) == [] and w.add(K, "b", 10, 400) == []
    (full,) = w.add(K, "c", 10, 400)            # 1,200 bytes would not fit: a and b go
    assert (full.items, full.fill_reason) == (["a", "b"], "bytes")
    (alone,) = w.add(K, "huge", 10, 5_000)      # larger than a record: c goes, huge waits alone
    assert alone.items == ["c"] and w.pending() == 1


def test_a_request_larger_than_the_budget_travels_alone():
    clock = Clock()
    w = windows(clock)
    w.add(K, "small", 100)
    flushes = w.add(K, "huge", 9000)
    assert [(f.items, f.fill_reason) for f in flushes] == [(["small"], "tokens"), (["huge"], "tokens")]
    assert w.pending() == 0


def test_age_trigger_flushes_on_the_timer_without_new_traffic():
    clock = Clock()
    w = windows(clock)
    w.add(K, "a", 10)
    clock.t += 40
    w.add(K, "b", 10)
    assert w.next_due_ms() == 1_000_100
    clock.t += 59
    assert w.due() == []                        # 99 ms old: not yet
    clock.t += 1
    (flush,) = w.due()
    assert (flush.items, flush.fill_reason) == (["a", "b"], "age")
    assert flush.waits_ms() == [100, 60]        # nobody waited longer than max_wait_ms
    assert w.due() == [] and w.next_due_ms() is None


def test_each_priority_has_its_own_window_and_limits():
    clock = Clock()
    w = windows(clock)
    inter, std, bat = (WindowKey(0, "dep", p) for p in ("interactive", "standard", "batch"))
    w.add(inter, "i", 10); w.add(std, "s", 10); w.add(bat, "b", 10)
    assert w.open_windows() == 3 and w.next_due_ms() == 1_000_005
    clock.t += 5
    assert [(f.key.priority, f.items) for f in w.due()] == [("interactive", ["i"])]
    clock.t += 95
    assert [(f.key.priority, f.items) for f in w.due()] == [("standard", ["s"])]
    for i in range(62):
        w.add(bat, i, 10)
    (big,) = w.add(bat, "last", 10)             # batch priority: 64 per batch, not 8
    assert len(big.items) == 64 and big.fill_reason == "size"


def test_windows_do_not_mix_deployments_or_partitions():
    clock = Clock()
    w = windows(clock)
    for key in (K, WindowKey(0, "other", "standard"), WindowKey(1, "deepseek-v3.2", "standard")):
        w.add(key, key, 1)
    assert w.open_windows() == 3
    clock.t += 100
    assert sorted(len(f.items) for f in w.due()) == [1, 1, 1]


def test_zero_wait_flushes_on_arrival():
    clock = Clock()
    w = windows(clock, lambda p: WindowLimits(8, 4000, 0))
    (flush,) = w.add(K, "now", 10)
    assert flush.fill_reason == "age" and flush.waits_ms() == [0]


QUIET = dataclasses.replace(STD, close_when_quiet=True)


def test_a_lone_request_does_not_wait_a_window_nothing_can_fill():
    clock = Clock()
    w = windows(clock, lambda p: QUIET)
    assert w.add(K, "first", 10) == []            # no arrival history yet: the full window
    assert w.next_due_ms() == 1_000_100
    clock.t = 1_000_100
    (aged,) = w.due()
    assert aged.fill_reason == "age"
    clock.t += 400                                # the next one comes 500 ms after the first
    (alone,) = w.add(K, "second", 10)
    assert alone.fill_reason == "quiet" and alone.waits_ms() == [0]
    without = windows(Clock(clock.t), lambda p: STD)
    assert without.add(K, "x", 10) == [] and without.add(K, "y", 10) == []


def test_dense_traffic_still_fills_windows_when_quiet_close_is_on():
    clock = Clock()
    w = windows(clock, lambda p: QUIET)
    flushes = []
    for i in range(24):                           # one every 2 ms: a window fills in 16 ms
        flushes += w.add(K, i, 10)
        clock.t += 2
    assert [f.fill_reason for f in flushes] == ["size"] * 3
    assert [len(f.items) for f in flushes] == [8, 8, 8]


def test_a_window_closes_half_way_to_its_deadline_once_traffic_stops():
    clock = Clock()
    w = windows(clock, lambda p: QUIET)
    for i in range(3):                            # gaps of 2 ms, then nothing
        flushes = w.add(K, i, 10)
        clock.t += 2
    assert flushes == []
    last, due = 1_000_004, 1_000_100              # the window opened with the first of the three
    assert w.next_due_ms() == (last + due) // 2
    clock.t = (last + due) // 2 - 1
    assert w.due() == []
    clock.t += 1
    (f,) = w.due()
    assert f.fill_reason == "quiet" and f.items == [0, 1, 2]
    assert max(f.waits_ms()) < 100


def test_shutdown_and_rebalance_flush_what_is_waiting():
    clock = Clock()
    w = windows(clock)
    w.add(WindowKey(0, "a", "batch"), 1, 10)
    w.add(WindowKey(1, "b", "standard"), 2, 10)
    w.add(WindowKey(2, "c", "standard"), 3, 10)
    clock.t += 1
    revoked = w.flush_all(partitions=[0, 2])
    assert sorted(f.items[0] for f in revoked) == [1, 3]
    assert {f.fill_reason for f in revoked} == {"shutdown"} and w.pending() == 1
    (rest,) = w.flush_all()
    assert rest.items == [2] and rest.flushed_at_ms == 1_000_001 and w.pending() == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["interactive", "standard", "batch"]),
                          st.integers(0, 5000), st.integers(0, 150)), max_size=120),
       st.booleans())
def test_no_request_left_behind_and_no_limit_exceeded(ops, quiet):
    """Arrivals (partition, priority, tokens, ms since the previous one) with a timer that
    fires exactly when the oldest window comes of age: every request leaves exactly once,
    in arrival order within its window, within its priority's size and wait limits, and
    over the token budget only when it travels alone — with and without quiet close."""
    clock = Clock()
    w = windows(clock, lambda p: dataclasses.replace(LIMITS[p], close_when_quiet=quiet))
    flushed = []

    def advance(to: int) -> None:
        while (due := w.next_due_ms()) is not None and due <= to:
            clock.t = max(clock.t, due)
            flushed.extend(w.due())
        clock.t = to

    for n, (partition, priority, tokens, gap) in enumerate(ops):
        advance(clock.t + gap)
        flushed.extend(w.add(WindowKey(partition, "dep", priority), (n, tokens), tokens))
    flushed.extend(w.flush_all())
    items = sorted(i for f in flushed for i, _ in f.items)
    assert items == list(range(len(ops)))
    assert w.pending() == 0
    for f in flushed:
        lim = LIMITS[f.key.priority]
        assert 1 <= len(f.items) <= lim.max_batch_size
        assert [i for i, _ in f.items] == sorted(i for i, _ in f.items)
        assert f.tokens == sum(t for _, t in f.items)
        assert f.tokens <= lim.max_batch_tokens or len(f.items) == 1
        if f.fill_reason != "shutdown":
            assert max(f.waits_ms()) <= lim.max_wait_ms


# --- configuration -------------------------------------------------------------------------

def test_shipped_config_matches_domain_defaults():
    cfg = load_batching()
    assert cfg.limits("standard") == WindowLimits(8, 4000, 100, close_when_quiet=True)
    assert not cfg.limits("batch").close_when_quiet     # Batch API windows exist to grow
    assert cfg.limits("interactive").max_wait_ms <= 10
    assert cfg.limits("batch").max_wait_ms > cfg.limits("standard").max_wait_ms
    assert cfg.priority_of("urgent-please") == "standard"


SHIPPED = load_batching.__globals__["config_path"]("batching.yaml").read_text()


@pytest.mark.parametrize("old,new,key", [
    ("    max_wait_ms: 0\n", "    max_wait_ms: -1\n", "priorities.interactive.max_wait_ms"),
    ("    max_wait_ms: 5000", "    max_wait_ms: 900000", "priorities.batch.max_wait_ms"),
    ("  standard:\n    max_batch_size: 8", "  standard:\n    max_batch_size: 0",
     "priorities.standard.max_batch_size"),
    ("  standard:\n    max_batch_size: 8", "  standard:\n    max_batch: 8",
     "priorities.standard.max_batch"),
    ("  batch:", "  bulk:", "priorities.bulk"),
    ("priorities:", "windows:", "windows"),
    ("    close_when_quiet: true\n", "    close_when_quiet: yes please\n",
     "priorities.standard.close_when_quiet"),
])
def test_bad_batching_config_names_file_and_key(tmp_path, old, new, key):
    path = tmp_path / "batching.yaml"
    assert old in SHIPPED
    path.write_text(SHIPPED.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_batching(path)
    assert info.value.key == key and "batching.yaml" in str(info.value)


# --- the batcher stage: publish first, then acknowledge --------------------------------------

topics = Topics("t.")
codec = Codec()


def routed_request(deployment: str = "deepseek-v3.2", priority: str = "standard",
                   tokens: int = 100) -> RoutedRequest:
    req = Request(request_id=str(uuid.uuid4()), tenant="acme", messages=[ChatMessage("user", "hi")],
                  hints=RoutingHints(priority=priority))
    return RoutedRequest(request=req, route=RouteDecision(deployment=deployment, model="deepseek-v3.2",
                                                          provider="deepseek", rule="pinned"),
                         max_tokens=64, reply_topic=topics.responses, received_at_ms=1,
                         routed_at_ms=2, estimated_prompt_tokens=tokens)


class FakeEmitter:
    """Records what is published; ``gate`` (if set) holds every publish until released."""

    def __init__(self):
        self.published: list[Out] = []
        self.gate: asyncio.Event | None = None

    async def emit(self, outs, **where):
        if self.gate is not None:
            await self.gate.wait()
        self.published += outs


def stage_with(clock: Clock):
    emitter, acked = FakeEmitter(), []
    return BatcherStage(codec, topics, CONFIG, emitter, acked.append, clock=clock), emitter, acked


def origin(offset: int, partition: int = 3) -> Origin:
    return Origin(topics.routed, partition, offset, b"deepseek-v3.2", None)


async def test_requests_are_acked_only_after_their_batch_is_published():
    clock = Clock()
    stage, emitter, acked = stage_with(clock)
    for off in range(3):
        await stage.receive(codec.encode(routed_request(), topics.routed), origin(off), off)
    assert acked == [] and emitter.published == []       # waiting in the window
    clock.t += 100
    emitter.gate = asyncio.Event()
    assert await stage.flush_due() == 1
    await asyncio.sleep(0)
    assert acked == []                                    # not on the broker yet
    emitter.gate.set()
    await stage.drain()
    assert acked == [0, 1, 2]
    (out,) = emitter.published
    assert out.topic == topics.batches and out.key == "deepseek-v3.2" and out.partition == 3
    assert isinstance(out.event, Batch) and len(out.event.items) == 3
    assert (out.event.fill_reason, out.event.priority) == ("age", "standard")
    assert out.event.flushed_at_ms - out.event.opened_at_ms == 100
    view = stage.view()
    assert view["priorities"]["standard"]["mean_batch_size"] == 3.0
    assert view["priorities"]["standard"]["added_wait_ms"]["max"] == 100


async def test_acks_follow_offsets_even_when_a_later_window_flushes_first():
    clock = Clock()
    stage, emitter, acked = stage_with(clock)
    await stage.receive(codec.encode(routed_request(priority="batch"), topics.routed), origin(0), 0)
    for off in range(1, 9):                               # a full standard window: size flush
        await stage.receive(codec.encode(routed_request(), topics.routed), origin(off), off)
    await stage.drain()
    assert len(emitter.published) == 1 and acked == []    # offset 0 still waits (batch window)
    assert stage.view()["unacked_inputs"] == 9
    await stage.flush_all()                               # rebalance/shutdown
    await stage.drain()
    assert acked == list(range(9))
    assert emitter.published[-1].event.fill_reason == "shutdown"


async def test_undecodable_input_is_dead_lettered_and_acked_in_order():
    clock = Clock()
    stage, emitter, acked = stage_with(clock)
    await stage.receive(codec.encode(routed_request(), topics.routed), origin(0), 0)
    await stage.receive(b"\x13garbage", origin(1), 1)
    (dl,) = [o.event for o in emitter.published]
    assert isinstance(dl, DeadLetter) and dl.agent == "batcher" and dl.source_offset == 1
    assert dl.reason_code == "undecodable" and dl.value == b"\x13garbage"
    assert acked == []                                    # offset 0 is still in its window
    await stage.flush_all()
    await stage.drain()
    assert acked == [0, 1]


async def test_an_unknown_priority_hint_waits_in_the_standard_window():
    clock = Clock()
    stage, emitter, _ = stage_with(clock)
    await stage.receive(codec.encode(routed_request(priority="asap!!"), topics.routed), origin(0), 0)
    clock.t += 100
    await stage.flush_due()
    await stage.drain()
    assert emitter.published[0].event.priority == "standard"


async def test_a_slow_publish_does_not_hold_back_the_next_window():
    clock = Clock()
    stage, emitter, acked = stage_with(clock)
    await stage.receive(codec.encode(routed_request(), topics.routed), origin(0), 0)
    clock.t += 100
    emitter.gate = asyncio.Event()                        # the broker is slow
    assert await stage.flush_due() == 1
    await stage.receive(codec.encode(routed_request(priority="interactive"), topics.routed),
                        origin(1), 1)
    clock.t += 5
    assert await asyncio.wait_for(stage.flush_due(), 1) == 1    # closed on time all the same
    emitter.gate.set()
    await stage.drain()
    assert [o.event.fill_reason for o in emitter.published] == ["age", "age"]
    assert [o.event.flushed_at_ms - o.event.opened_at_ms for o in emitter.published] == [100, 5]
    assert acked == [0, 1]


async def test_a_batch_that_cannot_be_published_dead_letters_its_requests():
    clock = Clock()

    class Failing(FakeEmitter):
        async def emit(self, outs, **where):
            if any(o.topic == topics.batches for o in outs):
                raise TypeError("cannot encode")
            await super().emit(outs, **where)

    acked = []
    emitter = Failing()
    stage = BatcherStage(codec, topics, CONFIG, emitter, acked.append, clock=clock)
    items = [routed_request() for _ in range(2)]
    for off, item in enumerate(items):
        await stage.receive(codec.encode(item, topics.routed), origin(off), off)
    await stage.flush_all()
    await stage.drain()
    assert sorted(o.event.request_id for o in emitter.published) == \
        sorted(i.request.request_id for i in items)
    assert {o.event.reason_code for o in emitter.published} == {"internal_error"}
    assert acked == [0, 1]


# --- dispatch of a Batch ---------------------------------------------------------------------

class FakeDispatcher:
    def __init__(self, fail: set[str] = frozenset()):
        self.fail, self.started, self.release = fail, [], asyncio.Event()

    async def handle(self, routed: RoutedRequest) -> list[Out]:
        self.started.append(routed.request.request_id)
        await self.release.wait()
        if routed.request.request_id in self.fail:
            raise RuntimeError("boom")
        return [Out(topics.responses, routed.request.request_id, routed)]


def batch_of(items, priority="standard") -> Batch:
    return Batch(str(uuid.uuid4()), "deepseek-v3.2", 1, 2, items, priority=priority)


async def test_a_batch_is_dispatched_concurrently_and_one_failure_spares_its_neighbours():
    items = [routed_request() for _ in range(4)]
    d = FakeDispatcher(fail={items[1].request.request_id})
    task = asyncio.create_task(dispatch_batch(d, batch_of(items), origin(7), codec, topics.dead_letter))
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(d.started) == 4                            # all in flight at once
    d.release.set()
    outs = await task
    assert [o.key for o in outs if o.topic == topics.responses] == \
        [items[i].request.request_id for i in (0, 2, 3)]
    (dl,) = [o.event for o in outs if o.topic == topics.dead_letter]
    assert dl.request_id == items[1].request.request_id and dl.reason_code == "internal_error"
    assert codec.decode(dl.value, RoutedRequest) == items[1]      # replayable


class FakeOffload:
    def __init__(self, supported=True, fail=False):
        self.supported, self.fail, self.submitted = supported, fail, []

    def supports(self, deployment_id):
        return self.supported

    def takes(self, routed):
        return routed.request.params.n == 1

    async def submit(self, batch):
        if self.fail:
            raise OSError("job not recorded")
        self.submitted.append(batch)


@pytest.mark.parametrize("priority,offload,live", [
    ("batch", FakeOffload(), False),
    ("batch", FakeOffload(fail=True), True),
    ("batch", FakeOffload(supported=False), True),
    ("standard", FakeOffload(), True),
    ("batch", None, True),
])
async def test_batch_priority_goes_to_the_offload_when_it_takes_it(priority, offload, live):
    items = [routed_request(priority=priority) for _ in range(3)]
    d = FakeDispatcher()
    d.release.set()
    outs = await dispatch_batch(d, batch_of(items, priority), origin(0), codec, topics.dead_letter,
                                offload)
    assert len(outs) == (3 if live else 0) and len(d.started) == (3 if live else 0)
    if offload is not None and not live:
        assert offload.submitted[0].items == items


async def test_requests_a_job_cannot_serve_are_dispatched_live_beside_it():
    items = [routed_request(priority="batch") for _ in range(3)]
    several = items[1].replace(request=items[1].request.replace(
        params=items[1].request.params.replace(n=2)))
    items[1] = several
    d, offload = FakeDispatcher(), FakeOffload()
    d.release.set()
    outs = await dispatch_batch(d, batch_of(items, "batch"), origin(0), codec,
                                topics.dead_letter, offload)
    assert offload.submitted[0].items == [items[0], items[2]]
    assert len(outs) == 1 and len(d.started) == 1


# --- finished hops: a re-read Batch does not call the provider again ------------------------------

async def test_a_re_read_batch_skips_hops_already_finished_but_never_a_new_hop():
    from pipeline.dispatch.hops import FinishedHops
    from pipeline.events.models import AttemptRecord
    hops = FinishedHops({}, window_ms=60_000)
    items = [routed_request() for _ in range(3)]
    d = FakeDispatcher()
    d.release.set()
    await dispatch_batch(d, batch_of(items), origin(0), codec, topics.dead_letter, hops=hops)
    hops.record(items[:2], partition=0, now_ms=1_000)          # published: recorded

    again = batch_of(items)                                      # re-read after a crash
    failed_over = dataclasses.replace(items[0], tried=[AttemptRecord(
        deployment="deepseek-v3.2", error_code="rate_limited", attempts=1)])
    retried_live = dataclasses.replace(items[1], route=dataclasses.replace(
        items[1].route, rule="batch_retry"))
    d.started.clear()
    outs = await dispatch_batch(d, dataclasses.replace(again, items=again.items + [
        failed_over, retried_live]), origin(0), codec, topics.dead_letter, hops=hops)
    # items 0 and 1 are done; item 2 never finished; the failover and the live retry are new hops
    assert d.started == [items[2].request.request_id, items[0].request.request_id,
                         items[1].request.request_id]
    assert len(outs) == 3
    d.started.clear()
    assert await dispatch_batch(d, batch_of(items[:2]), origin(0), codec, topics.dead_letter,
                                hops=hops) == [] and d.started == []


def test_finished_hops_are_forgotten_after_the_window_only_on_their_partition():
    from pipeline.dispatch.hops import FinishedHops
    table: dict = {}
    hops = FinishedHops(table, window_ms=10_000, sweep_every_ms=0)
    a, b = routed_request(), routed_request()
    hops.record([a], partition=0, now_ms=0)
    hops.record([b], partition=1, now_ms=0)
    assert hops.sweep(0, now_ms=10_001) == 1       # a's partition: gone
    assert not hops.finished(a) and hops.finished(b)   # b belongs to partition 1: kept
    assert hops.sweep(1, now_ms=10_001) == 1 and table == {}


def test_a_hop_recorded_again_is_kept_for_a_window_from_its_last_record():
    from pipeline.dispatch.hops import FinishedHops
    table: dict = {}
    hops = FinishedHops(table, window_ms=10_000, sweep_every_ms=0)
    a, b = routed_request(), routed_request()
    hops.record([a, b], partition=0, now_ms=0)
    hops.record([a], partition=0, now_ms=5_000)     # a's hop re-read and finished again
    assert hops.sweep(0, now_ms=10_001) == 1 and hops.finished(a) and not hops.finished(b)
    hops.forget_partitions()                        # a rebalance: indexed from the table
    assert hops.sweep(0, now_ms=15_001) == 1 and table == {}


# --- the benchmark's simulation ----------------------------------------------------------------

def test_bench_batches_more_as_traffic_grows_and_never_changes_live_cost():
    from pipeline.bench.batching import simulate, traffic
    requests = traffic(300, seed=3)
    assert {r.priority for r in requests} == {"interactive", "standard", "batch"}
    slow, fast = (simulate(requests, rate, load_batching(), seed=3) for rate in (5, 500))
    for result in (slow, fast):
        assert sum(result.items.values()) == 300 and result.cost_nanos == sum(r.cost_nanos for r in requests)
        assert max(result.waits["interactive"]) <= 5 and max(result.waits["standard"]) <= 100
    assert fast.total_batches < slow.total_batches < 300
    assert fast.items["standard"] / fast.batches["standard"] > 2


def test_llmpipe_bench_names_a_benchmark_and_plain_bench_is_latency(capsys):
    from pipeline.bench import main, resolve
    assert resolve(["batching", "--rates", "10,100"]) == ("batching", ["--rates", "10,100"])
    assert resolve(["--requests", "5"]) == ("latency", ["--requests", "5"])
    assert resolve([]) == ("latency", [])
    assert resolve(["nope"]) == (None, [])
    assert main(["batching", "--rates", "10", "--requests", "40"]) == 0
    assert "batched calls/request" in capsys.readouterr().out
    assert main(["nope"]) == 2 and "tokens" in capsys.readouterr().out


async def test_the_flush_timer_sleeps_until_the_next_window_is_due():
    clock = Clock()
    stage, _, _ = stage_with(clock)
    assert stage.next_due_in_s() == 1.0                   # nothing open: until one opens (IDLE_TICK_S)
    await stage.receive(codec.encode(routed_request(priority="interactive"), topics.routed),
                        origin(0), 0)
    assert stage.opened.is_set() and stage.next_due_in_s() == 0.005
    clock.t += 9
    assert stage.next_due_in_s() == 0.0                   # overdue: flush now
