"""No API key in anything the pipeline writes. The stack runs with recognisable fake keys,
one provider answers 401 (quoting the key, masked, as OpenAI does), some inputs are garbage;
then every topic, the worker's log and every ClickHouse table are searched for each key."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx

from aiokafka.admin import AIOKafkaAdminClient

from pipeline.client import GatewayClient, make_request
from pipeline.dev.demo import demo_requests
from pipeline.kafka.clients import read_to_end
from tests.integration.conftest import make_stack

DUMP_CLICKHOUSE = """
import sys
from pipeline.analytics.clickhouse import connect
client = connect(sys.argv[1])
for (table,) in client.query("SHOW TABLES").result_rows:
    # Rollup quantile states cannot be read back as values: finalize them.
    columns = [f"finalizeAggregation(`{name}`)" if kind.startswith("AggregateFunction")
               else f"`{name}`" for name, kind in client.query(
                   "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
                   "AND table = {t:String} ORDER BY position", parameters={"t": table}).result_rows]
    for row in client.query(f"SELECT {', '.join(columns)} FROM `{table}`").result_rows:
        print(table, *row, sep="\\t")
"""


async def everything_on_the_broker(bootstrap: str, prefixes: tuple[str, ...]) -> tuple[bytes, int]:
    """Every record of this stack's topics (its prefix) and Faust's (its app id)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t["topic"] for t in await admin.describe_topics()
                  if t["topic"].startswith(prefixes)]
    finally:
        await admin.close()
    blob, records = bytearray(), 0
    for topic in topics:
        for rec in await read_to_end(bootstrap, topic):
            records += 1
            blob += (rec.key or b"") + b"\n" + (rec.value or b"") + b"\n"
            for _, header in rec.headers or ():
                blob += header
    return bytes(blob), records


def test_no_api_key_in_events_logs_or_clickhouse(broker, tmp_path_factory):
    stack = make_stack(broker, tmp_path_factory, "secrets",
                       ["--latency-scale", "0.05", "--no-base-errors", "--seed", "3"])
    try:
        worker = stack.start_worker()
        keys = dict(stack.provider_keys)
        httpx.put(f"{stack.simulator_url}/_sim/faults",
                  json={"gpt-4o-mini": {"kind": "unauthorized"}}, timeout=10).raise_for_status()

        async def traffic():
            async with GatewayClient(stack.bootstrap, stack.topics) as gw:
                reqs = demo_requests(40, seed=3) + [
                    make_request("acme", f"say hi {i}", model="gpt-4o-mini", max_tokens=16)
                    for i in range(10)]
                responses = await asyncio.gather(*(gw.request(r, timeout=60) for r in reqs))
                await gw._producer.send_and_wait(stack.topics.requests, b"\x00garbage", key=b"x")
                return reqs, responses

        reqs, responses = asyncio.run(traffic())
        refused = [r for r in responses if r.error and r.error.code == "auth_error"]
        tried_mini = [r for r in responses if "openai-gpt-4o-mini" in r.tried]
        assert tried_mini, "the 401 deployment was never called"
        worker.wait_for_usage([r.request_id for r in reqs])
        topics_blob, records = asyncio.run(everything_on_the_broker(
            stack.bootstrap, (stack.topics.prefix, stack.app_id)))
        stack.stop_worker(worker)                      # releases the chDB path
        log = worker.log_path.read_bytes()
        dump = subprocess.run([sys.executable, "-c", DUMP_CLICKHOUSE, stack.clickhouse_dsn],
                              capture_output=True, timeout=120)
        assert dump.returncode == 0, dump.stderr.decode(errors="replace")[-2000:]
        dump = dump.stdout
        assert records > 100 and b"usage" in dump and len(log) > 1000

        for var, key in keys.items():
            secret_part = key.split("-")[-1].encode()          # the random part of sk-dev-<hex>
            for name, blob in (("topics", topics_blob), ("worker log", log), ("clickhouse", dump)):
                assert key.encode() not in blob, f"{var} found in {name}"
                assert secret_part not in blob, f"{var}'s secret part found in {name}"
                assert secret_part[-12:] not in blob, f"a tail of {var} found in {name}"
        for r in responses:
            text = json.dumps(r.to_dict(), default=str)
            assert not any(k in text for k in keys.values())
        print(f"\nsearched {records} records, {len(log)} log bytes, {len(dump)} ClickHouse bytes; "
              f"{len(tried_mini)} requests met the 401 deployment, {len(refused)} ended in auth_error")
    finally:
        stack.stop()
