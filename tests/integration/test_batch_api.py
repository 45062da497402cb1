"""Batch-priority traffic through the simulated provider Batch APIs on the embedded stack:
intake -> batcher -> dispatch offloads the Batch as an OpenAI or Anthropic batch job ->
the poller emits one Response and one Usage per request at the batch price. Then a worker
SIGKILLed while a job is in flight: its successor reads the job back from llm.batch-jobs,
and every request is still answered and billed once. And a second worker joining (a
rebalance) while jobs are in flight, windows are open and requests keep coming: each
request ends in one Response and one usage row."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from decimal import Decimal

import httpx
import yaml

from pipeline.catalog import load_catalog, nanos_to_usd
from pipeline.client import GatewayClient, make_request
from pipeline.batchapi.offload import partition_for
from pipeline.dev.stack import DevStack, write_config_dir
from pipeline.events.models import BatchJob, Response, RoutingHints, Usage

catalog = load_catalog()
BATCH = RoutingHints(priority="batch")
MODELS = ("gpt-4o-mini", "claude-sonnet-4.5")      # an OpenAI and an Anthropic deployment


def fast_config(tmp_path):
    """Batch windows and polling in tenths of a second instead of seconds and minutes."""
    config = write_config_dir(tmp_path / "config")
    batching = yaml.safe_load((config / "batching.yaml").read_text())
    batching["priorities"]["batch"]["max_wait_ms"] = 300
    (config / "batching.yaml").write_text(yaml.safe_dump(batching))
    batchapi = yaml.safe_load((config / "batchapi.yaml").read_text())
    batchapi["batch_api"]["poll"] = {"initial_s": 0.2, "factor": 1.5, "max_s": 0.5}
    (config / "batchapi.yaml").write_text(yaml.safe_dump(batchapi))
    return config


def sim_batches(stack: DevStack, **settings) -> dict:
    if settings:
        resp = httpx.put(f"{stack.simulator_url}/_sim/batches", json=settings, timeout=10)
    else:
        resp = httpx.get(f"{stack.simulator_url}/_sim/batches", timeout=10)
    resp.raise_for_status()
    return resp.json()


def requests_for(tag: str, n: int):
    return [make_request("acme", f"{tag}: summarise ticket {i} for the weekly digest.",
                         model=MODELS[i % 2], max_tokens=64, hints=BATCH) for i in range(n)]


async def wait_until_in_jobs(stack: DevStack, ids: set[str], timeout: float) -> set[str]:
    """Request ids held by jobs on llm.batch-jobs, once they include ``ids`` or at the
    timeout (the caller asserts what it needs)."""
    deadline = time.monotonic() + timeout
    while True:
        recorded = {item.request.request_id
                    for job in stack.read_events(stack.topics.batch_jobs, BatchJob, timeout=5)
                    for item in job.items}
        if ids <= recorded or time.monotonic() >= deadline:
            return recorded
        await asyncio.sleep(0.1)


def check_billed_at_batch_rate(worker, ids: list[str]) -> None:
    counts = worker.wait_for_usage(ids, timeout=60)
    assert counts == {rid: 1 for rid in ids}, {k: v for k, v in counts.items() if v != 1}
    for row in worker.usage_rows(ids):
        assert row["status"] == "ok", row
        batch = catalog.cost_nanos(row["served_model"], row["prompt_tokens"],
                                   row["completion_tokens"], row["cached_tokens"], batch=True)
        live = catalog.cost_nanos(row["served_model"], row["prompt_tokens"],
                                  row["completion_tokens"], row["cached_tokens"])
        assert Decimal(row["cost_usd"]) == nanos_to_usd(batch) and 0 < batch < live, row


async def test_batch_priority_goes_through_the_batch_api_and_survives_a_sigkill(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batchapi")
    uid = uuid.uuid4().hex[:8]
    stack = DevStack(tmp / "stack", topic_prefix=f"batchapi{uid}.", app_id=f"llmpipe-batchapi-{uid}",
                     simulator_args=["--latency-scale", "0.05", "--no-base-errors", "--seed", "17"],
                     config_dir=fast_config(tmp)).start(broker=broker)
    try:
        sim_batches(stack, completion_delay_s=1.0)
        first = stack.start_worker("worker-1")
        started = time.monotonic()
        # 1. Through the Batch API, one response and one usage row each, at the batch price.
        calm = requests_for("calm", 8)
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            answers = await asyncio.gather(*(gw.request(r, timeout=60) for r in calm))
        assert all(a.status == "ok" and a.content for a in answers), [a.error for a in answers]
        jobs = sim_batches(stack)
        assert jobs["items"] == len(calm) and {j["shape"] for j in jobs["jobs"]} == {"openai", "anthropic"}
        check_billed_at_batch_rate(first, [r.request_id for r in calm])
        calm_s = time.monotonic() - started

        # 2. SIGKILL while jobs are in flight at the provider.
        sim_batches(stack, completion_delay_s=8.0)
        crash = requests_for("crash", 6)
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            futures = {r.request_id: gw.expect(r) for r in crash}
            for r in crash:
                await gw.send(r)
            # Killed only once the jobs are on llm.batch-jobs: before that, the Batch is not
            # acknowledged and a restart submits it again (a second job, at-least-once).
            await wait_until_in_jobs(stack, {r.request_id for r in crash}, timeout=30)
            in_flight = [j for j in sim_batches(stack)["jobs"] if not j["ended"]]
            assert in_flight, "no batch job in flight at the provider when the worker died"
            assert not any(f.done() for f in futures.values())
            stack.kill_worker(first)
            killed_at = time.monotonic()
            second = stack.start_worker("worker-2")
            results = {r.request_id: await gw.wait(r, 60) for r in crash}
            resumed_s = time.monotonic() - killed_at
        assert all(r.status == "ok" for r in results.values()), [r.error for r in results.values()]
        assert sim_batches(stack)["items"] == len(calm) + len(crash)   # no job submitted twice
        check_billed_at_batch_rate(second, [r.request_id for r in crash])

        # 3. The restart re-emitted nothing: one Usage event per request on llm.usage, and
        #    every job's last record says its results were emitted.
        usage = Counter(u.request_id for u in stack.read_events(stack.topics.usage, Usage))
        assert {usage[r.request_id] for r in calm + crash} == {1}, usage
        last: dict[str, BatchJob] = {}
        for job in stack.read_events(stack.topics.batch_jobs, BatchJob):
            last[job.job_id] = job
        assert {j.state for j in last.values()} == {"emitted"}
        assert sum(j.succeeded for j in last.values()) == len(calm) + len(crash)
        print(f"calm phase {calm_s:.1f}s; after SIGKILL, results in {resumed_s:.1f}s "
              f"({len(in_flight)} job(s) in flight)")
    finally:
        stack.stop()


REBALANCE_MODELS = ("gpt-4.1", "gpt-4o-mini", "claude-sonnet-4.5")
# Renamed so that their deployments sit on llm.batches partitions 2, 4 and 0 (the catalog's
# batch-capable ones are all on 3-5): whichever half of the partitions worker-2 takes, a
# deployment with jobs in flight moves to it (worker-2 has taken 0-2 here).
RENAMED = {"openai-gpt-4.1": "openai-gpt-4.1-a", "anthropic-claude-sonnet-4.5": "anthropic-claude-sonnet-4.5-a"}


async def test_rebalance_while_jobs_are_in_flight_and_windows_open_every_request_answered_once(
        broker, tmp_path_factory):
    """Worker-2 joins while worker-1 has provider jobs in flight and batch-priority windows
    open, and while more batch-priority requests arrive: the jobs of the partitions that
    move are polled by their new owner (never by both), windows flushed by the rebalance are
    submitted, and every request ends in exactly one terminal Response and one usage row."""
    tmp = tmp_path_factory.mktemp("batchapi-rebalance")
    uid = uuid.uuid4().hex[:8]
    config = fast_config(tmp)
    batching = yaml.safe_load((config / "batching.yaml").read_text())
    batching["priorities"]["batch"]["max_wait_ms"] = 1500      # windows open at the rebalance
    (config / "batching.yaml").write_text(yaml.safe_dump(batching))
    deployments = yaml.safe_load((config / "deployments.yaml").read_text())
    for dep in deployments["deployments"]:
        dep["id"] = RENAMED.get(dep["id"], dep["id"])
    (config / "deployments.yaml").write_text(yaml.safe_dump(deployments, sort_keys=False))
    stack = DevStack(tmp / "stack", topic_prefix=f"batchreb{uid}.", app_id=f"llmpipe-batchreb-{uid}",
                     simulator_args=["--latency-scale", "0.05", "--no-base-errors", "--seed", "23"],
                     config_dir=config).start(broker=broker)
    try:
        sim_batches(stack, completion_delay_s=60.0)     # no job ends before worker-2 is in
        first = stack.start_worker("worker-1")

        def wave(tag: str, n: int):
            return [make_request("acme", f"{tag}: nightly digest {i}.", model=REBALANCE_MODELS[i % 3],
                                 max_tokens=32, hints=BATCH) for i in range(n)]

        def jobs_view(worker) -> dict:
            resp = httpx.get(f"{worker.url}/llmpipe/batchapi/jobs/", timeout=10)
            resp.raise_for_status()
            return resp.json()

        sent = []
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            async def send(reqs):
                for r in reqs:
                    gw.expect(r)
                    await gw.send(r)
                sent.extend(reqs)

            # 1. Jobs in flight at the provider, submitted by worker-1.
            await send(wave("in-flight", 9))
            ids = {r.request_id for r in sent}
            recorded = await wait_until_in_jobs(stack, ids, timeout=15)
            assert ids <= recorded, "the first wave never became provider jobs"
            # 2. Windows open, and requests keep arriving while worker-2 joins.
            await send(wave("open-window", 9))
            t0 = time.monotonic()
            joining = asyncio.ensure_future(asyncio.to_thread(stack.start_worker, "worker-2",
                                                              ("dispatch",)))
            n = 0
            while not joining.done() or time.monotonic() - t0 < 2.0:
                await send(wave(f"during-{n}", 3))
                n += 1
                await asyncio.sleep(0.4)
            second = await joining
            joined_s = time.monotonic() - t0
            # 3. The jobs of the partitions that moved are worker-2's now, and only its.
            mine = {"worker-1": set(), "worker-2": set()}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                views = {"worker-1": jobs_view(first), "worker-2": jobs_view(second)}
                mine = {name: {j["job_id"] for j in v["jobs"]} for name, v in views.items()}
                if mine["worker-2"] and views["worker-2"]["restored"] and views["worker-1"]["restored"]:
                    break
                await asyncio.sleep(0.2)
            assert mine["worker-2"], f"no job moved to worker-2: {views}"
            assert not mine["worker-1"] & mine["worker-2"], views
            for name, v in views.items():
                assert {partition_for(j["deployment"], 6) for j in v["jobs"]} <= set(v["partitions"]), \
                    (name, v)
            in_flight = len([j for j in sim_batches(stack)["jobs"] if not j["ended"]])
            sim_batches(stack, completion_delay_s=1.0)        # now let them end
            results = {}
            for r in sent:
                remaining = max(0.1, 30 - (time.monotonic() - t0))
                results[r.request_id] = await gw.wait(r, remaining)
            answered_s = time.monotonic() - t0
            duplicates = gw.duplicates_dropped
        assert all(r.status == "ok" for r in results.values()), \
            {rid: r.error for rid, r in results.items() if r.status != "ok"}
        all_ids = [r.request_id for r in sent]
        responses = Counter(r.request_id for r in stack.read_events(stack.topics.responses, Response))
        assert {rid: responses[rid] for rid in all_ids} == {rid: 1 for rid in all_ids}, \
            {rid: responses[rid] for rid in all_ids if responses[rid] != 1}
        assert duplicates == 0
        check_billed_at_batch_rate(first, all_ids)
        last: dict[str, BatchJob] = {}
        for job in stack.read_events(stack.topics.batch_jobs, BatchJob):
            last[job.job_id] = job
        assert {j.state for j in last.values()} == {"emitted"}
        assert sum(j.succeeded for j in last.values()) == len(all_ids)
        ended = {name: jobs_view(w)["ended_here"] for name, w in (("worker-1", first), ("worker-2", second))}
        print(f"{len(all_ids)} requests; worker-2 up {joined_s:.1f}s after start, took "
              f"{len(mine['worker-2'])} job(s) of {in_flight} in flight; jobs ended "
              f"{ended}; all answered {answered_s:.1f}s after worker-2 started; {len(last)} jobs")
    finally:
        stack.stop()
