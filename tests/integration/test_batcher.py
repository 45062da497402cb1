"""The micro-batcher on the embedded stack: standard traffic is batched, interactive traffic
(no window) is dispatched in intake and never reaches the batcher or llm.batches, every
request gets exactly one response and one usage row, poison on llm.routed is dead-lettered, and windows are flushed (not lost, not left to
age) when a rebalance or a shutdown takes their partition away.

Timing tolerance: added waits are read from the Batch events (flushed_at_ms - opened_at_ms,
the longest any request of the batch waited in its window). A loaded worker closes every
window late by its event-loop lag, whatever the window; the batcher measures that lag (how
late its flush timer wakes against the time it meant to wake, `loop_lag_ms` on
/llmpipe/batcher/stats/). So: P99 of the waits <= window + the worker's P99 loop lag +
SLACK_MS (50 ms). On this 2-core machine shared by several test processes (load average
6-13) loop lag P99 reached ~110 ms. A timer that means to wake too late (a wrong due time)
fails the check."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import yaml

from pipeline.catalog import load_catalog
from pipeline.client import GatewayClient, make_request
from pipeline.providers.deployments import load_deployments
from pipeline.dev.stack import DevStack, write_config_dir
from pipeline.events.models import Batch, DeadLetter, RoutingHints
from pipeline.resilience.health import percentile
from tests.integration.conftest import answers

pytestmark = pytest.mark.integration

TIMEOUT = 60
SLACK_MS = 50
INTERACTIVE, INTERACTIVE_GAP_S = 60, 0.04
MODEL = "deepseek-chat"          # one deployment (deepseek-v3.2): one window per priority
LONG_BATCH_WAIT_MS = 60_000      # batch-priority windows here only close by size or flush


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    config = write_config_dir(tmp_path_factory.mktemp("batcher-config"))
    batching = yaml.safe_load((config / "batching.yaml").read_text())
    batching["priorities"]["batch"]["max_wait_ms"] = LONG_BATCH_WAIT_MS
    (config / "batching.yaml").write_text(yaml.safe_dump(batching))
    offload = config / "batchapi.yaml"
    if offload.exists():    # windows are tested here, on the live path; the Batch API has its own tests
        data = yaml.safe_load(offload.read_text())
        data["batch_api"]["disabled_deployments"] = catalog_deployments()
        offload.write_text(yaml.safe_dump(data))
    uid = uuid.uuid4().hex[:8]
    s = DevStack(tmp_path_factory.mktemp("batcher"), topic_prefix=f"batcher{uid}.",
                 app_id=f"llmpipe-batcher-{uid}", config_dir=config,
                 simulator_args=["--latency-scale", "0.05", "--no-base-errors", "--seed", "3"])
    s.start(broker=broker)
    try:
        s.start_worker("worker-1")
        yield s
    finally:
        s.stop()


def batches_by_request(stack) -> dict[str, list[Batch]]:
    seen: dict[str, list[Batch]] = {}
    for b in stack.read_events(stack.topics.batches, Batch):
        for item in b.items:
            seen.setdefault(item.request.request_id, []).append(b)
    return seen


async def test_standard_is_batched_interactive_skips_the_window_one_response_each(stack):
    standard = [make_request("acme", f"summarise ticket {i}", model=MODEL, max_tokens=32)
                for i in range(24)]
    interactive = [make_request("acme", f"quick answer {i}", model=MODEL, max_tokens=16,
                                hints=RoutingHints(priority="interactive")) for i in range(INTERACTIVE)]
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        async def paced():      # one every 40 ms, beside the standard burst
            futures = []
            for r in interactive:
                futures.append(asyncio.ensure_future(gw.request(r, timeout=TIMEOUT)))
                await asyncio.sleep(INTERACTIVE_GAP_S)
            return await asyncio.gather(*futures)
        burst, steady = await asyncio.gather(
            asyncio.gather(*(gw.request(r, timeout=TIMEOUT) for r in standard)), paced())
        duplicates = gw.duplicates_dropped
    responses = list(burst) + list(steady)
    assert all(r.status == "ok" for r in responses), [r.error for r in responses if r.status != "ok"]
    ids = [r.request_id for r in standard + interactive]
    assert sorted(r.request_id for r in responses) == sorted(ids) and duplicates == 0

    seen = batches_by_request(stack)
    # interactive has no window and is dispatched in intake (pipeline/agents/inline.py):
    # it never reaches llm.batches; standard is batched, each request in one Batch, but
    # for the burst's first few, which find the deployment quiet and skip the window
    # (pipeline/batching/alone.py: dispatched in intake as well)
    assert {r.request_id: len(seen.get(r.request_id, [])) for r in interactive} == {
        r.request_id: 0 for r in interactive}
    counts = [len(seen.get(r.request_id, [])) for r in standard]
    assert set(counts) <= {0, 1} and counts.count(0) <= 4, counts
    std = {b.batch_id: b for r in standard for b in seen.get(r.request_id, [])}.values()
    assert {b.priority for b in std} == {"standard"}
    sizes = sorted(len(b.items) for b in std)
    assert max(sizes) > 1 and len(std) < len(standard), sizes
    assert all(len(b.items) <= 8 for b in std)

    std_waits = sorted(b.flushed_at_ms - b.opened_at_ms for b in std)
    print(f"standard batch sizes {sizes}; fill {sorted(b.fill_reason for b in std)}; "
          f"alone (quiet) {counts.count(0)}\n"
          f"standard window wait p99 {percentile(std_waits, .99):.0f} ms")
    worker = stack.workers[0]
    body = worker.batcher_stats()
    # Lag is sampled when the flush timer wakes for a due window; with interactive past the
    # batcher and every standard window filled by size, there may be none: no lag to allow.
    loop_lag = body["loop_lag_ms"] or {"p50": 0, "p99": 0, "max": 0}
    lag, median_lag = loop_lag["p99"], loop_lag["p50"]
    print(f"worker loop lag p50/p99/max {median_lag:.0f}/{lag:.0f}/{loop_lag['max']} ms "
          f"({'measured' if body['loop_lag_ms'] else 'no timer-closed window'})")
    assert percentile(std_waits, .99) <= 100 + lag + SLACK_MS, (std_waits, loop_lag)

    assert worker.wait_for_usage(ids) == {rid: 1 for rid in ids}
    view = body["priorities"]
    assert view["standard"]["mean_batch_size"] > 1
    assert "interactive" not in view, view.get("interactive")    # none passed the batcher


async def test_poison_on_routed_is_dead_lettered_and_the_batcher_keeps_going(stack):
    poison = b"\x13\x37 not a routed request"
    await stack.publish_raw([(stack.topics.routed, b"deepseek-v3.2", poison)])
    after = make_request("acme", "still served after the poison?", model=MODEL, max_tokens=16)
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        assert (await gw.request(after, timeout=TIMEOUT)).status == "ok"
    letters = [d for d in stack.read_events(stack.topics.dead_letter, DeadLetter) if d.value == poison]
    assert [(d.agent, d.source_topic) for d in letters] == [("batcher", stack.topics.routed)]
    assert stack.workers[0].alive()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_rebalance_and_shutdown_flush_open_windows_nothing_lost(stack):
    """Batch-priority requests sit in 60 s windows. A second worker joining takes partitions
    from the first (rebalance), then stopping it gives them back (shutdown on the second,
    rebalance on the first): each time the windows are flushed within seconds, and every
    request ends with one response and one usage row."""
    async def send_batch_priority(gw, models, tag):
        reqs = [make_request("acme", f"{tag} nightly report {i}", model=model, max_tokens=16,
                             hints=RoutingHints(priority="batch")) for i, model in enumerate(models)]
        for r in reqs:
            gw.expect(r)
            await gw.send(r)
        return {r.request_id: r for r in reqs}

    def waiting(worker) -> list[dict]:
        return [w for w in worker.batcher_stats()["windows"] if w["priority"] == "batch"]

    def all_waiting(n):
        return sum(w["requests"] for worker in stack.workers for w in waiting(worker)) >= n

    def shutdown_batch_with(futures):
        seen = batches_by_request(stack)
        return all(any(b.fill_reason == "shutdown" for b in seen.get(rid, [])) for rid in futures)

    first = stack.workers[0]
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        # 1. A second worker joins and takes partitions: the open window is flushed.
        before = await send_batch_priority(gw, [MODEL] * 5, "rebalance")
        await asyncio.to_thread(wait_until, lambda: all_waiting(5), 30, "5 requests in a window")
        t0 = time.monotonic()
        # (dispatch and its batcher only: the ledger's chDB path has one owner, worker-1)
        second = await asyncio.to_thread(stack.start_worker, "worker-2", ("dispatch",))
        await asyncio.to_thread(wait_until, lambda: shutdown_batch_with(before), 30,
                                "a shutdown-flushed batch holding the requests")
        flushed_s = time.monotonic() - t0
        results = await answers(gw, stack, list(before.values()), TIMEOUT)
        assert all(r.status == "ok" for r in results.values())
        assert time.monotonic() - t0 < LONG_BATCH_WAIT_MS / 1000 / 2    # not by age
        print(f"rebalance: flushed {flushed_s:.1f}s after worker-2 started, answered "
              f"{time.monotonic() - t0:.1f}s")

        # 2. One request per deployment, so both workers hold windows; stop worker-2.
        after = await send_batch_priority(gw, list(catalog_models()), "shutdown")
        await asyncio.to_thread(wait_until, lambda: all_waiting(len(after)), 30,
                                "every request in a window")
        on_second = sum(w["requests"] for w in waiting(second))
        # The six deployment ids hash to partitions 0, 3, 4, 5: any 3 of the 6 partitions
        # hold one, so worker-2 always has a window to flush on its shutdown.
        assert on_second >= 1
        t0 = time.monotonic()
        await asyncio.to_thread(stack.stop_worker, second)
        await asyncio.to_thread(wait_until, lambda: shutdown_batch_with(after), 30,
                                "shutdown-flushed batches holding the requests")
        results = await answers(gw, stack, list(after.values()), TIMEOUT)
        assert all(r.status == "ok" for r in results.values())
        print(f"shutdown: worker-2 held {on_second}/{len(after)} requests; all flushed and "
              f"answered {time.monotonic() - t0:.1f}s after its stop began")
        assert time.monotonic() - t0 < LONG_BATCH_WAIT_MS / 1000 / 2
    ids = list(before) + list(after)
    assert first.wait_for_usage(ids) == {rid: 1 for rid in ids}


def catalog_models() -> list[str]:
    """The chat models (a chat request to an embedding model is refused at intake)."""
    return [name for name, m in load_catalog().models.items() if m.kind == "chat"]


def catalog_deployments() -> list[str]:
    return list(load_deployments(load_catalog()).by_id)
