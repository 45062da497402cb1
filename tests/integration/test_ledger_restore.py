"""The ledger restore procedure of docs/OPERATIONS.md, run as written: `llmpipe migrate`
against an empty ClickHouse, then a ledger worker in a consumer group of its own reads
llm.usage from the beginning. Every request's usage row comes back once, with the same
money and tokens as the original ledger's."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from pipeline.client import GatewayClient
from pipeline.dev.demo import demo_requests
from tests.integration.conftest import answers, worker_stack

pytestmark = pytest.mark.integration

COMPARED = ("tenant", "served_model", "deployment", "status", "prompt_tokens",
            "completion_tokens", "cost_usd", "baseline_cost_usd", "price_version")


async def serve(stack, requests) -> None:
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        for r in requests:
            gw.expect(r)
            await gw.send(r)
        await answers(gw, stack, requests, timeout=60)


def test_the_ledger_is_rebuilt_from_the_usage_topic(broker, tmp_path_factory):
    with worker_stack(broker, tmp_path_factory, "restore", seed=23) as stack:
        requests = demo_requests(30, seed=23)
        asyncio.run(serve(stack, requests))
        ids = [r.request_id for r in requests]
        original = stack.workers[0]
        assert set(original.wait_for_usage(ids).values()) == {1}
        before = {row["request_id"]: row for row in original.usage_rows(ids)}

        dsn = f"chdb://{tmp_path_factory.mktemp('restored') / 'clickhouse'}"
        migrate = subprocess.run([sys.executable, "-m", "pipeline.cli", "migrate"],
                                 env={**os.environ, "LLMPIPE_CLICKHOUSE_DSN": dsn},
                                 capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0 and "applied" in migrate.stdout, migrate.stderr
        restore = stack.start_worker("ledger-restore", agents=("ledger",),
                                     app_id=f"{stack.app_id}-ledger-restore", clickhouse_dsn=dsn)
        counts = restore.wait_for_usage(ids, timeout=90)
        assert counts == {i: 1 for i in ids}, counts
        after = {row["request_id"]: row for row in restore.usage_rows(ids)}
        assert all(set(COMPARED) <= row.keys() for row in before.values())
        assert sum(float(row["cost_usd"]) for row in before.values()) > 0
        for rid, row in before.items():
            assert {k: after[rid].get(k) for k in COMPARED} == {k: row.get(k) for k in COMPARED}
        print(f"{len(after)} usage rows restored from the topic, equal to the original ledger's")
