"""The production layout on the embedded stack (DevStack.start_split, as `llmpipe bench
latency` runs it): a front worker (intake, dispatch) and a ledger worker (ledger, monitor)
in its own consumer group, its fetches waiting for 64 KiB or 250 ms (LEDGER_FETCH)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pipeline.client import GatewayClient, make_request
from pipeline.dev.stack import LEDGER_FETCH
from pipeline.events.models import RoutingHints

from tests.integration.conftest import make_stack


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_a_split_ledger_fetching_in_large_batches_bills_every_request_once(broker, tmp_path_factory):
    stack = make_stack(broker, tmp_path_factory, "split",
                       ["--latency-scale", "0.05", "--no-base-errors", "--seed", "23"])
    try:
        front, ledger = stack.start_split()
        env = environ_of(ledger.process.pid)
        assert int(env["LLMPIPE_FETCH_MIN_BYTES"]) == LEDGER_FETCH["fetch_min_bytes"] > 1
        assert int(env["LLMPIPE_FETCH_MAX_WAIT_MS"]) == LEDGER_FETCH["fetch_max_wait_ms"]
        assert environ_of(front.process.pid)["LLMPIPE_FETCH_MIN_BYTES"] == "1"   # request path

        requests = [make_request(tenant, f"Say hello number {i}.", max_tokens=32,
                                 hints=RoutingHints(priority=("interactive", "standard")[i % 2]))
                    for i, tenant in enumerate(["acme", "globex", "initech"] * 20)]

        async def send():
            async with GatewayClient(stack.bootstrap, stack.topics) as gw:
                return await asyncio.gather(*(gw.request(r, timeout=60) for r in requests))
        responses = asyncio.run(send())
        assert all(r is not None and r.status == "ok" for r in responses), \
            [r for r in responses if r is None or r.status != "ok"][:3]

        ids = [r.request_id for r in requests]
        assert ledger.wait_for_usage(ids) == {rid: 1 for rid in ids}
        assert ledger.usage_totals(ids)["raw"]["rows"] == len(ids)     # no row stored twice
    finally:
        stack.stop()
