"""`llmpipe bench latency`: drive N requests through the embedded stack (one worker, simulator at a
fixed latency, no injected errors) and print throughput and the pipeline's added latency
(end to end at the client minus the provider time the ledger recorded) as P50/P95/P99."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from pipeline.client import GatewayClient, make_request
from pipeline.dev.stack import DevStack
from pipeline.resilience.health import percentile


async def drive(stack: DevStack, n: int, concurrency: int, warmup: int):
    slots = asyncio.Semaphore(concurrency)
    e2e: dict[str, float] = {}
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        for i in range(warmup):                     # group join, connection pools, JIT caches
            await gw.request(make_request("bench-warmup", f"warm up {i}", max_tokens=16), timeout=120)

        async def one(i: int) -> None:
            async with slots:
                req = make_request(f"bench-{i % 8}", f"benchmark request {i}: say hi", max_tokens=16)
                t0 = time.perf_counter()
                resp = await gw.request(req, timeout=120)
                if resp.status == "ok":
                    e2e[req.request_id] = (time.perf_counter() - t0) * 1000

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - started
    return e2e, wall


HELP = "N requests through the embedded stack: throughput and added latency P50/P95/P99"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--provider-latency-ms", type=int, default=50)
    p.add_argument("--data-dir", default=".data/bench")


def main(args: argparse.Namespace) -> int:
    stack = DevStack(Path(args.data_dir), simulator_args=[
        "--fixed-latency-ms", str(args.provider_latency_ms), "--no-base-errors"])
    try:
        stack.start()
        worker = stack.start_worker()
        e2e, wall = asyncio.run(drive(stack, args.requests, args.concurrency, warmup=20))
        ids = list(e2e)
        worker.wait_for_usage(ids, timeout=60)
        provider = {r["request_id"]: float(r["provider_ms"]) for r in worker.usage_rows(ids)}
        added = sorted(e2e[rid] - provider[rid] for rid in ids if rid in provider)
        provider_ms = sorted(provider.values())
        lat = sorted(e2e.values())
        print(f"requests: {args.requests} ok: {len(e2e)} concurrency: {args.concurrency} "
              f"simulated provider latency: {args.provider_latency_ms} ms")
        print(f"throughput: {len(e2e) / wall:.1f} req/s over {wall:.1f}s")
        print("                    p50      p95      p99   (ms)")
        for name, values in (("end to end", lat), ("provider (http)", provider_ms),
                             ("pipeline added", added)):
            if not values:
                print(f"{name:<16} no samples")
                continue
            print(f"{name:<16} {percentile(values, .5):8.1f} {percentile(values, .95):8.1f} "
                  f"{percentile(values, .99):8.1f}")
        if added:
            print(f"pipeline added / provider (p50): "
                  f"{percentile(added, .5) / max(percentile(provider_ms, .5), 1e-9):.2f}x")
        return 0 if len(e2e) == args.requests else 1
    finally:
        stack.stop()
