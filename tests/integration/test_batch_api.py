"""Batch-priority traffic through the simulated provider Batch APIs on the embedded stack:
intake -> batcher -> dispatch offloads the Batch as an OpenAI or Anthropic batch job ->
the poller emits one Response and one Usage per request at the batch price. Then a worker
SIGKILLed while a job is in flight: its successor reads the job back from llm.batch-jobs,
and every request is still answered and billed once."""

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
from pipeline.devstack import DevStack, write_config_dir
from pipeline.events.models import BatchJob, RoutingHints, Usage

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
            futures = {r.request_id: gw.expect(r.request_id) for r in crash}
            for r in crash:
                await gw.send(r)
            # Killed only once the jobs are on llm.batch-jobs: before that, the Batch is not
            # acknowledged and a restart submits it again (a second job, at-least-once).
            crash_ids = {r.request_id for r in crash}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                recorded = {item.request.request_id
                            for job in stack.read_events(stack.topics.batch_jobs, BatchJob, timeout=5)
                            for item in job.items}
                if crash_ids <= recorded:
                    break
                await asyncio.sleep(0.1)
            in_flight = [j for j in sim_batches(stack)["jobs"] if not j["ended"]]
            assert in_flight, "no batch job in flight at the provider when the worker died"
            assert not any(f.done() for f in futures.values())
            stack.kill_worker(first)
            killed_at = time.monotonic()
            second = stack.start_worker("worker-2")
            results = {rid: await gw.wait(rid, fut, 60) for rid, fut in futures.items()}
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
