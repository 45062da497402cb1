"""`llmpipe dev`: start the embedded stack, send demo traffic, print what happened."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from pipeline.client import GatewayClient, ResponseTimeout
from pipeline.demo import demo_requests
from pipeline.devstack import DevStack, StackError


def say(text: str = "") -> None:
    print(text, flush=True)


async def drive(stack: DevStack, n: int, seed: int, timeout: float) -> tuple[dict, list[str]]:
    requests = demo_requests(n, seed)
    responses: dict = {}
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        futures = {r.request_id: gw.expect(r.request_id) for r in requests}
        started = time.monotonic()
        for r in requests:
            await gw.send(r)
        say(f"sent {n} demo requests from {len({r.tenant for r in requests})} tenants; waiting for responses ...")

        async def one(rid: str):
            try:
                responses[rid] = await gw.wait(rid, futures[rid], timeout)
            except ResponseTimeout:
                pass

        await asyncio.gather(*(one(rid) for rid in futures))
        elapsed = time.monotonic() - started
    status = Counter(r.status for r in responses.values())
    say(f"{len(responses)}/{n} terminal responses in {elapsed:.1f}s ({dict(status)})")
    return responses, [r.request_id for r in requests]


def run_dev(args: argparse.Namespace) -> int:
    stack = DevStack(Path(args.data_dir), kafka_port=args.kafka_port,
                     simulator_args=["--seed", str(args.seed), "--latency-scale", str(args.latency_scale)])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with SIGINT ignored
    try:
        say("starting the embedded stack ...")
        stack.start()
        say(f"  kafka (tansu)      {stack.bootstrap} (pid {stack.broker.pid})")
        say(f"  provider simulator {stack.simulator_url} (pid {stack.simulator.pid})")
        say(f"  clickhouse (chdb)  {stack.clickhouse_dsn}")
        worker = stack.start_worker()
        say(f"  worker             pid {worker.process.pid}, agents intake+dispatch+ledger, "
            f"web {worker.url}, log {worker.log_path}")
        since_ms = int(time.time() * 1000) - 60_000
        responses, ids = asyncio.run(drive(stack, args.demo_requests, args.seed, args.timeout))
        counts = worker.wait_for_usage(ids, timeout=60)
        say()
        say(worker.report(since_ms))
        missing_resp = [rid for rid in ids if rid not in responses]
        bad_rows = {rid: counts.get(rid, 0) for rid in ids if counts.get(rid, 0) != 1}
        say(f"accounted for: {len(ids) - len(missing_resp)}/{len(ids)} responses, "
            f"{sum(1 for rid in ids if counts.get(rid, 0) == 1)}/{len(ids)} with exactly one usage row")
        ok = not missing_resp and not bad_rows
        if not ok:
            say(f"MISSING: {len(missing_resp)} without response, {len(bad_rows)} without exactly one usage row")
        if args.exit:
            return 0 if ok else 1
        say("\nrunning; send requests with `llmpipe send --bootstrap "
            f"{stack.bootstrap} 'your prompt'` — Ctrl-C stops everything")
        while all(w.alive() for w in stack.workers):
            time.sleep(1)
        say("a worker exited; stopping")
        return 1
    except KeyboardInterrupt:
        say("\nstopping ...")
        return 0
    except StackError as exc:
        say(f"error: {exc}")
        return 2
    finally:
        stack.stop()
