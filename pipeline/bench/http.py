"""`llmpipe bench http`: the HTTP clients a provider adapter could use, side by side against
the provider simulator (fixed latency, no errors) in one process: httpx with its own pool,
httpx over the aiohttp transport the adapters use (pipeline/providers/transport.py), and
bare aiohttp as the floor. Per client and concurrency: req/s, P50/P99 and the CPU this
process spent per call (os.times: user + system), which is what the worker pays."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Awaitable, Callable

import aiohttp
import httpx

from pipeline.providers.transport import AiohttpTransport
from pipeline.resilience.health import percentile

HELP = "provider-call HTTP clients side by side on the simulator: req/s, P50/P99, CPU per call"
BODY = {"model": "deepseek-chat", "max_tokens": 16,        # a deployment the router picks
        "messages": [{"role": "user", "content": "benchmark request 1: say hi"}]}
POOL = httpx.Limits(max_connections=256, max_keepalive_connections=64)   # the adapters' pool
CLIENTS = ("httpx", "httpx+aiohttp", "aiohttp")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=3000, help="calls per client and concurrency")
    p.add_argument("--concurrency", default="1,100", help="comma-separated (default 1,100)")
    p.add_argument("--provider-latency-ms", type=int, default=50)


async def measure(name: str, url: str, n: int, concurrency: int) -> str:
    headers = {"Authorization": "Bearer sk-bench"}
    post: Callable[[], Awaitable[object]]
    if name == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POOL.max_connections))

        async def post():
            async with session.post(f"{url}/v1/chat/completions", json=BODY, headers=headers,
                                    raise_for_status=True) as r:
                return await r.read()
        close = session.close
    else:
        transport = AiohttpTransport(POOL) if name == "httpx+aiohttp" else None
        client = httpx.AsyncClient(base_url=url, limits=POOL, timeout=30, transport=transport)

        async def post():
            resp = await client.post("/v1/chat/completions", json=BODY, headers=headers)
            resp.raise_for_status()
            return resp.json()
        close = client.aclose
    slots, times = asyncio.Semaphore(concurrency), []

    async def one() -> None:
        async with slots:
            t0 = time.perf_counter()
            await post()
            times.append((time.perf_counter() - t0) * 1000)
    try:
        for _ in range(min(50, n)):                 # connections, caches
            await one()
        times.clear()
        cpu0, wall0 = sum(os.times()[:2]), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        wall, cpu = time.perf_counter() - wall0, sum(os.times()[:2]) - cpu0
    finally:
        await close()
    times.sort()
    return (f"{name:<14} c={concurrency:<4} {n / wall:8.0f} req/s  p50 {percentile(times, .5):6.1f}  "
            f"p99 {percentile(times, .99):6.1f} ms  client cpu {1000 * cpu / n:6.3f} ms/call "
            f"({100 * cpu / wall:.0f}% of a core)")


def main(args: argparse.Namespace) -> int:
    sim = subprocess.Popen([sys.executable, "-m", "pipeline.simulator", "--port", "0",
                            "--fixed-latency-ms", str(args.provider_latency_ms), "--no-base-errors"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().decode().strip().rsplit(" ", 1)[-1]
        print(f"simulator {url}, fixed {args.provider_latency_ms} ms; {args.requests} calls per line; "
              f"the floor is bare aiohttp")
        for c in (int(x) for x in args.concurrency.split(",")):
            for name in CLIENTS:
                print(asyncio.run(measure(name, url, args.requests, c)), flush=True)
        return 0
    finally:
        sim.terminate()
        sim.wait(10)
