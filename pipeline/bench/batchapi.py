"""``llmpipe bench batchapi``: provider calls and cost per request for
batch-priority traffic on the live path versus through the provider Batch APIs.

The demo traffic mix (pipeline/dev/demo.py) is routed by the real router; the requests that
land on a deployment with a Batch API (OpenAI, Anthropic) are answered twice by an
in-process provider simulator: once live (one chat call each) and once as batch jobs of up
to ``--job-size`` requests per deployment, through the real BatchOffload, poller and result
builder. Every HTTP call to the simulator is counted; costs are what the Usage events say
(live: list price; Batch API: the catalog's batch_discount)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
import uuid
from collections import Counter

import httpx

from pipeline.batchapi.clients import CLIENT_CLASSES
from pipeline.batchapi.config import BatchApiConfig, PollSettings
from pipeline.batchapi.jobs import JobBook
from pipeline.batchapi.offload import BatchOffload, batch_capable
from pipeline.batchapi.poller import BatchPoller
from pipeline.batchapi.results import ResultBuilder
from pipeline.catalog import nanos_to_usd
from pipeline.clock import now_ms
from pipeline.dev.demo import demo_requests
from pipeline.events.models import Batch, RoutedRequest, Usage
from pipeline.providers import make_adapter
from pipeline.routing.tokens import estimate_prompt_tokens
from pipeline.runtime import build_runtime
from pipeline.secrets import Secret
from pipeline.settings import Settings
from pipeline.simulator import load_config, start_simulator

KEY = "sk-bench-0123456789abcdef0123"


class Counting(httpx.AsyncBaseTransport):
    def __init__(self):
        self.inner, self.calls = httpx.AsyncHTTPTransport(), Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls[request.method] += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def measure(n: int, job_size: int, seed: int) -> dict:
    runtime = build_runtime(Settings(seed=seed))
    router, deps = runtime.router(), runtime.deployments
    config = BatchApiConfig()
    routed: list[RoutedRequest] = []
    for r in demo_requests(n, seed=seed):
        tokens = estimate_prompt_tokens(m.content for m in r.messages)
        route = router.route(r, tokens)
        if not batch_capable(deps.by_id[route.decision.deployment], config, runtime.catalog):
            continue
        routed.append(RoutedRequest(request=r, route=route.decision, max_tokens=route.max_tokens,
                                    reply_topic="llm.responses", received_at_ms=0, routed_at_ms=0))
    sim = await start_simulator(load_config(seed=seed, latency_scale=0.001, base_errors=False))
    try:
        async with httpx.AsyncClient(base_url=sim.url) as http:
            await http.put("/_sim/batches", json={"completion_delay_s": 0})
        moved = {d: dataclasses.replace(dep, base_url=sim.base_url) for d, dep in deps.by_id.items()}
        # live: one chat call per request
        live_t = Counting()
        live_cost = 0
        adapters = {d: make_adapter(moved[d], Secret(KEY), deps.calls, live_t)
                    for d in {r.route.deployment for r in routed}}
        for r in routed:
            c = await adapters[r.route.deployment].complete(r)
            live_cost += runtime.catalog.cost_nanos(r.route.model, c.prompt_tokens,
                                                    c.completion_tokens, c.cached_tokens)
        for a in adapters.values():
            await a.aclose()
        # Batch API: jobs of up to job_size per deployment
        sim.simulator.reset()
        batch_t = Counting()
        out: list = []

        async def emit(outs) -> None:
            out.extend(outs)

        clients = {d: CLIENT_CLASSES[moved[d].adapter](moved[d], Secret(KEY), deps.calls,
                                                       transport=batch_t) for d in adapters}
        book = JobBook(PollSettings(0.01, 2, 0.1), 60, now_ms)
        offload = BatchOffload(clients, config, "llm.batch-jobs", 6, emit, book)
        poller = BatchPoller(book, clients, ResultBuilder(runtime.catalog, deps, Settings().topics),
                             "llm.batch-jobs", emit)
        by_dep: dict[str, list[RoutedRequest]] = {}
        for r in routed:
            by_dep.setdefault(r.route.deployment, []).append(r)
        jobs = 0
        for dep, items in sorted(by_dep.items()):
            for i in range(0, len(items), job_size):
                await offload.submit(Batch(str(uuid.uuid4()), dep, 0, 0, items[i:i + job_size],
                                           priority="batch"))
                jobs += 1
        deadline = time.monotonic() + 60
        while book.jobs and time.monotonic() < deadline:
            await poller.poll_due()
            await asyncio.sleep(0.01)
        await offload.aclose()
        usage = [o.event for o in out if isinstance(o.event, Usage)]
        batch_cost = sum(u.cost_nanos for u in usage)
        return {"requests": n, "batchable": len(routed), "jobs": jobs,
                "deployments": dict(Counter(r.route.deployment for r in routed)),
                "answered": len(usage), "live_calls": sum(live_t.calls.values()),
                "batch_calls": sum(batch_t.calls.values()), "live_cost": live_cost,
                "batch_cost": batch_cost}
    finally:
        await sim.stop()


HELP = "batch-priority traffic through the Batch API (simulated): calls and cost per request"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--job-size", type=int, default=64,
                   help="requests per batch job (the batch window's max_batch_size)")
    p.add_argument("--seed", type=int, default=7)


def main(args: argparse.Namespace) -> int:
    r = asyncio.run(measure(args.requests, args.job_size, args.seed))
    k = r["batchable"] or 1
    print(f"requests {r['requests']}, on Batch API deployments {r['batchable']} "
          f"{r['deployments']}, jobs {r['jobs']}, answered {r['answered']}")
    print("| path | provider HTTP calls/request | cost/request | total cost |")
    print("|---|---|---|---|")
    for name, calls, cost in (("live (chat completions)", r["live_calls"], r["live_cost"]),
                              ("Batch API", r["batch_calls"], r["batch_cost"])):
        print(f"| {name} | {calls / k:.3f} | ${nanos_to_usd(cost // k):.6f} | "
              f"${nanos_to_usd(cost):.4f} |")
    return 0

