"""Hostile records produced straight to llm.requests (the poison-record issue, cases 1-8).

Whatever a producer puts on llm.requests, every record ends in exactly one outcome: a
Response (ok or error) or a DeadLetter. A request intake cannot serve safely (strings that
are not Unicode, a created_at_ms far from now, a reply_topic that is not a valid or not an
allowed topic, a size the broker cannot carry) is refused with a terminal ``invalid_request``
error Response on the default responses topic and one usage row; its neighbours (same
tenant partition, same deployment and micro-batch) are answered as usual and billed once.
Request ids are scoped by tenant. A SIGTERM under load ends the worker cleanly and
promptly, and a restart never answers a request a second time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from pipeline.client import GatewayClient, make_request
from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import DeadLetter, Request, Response
from pipeline.routing.tokens import estimate_prompt_tokens
from tests.integration.conftest import make_stack, worker_stack

codec = Codec()

TIMEOUT = 45            # seconds to wait for the responses of one test's burst
USAGE_TIMEOUT = 45      # seconds to wait for the ledger rows of one test
PIN = "deepseek-chat"   # one deployment (deepseek-v3.2): bad record and neighbours share a batch
BROKER_MAX = 1_000_000  # the workers' producer refuses records over this many bytes
MAX_PROMPT_TOKENS = 200_000   # routing.yaml max_prompt_tokens


# --- helpers -------------------------------------------------------------------------------

async def produce(stack, records: list[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
    """(key, value) records onto llm.requests in one burst, so they reach the pipeline
    together; each one's (partition, offset)."""
    return await stack.publish_raw([(stack.topics.requests, key, value) for key, value in records])


def requests_burst(tenant: str, n: int, **kwargs) -> list[Request]:
    return [make_request(tenant, f"neighbour {i}: name a colour.", max_tokens=16, **kwargs)
            for i in range(n)]


def surrogate_json(tenant: str, **kwargs) -> tuple[Request, bytes]:
    """A JSON request whose content is the JSON text "hi \\ud800" (a lone surrogate)."""
    request = make_request(tenant, "SURROGATE-PLACEHOLDER", max_tokens=16, **kwargs)
    raw = codec.encode_json(request).replace(b"SURROGATE-PLACEHOLDER", b"hi \\ud800")
    assert b'"hi \\ud800"' in raw
    return request, raw


def oversize_request(tenant: str) -> Request:
    """A ~1 MB prompt intake's token limit accepts, whose RoutedRequest the broker cannot
    carry (gemini-2.5-flash: a context window of 1M tokens)."""
    content = "abcdefg " * 126_000                    # 1,008,000 bytes, ~126k tokens
    request = make_request(tenant, content, model="gemini-2.5-flash", max_tokens=16)
    assert estimate_prompt_tokens([content]) < MAX_PROMPT_TOKENS
    assert BROKER_MAX < len(codec.encode(request, "llm.requests")) < 1024 * 1024
    return request


async def collect(futures: dict[str, asyncio.Future], timeout: float) -> dict[str, Response | None]:
    """Wait (one deadline for all) for the futures; each request id's Response, or None."""
    pending = [f for f in futures.values() if not f.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    out: dict[str, Response | None] = {}
    for rid, fut in futures.items():
        ok = fut.done() and not fut.cancelled() and fut.exception() is None
        out[rid] = fut.result() if ok else None
    return out


def describe(response: Response | None) -> str:
    if response is None:
        return "no response"
    err = f" {response.error.code}: {response.error.message[:200]}" if response.error else ""
    return f"{response.status} (tenant {response.tenant}){err}"


def assert_refused(response: Response | None, mentions: str, what: str,
                   codes: tuple[str, ...] = ("invalid_request",)) -> None:
    assert response is not None, f"{what}: no response within the timeout (expected a refusal)"
    assert response.status == "error" and response.error is not None, \
        f"{what}: expected a terminal error response, got {describe(response)}"
    assert response.error.code in codes, f"{what}: expected {codes}, got {describe(response)}"
    if mentions:
        assert mentions in response.error.message, \
            f"{what}: the message should mention {mentions!r}: {response.error.message!r}"


def assert_all_ok(results: dict[str, Response | None], requests: list[Request], what: str) -> None:
    bad = {r.request_id: describe(results.get(r.request_id)) for r in requests
           if results.get(r.request_id) is None or results[r.request_id].status != "ok"}
    assert not bad, (f"{what}: {len(bad)} of {len(requests)} valid neighbours not answered ok: "
                     f"{sorted(Counter(bad.values()).items())}")
    for r in requests:
        assert results[r.request_id].tenant == r.tenant


def assert_one_usage_row_each(worker, ids: list[str], what: str,
                              timeout: float = USAGE_TIMEOUT) -> None:
    counts = worker.wait_for_usage(ids, timeout=timeout)
    wrong = {rid: n for rid, n in counts.items() if n != 1}
    assert not wrong, (f"{what}: expected one usage row per request; "
                       f"{len(wrong)} of {len(ids)} differ: {sorted(Counter(wrong.values()).items())}"
                       f" (row count: number of requests)")


def same_partition_tenant(tenant: str, partitions: int, prefix: str) -> str:
    """Another tenant whose records land on ``tenant``'s llm.requests partition."""
    part = DefaultPartitioner()
    every = list(range(partitions))
    want = part(tenant.encode(), every, every)
    for i in range(1000):
        other = f"{prefix}-{i}"
        if part(other.encode(), every, every) == want:
            return other
    raise AssertionError("no tenant name found on the same partition")


async def wait_on_broker(consumer: AIOKafkaConsumer, request_id: str, tenant: str,
                         timeout: float = 20.0) -> None:
    """Read llm.requests (from where ``consumer`` stands) until (tenant, request_id) is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            for record in records:
                try:
                    seen = codec.decode(record.value, Request)
                except DecodeError:
                    continue
                if seen.request_id == request_id and seen.tenant == tenant:
                    return
    raise AssertionError(f"request {request_id} of {tenant} not on llm.requests after {timeout}s")


def responses_by_id(stack, ids: set[str]) -> Counter:
    return Counter(r.request_id for r in stack.read_events(stack.topics.responses, Response, 60)
                   if r.request_id in ids)


# --- one stack for cases 1-7 -----------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    """A worker with a fast, error-free simulator. The ledger flushes every 3 s, so the
    usage rows of one burst go to ClickHouse in one INSERT (case 5)."""
    with worker_stack(broker, tmp_path_factory, "poison", seed=17, ledger_flush_s=3.0) as stack:
        yield stack


async def test_lone_surrogate_is_refused_and_its_neighbours_are_answered(stack):
    """Case 1: "hi \\ud800" decodes as JSON but cannot be encoded again: intake refuses it
    (invalid_request, naming the content) instead of leaving it un-acked and unanswered."""
    tenant = "poison-surrogate"
    bad, raw = surrogate_json(tenant, model=PIN)
    good = requests_burst(tenant, 5, model=PIN)
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        futures = {r.request_id: gw.expect(r) for r in [bad, *good]}
        await produce(stack, [(tenant.encode(), raw)]
                      + [(tenant.encode(), gw.encode(r)) for r in good])
        results = await collect(futures, TIMEOUT)
    assert_refused(results[bad.request_id], "content", "lone surrogate in messages[0].content")
    assert_all_ok(results, good, "neighbours of the surrogate")
    assert_one_usage_row_each(stack.workers[0], [r.request_id for r in [bad, *good]],
                              "surrogate and neighbours")


async def test_min_long_created_at_is_refused_and_its_batch_is_answered(stack):
    """Case 2: created_at_ms = -2**63 makes latency_ms overflow while the Response is
    encoded, and dispatch emits a batch's outputs together: the batch must not be lost."""
    tenant = "poison-minlong"
    bad = make_request(tenant, "when was this sent?", model=PIN, max_tokens=16
                       ).replace(created_at_ms=-2**63)
    good = requests_burst(tenant, 5, model=PIN)
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        futures = {r.request_id: gw.expect(r) for r in [bad, *good]}
        await produce(stack, [(tenant.encode(), gw.encode(r)) for r in [bad, *good]])
        results = await collect(futures, TIMEOUT)
    assert_all_ok(results, good, "batch neighbours of created_at_ms=-2**63")
    assert_refused(results[bad.request_id], "created_at_ms", "created_at_ms=-2**63")
    assert_one_usage_row_each(stack.workers[0], [r.request_id for r in [bad, *good]],
                              "min-long request and neighbours")


async def test_bad_or_foreign_reply_topic_is_refused_on_the_default_topic(stack):
    """Case 3: an invalid reply_topic used to lose its whole batch (the publish retried
    forever), and any existing topic, even the pipeline's own usage topic, was accepted."""
    tenant = "poison-replytopic"
    invalid = make_request(tenant, "reply elsewhere", model=PIN, max_tokens=16,
                           reply_topic="not a topic!!")
    foreign = make_request(tenant, "reply into the usage topic", model=PIN, max_tokens=16,
                           reply_topic=stack.topics.usage)
    good = requests_burst(tenant, 5, model=PIN)
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:     # default responses topic
        futures = {r.request_id: gw.expect(r) for r in [invalid, *good, foreign]}
        await produce(stack, [(tenant.encode(), gw.encode(r)) for r in [invalid, *good, foreign]])
        results = await collect(futures, TIMEOUT)
    assert_all_ok(results, good, "batch neighbours of reply_topic='not a topic!!'")
    assert_refused(results[invalid.request_id], "reply_topic", "reply_topic='not a topic!!'")
    assert_refused(results[foreign.request_id], "reply_topic", "reply_topic=<the usage topic>")
    assert_one_usage_row_each(stack.workers[0],
                              [r.request_id for r in [invalid, foreign, *good]],
                              "reply-topic requests and neighbours")


async def test_records_too_large_for_the_broker_end_in_a_refusal_or_a_dead_letter(stack):
    """Case 4: a ~1 MB prompt intake accepts (its RoutedRequest is over the broker's 1 MB)
    and a ~1 MB undecodable record (its DeadLetter is over 1 MB) used to retry forever."""
    tenant = "poison-oversize"
    big = oversize_request(tenant)
    garbage = b"\x13\x37" + b"\xfe" * BROKER_MAX
    good = requests_burst(tenant, 3, model=PIN)
    deadline = time.monotonic() + TIMEOUT
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        futures = {r.request_id: gw.expect(r) for r in [big, *good]}
        positions = await produce(stack, [(tenant.encode(), gw.encode(big)),
                                          (tenant.encode(), garbage)]
                                  + [(tenant.encode(), gw.encode(r)) for r in good])
        results = await collect(futures, TIMEOUT)
    garbage_at = positions[1]
    letter = None
    while letter is None:
        letter = next((d for d in stack.read_events(stack.topics.dead_letter, DeadLetter)
                       if d.source_topic == stack.topics.requests
                       and (d.source_partition, d.source_offset) == garbage_at), None)
        if letter is None and time.monotonic() > deadline:
            break
        if letter is None:
            time.sleep(0.5)
    assert_all_ok(results, good, "neighbours of the oversize records")
    assert_refused(results[big.request_id], "", "1 MB prompt (RoutedRequest over 1 MB)",
                   codes=("invalid_request", "context_length_exceeded"))
    assert letter is not None, (f"no DeadLetter for the 1 MB undecodable record at "
                                f"{stack.topics.requests}[{garbage_at[0]}]@{garbage_at[1]}")
    assert letter.agent == "intake"
    assert_one_usage_row_each(stack.workers[0], [r.request_id for r in [big, *good]],
                              "oversize prompt and neighbours")


async def test_created_at_far_from_now_is_refused_not_served_unbilled(stack):
    """Case 6: created_at_ms of +-10**15 or +-2**62 was served ok while its usage event was
    dead-lettered by the ledger (DateTime64 cannot hold it): served, never billed."""
    tenant = "poison-far"
    far = [make_request(tenant, f"far {i}", model=PIN, max_tokens=16).replace(created_at_ms=at)
           for i, at in enumerate([10**15, -10**15, 2**62, -2**62])]
    good = requests_burst(tenant, 2, model=PIN)
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        futures = {r.request_id: gw.expect(r) for r in [*far, *good]}
        await produce(stack, [(tenant.encode(), gw.encode(r)) for r in [*far, *good]])
        results = await collect(futures, TIMEOUT)
    assert_all_ok(results, good, "neighbours of far created_at_ms")
    for r in far:
        assert_refused(results[r.request_id], "created_at_ms", f"created_at_ms={r.created_at_ms}")
    assert_one_usage_row_each(stack.workers[0], [r.request_id for r in [*far, *good]],
                              "far created_at_ms and neighbours")


async def test_the_same_request_id_from_two_tenants_is_two_requests(stack):
    """Case 7: request ids are scoped by tenant. B sends R, then A sends R: each gets its
    own response (A's client, waiting on R, is never handed B's), each is billed once."""
    tenant_a, tenant_b = "poison-id-a", "poison-id-b"
    rid = make_request(tenant_a, "x").request_id
    req_b = make_request(tenant_b, "tenant B asks: name a fruit.", model=PIN, max_tokens=16,
                         request_id=rid)
    req_a = make_request(tenant_a, "tenant A asks: name a tree.", model=PIN, max_tokens=16,
                         request_id=rid)
    watcher = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    await watcher.start()
    try:
        tps = [TopicPartition(stack.topics.requests, p)
               for p in sorted(await _partitions(stack, stack.topics.requests))]
        watcher.assign(tps)
        await watcher.seek_to_end(*tps)
        for tp in tps:
            await watcher.position(tp)
        async with GatewayClient(stack.bootstrap, stack.topics) as gw_b, \
                GatewayClient(stack.bootstrap, stack.topics) as gw_a:
            task_b = asyncio.create_task(gw_b.request(req_b, timeout=TIMEOUT))
            await wait_on_broker(watcher, rid, tenant_b)          # B's R is sent first
            task_a = asyncio.create_task(gw_a.request(req_a, timeout=TIMEOUT))
            resp_b, resp_a = await asyncio.gather(task_b, task_a, return_exceptions=True)
    finally:
        await watcher.stop()
    assert isinstance(resp_b, Response), f"tenant B: {resp_b!r}"
    assert resp_b.tenant == tenant_b and resp_b.status == "ok", describe(resp_b)
    assert isinstance(resp_a, Response), f"tenant A: {resp_a!r}"
    assert resp_a.tenant == tenant_a, f"tenant A's client was handed {describe(resp_a)}"
    assert resp_a.status == "ok", describe(resp_a)
    on_topic = sorted(r.tenant for r in stack.read_events(stack.topics.responses, Response)
                      if r.request_id == rid)
    assert on_topic == sorted([tenant_a, tenant_b]), f"responses for {rid} by tenant: {on_topic}"
    worker = stack.workers[0]
    deadline = time.monotonic() + USAGE_TIMEOUT
    rows = worker.usage_rows([rid])
    while len(rows) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        rows = worker.usage_rows([rid])
    assert sorted(row["tenant"] for row in rows) == sorted([tenant_a, tenant_b]), rows


async def test_a_tenant_with_many_created_at_months_does_not_stop_billing_others(stack):
    """Case 5: 150 requests with 150 different created_at_ms months made ClickHouse refuse
    the usage INSERT ("too many partitions"), and every usage row behind it on that
    partition, other tenants' too, waited forever. Runs last on this stack: on code with the
    bug, that usage partition stays blocked."""
    partitions = len(await _partitions(stack, stack.topics.requests))
    tenant = "poison-months"
    other = same_partition_tenant(tenant, partitions, "poison-billed")
    month_ms = 31 * 24 * 3600 * 1000
    now = int(time.time() * 1000)
    months = [make_request(tenant, f"month {k}", model=PIN, max_tokens=8
                           ).replace(created_at_ms=now - k * month_ms) for k in range(150)]
    others = requests_burst(other, 5, model=PIN)
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        futures = {r.request_id: gw.expect(r) for r in [*months, *others]}
        await produce(stack, [(r.tenant.encode(), gw.encode(r)) for r in [*months, *others]])
        results = await collect(futures, 60)
    unanswered = [r.request_id for r in months if results[r.request_id] is None]
    assert not unanswered, f"{len(unanswered)} of 150 month requests got no response"
    assert_all_ok(results, others, f"tenant {other} (same partition)")
    worker = stack.workers[0]
    assert_one_usage_row_each(worker, [r.request_id for r in others],
                              f"tenant {other}, on the partition of {tenant}")
    assert_one_usage_row_each(worker, [r.request_id for r in months], "150 month requests",
                              timeout=15)


async def _partitions(stack, topic: str) -> set[int]:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        return await producer.partitions_for(topic)
    finally:
        await producer.stop()


# --- case 8: SIGTERM under load, on a stack of its own ---------------------------------------

async def test_sigterm_under_load_after_poison_exits_promptly_and_nothing_is_answered_twice(
        broker, tmp_path_factory):
    """Case 8: after the poison records of cases 1-4, a SIGTERM under load ends the worker
    with code 0 within ~10 s; after a restart every request is answered and none twice."""
    stack = make_stack(broker, tmp_path_factory, "poisonterm",
                       ["--latency-scale", "0.3", "--no-base-errors", "--seed", "23"])
    try:
        first = stack.start_worker("worker-1")
        tenants = ["term-a", "term-b", "term-c", "term-d"]
        models = [PIN, None, "gpt-4", "gemini-2.5-flash"]
        wave1 = [make_request(tenants[i % 4], f"wave one {i}: say hi.", max_tokens=32,
                              model=models[i % 4]) for i in range(24)]
        wave2 = [make_request(tenants[i % 4], f"wave two {i}: say hi.", max_tokens=32,
                              model=models[(i + 1) % 4]) for i in range(24)]
        surrogate, surrogate_raw = surrogate_json("term-a", model=PIN)
        minlong = make_request("term-b", "min long", model=PIN, max_tokens=16
                               ).replace(created_at_ms=-2**63)
        bad_topic = make_request("term-c", "bad reply topic", model=PIN, max_tokens=16,
                                 reply_topic="not a topic!!")
        big = oversize_request("term-d")
        poison = [surrogate, minlong, bad_topic, big]
        everyone = [*poison, *wave1, *wave2]
        ids = {r.request_id for r in everyone}

        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            futures = {r.request_id: gw.expect(r) for r in everyone}
            records = [(b"term-a", surrogate_raw)] + [(r.tenant.encode(), gw.encode(r))
                                                      for r in [minlong, bad_topic, big]]
            records += [(r.tenant.encode(), gw.encode(r)) for r in wave1]
            await produce(stack, records)
            # Under way: half of the first wave answered (or 45 s), then more load.
            deadline = time.monotonic() + TIMEOUT
            while (sum(futures[r.request_id].done() for r in wave1) < len(wave1) // 2
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.05)
            await produce(stack, [(r.tenant.encode(), gw.encode(r)) for r in wave2])

            started = time.monotonic()
            os.killpg(first.process.pid, signal.SIGTERM)
            try:
                code = first.process.wait(20)
                took = time.monotonic() - started
            except subprocess.TimeoutExpired:
                code, took = None, None
                os.killpg(first.process.pid, signal.SIGKILL)
                first.process.wait(10)
            stack.workers.remove(first)
            assert took is not None, "SIGTERM: the worker was still running 20 s after SIGTERM"
            assert code == 0 and took <= 15, f"SIGTERM: exit code {code} after {took:.1f}s"

            second = stack.start_worker("worker-2")
            await collect(futures, 60)
        # Every request answered (read from the topic: the client drops repeats) ...
        deadline = time.monotonic() + 30
        counts = responses_by_id(stack, ids)
        while set(counts) != ids and time.monotonic() < deadline:
            time.sleep(1.0)
            counts = responses_by_id(stack, ids)
        missing = ids - set(counts)
        assert not missing, (f"{len(missing)} of {len(ids)} requests unanswered after the "
                             f"restart (poison ones: {len(missing & {r.request_id for r in poison})})")
        time.sleep(3.0)                   # settle: a late second response would show now
        counts = responses_by_id(stack, ids)
        twice = {rid: n for rid, n in counts.items() if n > 1}
        assert not twice, f"{len(twice)} requests answered more than once: {twice}"
        assert second.alive()
    finally:
        stack.stop()
