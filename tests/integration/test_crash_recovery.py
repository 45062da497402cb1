"""A worker killed with SIGKILL mid-traffic and started again: every request still ends
with a terminal response and exactly one usage row. There are no Kafka transactions on
the embedded broker; this rests on acking only finished work and idempotent consumers."""

from __future__ import annotations

import asyncio
import time

from pipeline.client import GatewayClient
from pipeline.demo import demo_requests
from tests.integration.conftest import make_stack

N = 150


async def test_sigkill_mid_demo_loses_nothing_and_bills_once(broker, tmp_path_factory):
    # Provider latency long enough that many calls are in flight when the worker dies.
    stack = make_stack(broker, tmp_path_factory, "crash",
                       ["--latency-scale", "1.0", "--no-base-errors", "--seed", "5"])
    try:
        first = stack.start_worker("worker-1")
        requests = demo_requests(N, seed=99)
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            futures = {r.request_id: gw.expect(r.request_id) for r in requests}
            for r in requests:
                await gw.send(r)
            # Wait until the pipeline is mid-way: some answered, many not.
            deadline = time.monotonic() + 60
            while sum(f.done() for f in futures.values()) < N // 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            answered_before = sum(f.done() for f in futures.values())
            assert 0 < answered_before < N, answered_before
            stack.kill_worker(first)
            second = stack.start_worker("worker-2")
            results = {rid: await gw.wait(rid, fut, 120) for rid, fut in futures.items()}
            duplicates = gw.duplicates_dropped

        assert len(results) == N
        assert all(r.status in ("ok", "error") for r in results.values())
        ids = list(results)
        counts = second.wait_for_usage(ids, timeout=90)
        assert counts == {rid: 1 for rid in ids}, {k: v for k, v in counts.items() if v != 1}
        assert second.usage_counts(ids) == counts
        print(f"answered before kill: {answered_before}/{N}; repeated responses dropped "
              f"by the SDK: {duplicates}")
    finally:
        stack.stop()
