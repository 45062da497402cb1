"""`llmpipe bench ingest`: how fast the ledger stores usage rows, per insert batch size.

Two measurements, each on a fresh chDB path with every migration applied (so the rollup
materialised views, if any, are part of the cost):

- **writer**: :class:`~pipeline.analytics.writer.LedgerWriter` alone, in this process, fed
  from one partition so an INSERT carries exactly ``batch`` rows — row conversion, batching
  by offsets, idempotent inserts (token per batch). Rows/s from the first ``add`` to the
  last flush, then checked: ``usage FINAL`` holds exactly the rows sent, with their exact
  total cost. Each run sends ``min(--rows, batch * --max-inserts)`` rows.
- **kafka** (``--kafka``): the same usage events published to ``llm.usage`` on an embedded
  broker first, then a worker running only the ledger agents started with
  ``LLMPIPE_LEDGER_FLUSH_ROWS`` = the batch size (and ``LLMPIPE_LEDGER_FLUSH_S`` =
  ``--kafka-flush-s``); rows/s from the worker being ready
  (partitions assigned) until its usage sink reports every row inserted. This is Kafka
  fetch + Faust + Avro decode + the writer, end to end. The writer batches per source
  partition, so with P busy partitions an INSERT holds about ``batch / P`` rows: the
  table shows the rows per INSERT actually seen.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx

from pipeline.analytics.clickhouse import connect
from pipeline.analytics.writer import LedgerWriter
from pipeline.analytics.migrate import apply_migrations
from pipeline.catalog import nanos_to_usd
from pipeline.events.models import Usage

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MODELS = (("gpt-4.1", "openai", "openai-gpt-4.1"), ("gpt-4.1-mini", "openai", "openai-gpt-4.1-mini"),
          ("claude-sonnet-4", "anthropic", "anthropic-claude-sonnet-4"),
          ("deepseek-chat", "deepseek", "deepseek-chat"))


def synthetic_usage(i: int, run: str) -> Usage:
    """A realistic, deterministic usage event; request id: a UUID from ``run`` (hex) and ``i``."""
    model, provider, deployment = MODELS[i % len(MODELS)]
    created = T0_MS + i * 7
    prompt, completion = 200 + i % 900, 50 + i % 400
    return Usage(request_id=str(uuid.UUID(int=(int(run, 16) << 64) | i)), tenant=f"tenant-{i % 20}", team=f"team-{i % 5}",
                 end_user=f"user-{i % 1000}", created_at_ms=created, routed_at_ms=created + 3,
                 first_token_at_ms=created + 180, completed_at_ms=created + 400,
                 status="ok" if i % 50 else "error", error_code="" if i % 50 else "rate_limited",
                 requested_model=model, routed_model=model, served_model=model,
                 provider=provider, deployment=deployment, region="eu", route_rule="default",
                 task_class="chat", attempts=1, batch_size=1, cache="miss",
                 prompt_tokens=prompt, completion_tokens=completion,
                 cost_nanos=prompt * 2_000 + completion * 8_000,
                 baseline_cost_nanos=prompt * 2_000 + completion * 8_000 + 1_000,
                 price_version="bench", queue_ms=2, pipeline_ms=5, provider_ms=390)


@dataclass
class Result:
    mode: str
    batch: int
    rows: int
    seconds: float
    inserts: int

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def _check_stored(client, usages: list[Usage]) -> None:
    rows, distinct, cost = client.query(
        "SELECT count(), uniqExact(request_id), sum(cost_usd) FROM usage FINAL").result_rows[0]
    expected = sum((nanos_to_usd(u.cost_nanos) for u in usages), Decimal(0))
    if (rows, distinct, Decimal(cost)) != (len(usages), len(usages), expected):
        raise SystemExit(f"ledger mismatch: {rows} rows, {distinct} ids, cost {cost}; "
                         f"expected {len(usages)} rows, cost {expected}")


async def _drive_writer(writer: LedgerWriter, usages: list[Usage]) -> None:
    for offset, u in enumerate(usages):
        writer.add(u, 0, offset)
        if writer.due():
            await writer.flush(ripe_only=True)
    while writer.pending:
        await writer.flush()


def bench_writer(path: Path, batch: int, usages: list[Usage]) -> Result:
    """LedgerWriter into chDB at ``path`` (fresh); returns rows/s. Runs in a subprocess-free
    way only once per chDB path per process: callers use a fresh path per call and close."""
    client = connect(f"chdb://{path}")
    try:
        apply_migrations(client)
        writer = LedgerWriter(client, max_rows=batch, max_age_s=3600.0,
                              max_buffer=max(batch * 10, batch), token_prefix=f"bench:{batch}")
        started = time.perf_counter()
        asyncio.run(_drive_writer(writer, usages))
        elapsed = time.perf_counter() - started
        _check_stored(client, usages)
    finally:
        client.close()
    return Result("writer", batch, len(usages), elapsed, writer.inserts)


async def _publish(bootstrap: str, topic: str, usages: list[Usage]) -> None:
    from pipeline.events.codec import Codec
    from pipeline.kafka import clients
    codec = Codec()
    producer = clients.producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        for u in usages:
            await producer.send(topic, codec.encode(u, topic), key=u.tenant.encode())
        await producer.flush()
    finally:
        await producer.stop()


def bench_kafka(data_dir: Path, broker, batch: int, usages: list[Usage], timeout: float,
                flush_s: float = 0.5) -> Result:
    from pipeline.dev.stack import DevStack, StackError

    uid = uuid.uuid4().hex[:6]
    stack = DevStack(data_dir, topic_prefix=f"ingest{batch}{uid}.", app_id=f"llmpipe-ingest-{uid}",
                     simulator_args=["--no-base-errors"])
    stack.start(broker=broker)
    try:
        asyncio.run(_publish(stack.bootstrap, stack.topics.usage, usages))
        worker = stack.start_worker("ledger", agents=("ledger",), ledger_flush_rows=batch,
                                    ledger_flush_s=flush_s)
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        inserted, state = 0, {}
        while inserted < len(usages):
            if time.monotonic() > deadline or not worker.alive():
                raise StackError(f"ledger inserted {inserted}/{len(usages)} rows in {timeout}s:\n"
                                 f"{worker.log_tail()}")
            time.sleep(0.05)
            resp = httpx.get(f"{worker.url}/llmpipe/ledger/sinks/", timeout=30)
            state = resp.json()["usage"]
            inserted = state["inserted"]
        elapsed = time.perf_counter() - started
        stack.stop_worker(worker)
        with connect(stack.clickhouse_dsn) as client:  # the worker has let go of the path
            _check_stored(client, usages)
    finally:
        stack.stop()
    return Result("kafka", batch, len(usages), elapsed, state["inserts"])


HELP = ("ledger ingest rows/s: the batched writer into chDB (and, with --kafka, llm.usage -> "
        "ledger worker -> chDB) per insert batch size")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=200_000, help="most usage rows per writer run")
    p.add_argument("--max-inserts", type=int, default=100,
                   help="a writer run sends at most batch * this many rows")
    p.add_argument("--batch-sizes", default="100,1000,10000", help="comma-separated")
    p.add_argument("--kafka", action="store_true", help="also measure through Kafka")
    p.add_argument("--kafka-batch-sizes", default="500,5000",
                   help="LLMPIPE_LEDGER_FLUSH_ROWS per Kafka run (500 is the default)")
    p.add_argument("--kafka-rows", type=int, default=10_000, help="usage rows per Kafka run")
    p.add_argument("--kafka-flush-s", type=float, default=0.5,
                   help="LLMPIPE_LEDGER_FLUSH_S for the Kafka runs (0.5 is the default)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per Kafka run")
    p.add_argument("--data-dir", default=".data/bench-ingest")


def main(args: argparse.Namespace) -> int:
    batches = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    root = Path(args.data_dir).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    run = uuid.uuid4().hex[:8]
    usages = [synthetic_usage(i, run) for i in range(max(args.rows, args.kafka_rows))]
    results: list[Result] = []

    def show(r: Result) -> None:
        results.append(r)
        print(f"{r.mode:<6} batch {r.batch:>6}: {r.rate:>10,.0f} rows/s ({r.rows} rows in "
              f"{r.seconds:.2f}s, {r.rows / max(r.inserts, 1):,.0f} rows/insert)", flush=True)

    for batch in batches:
        # chDB: one engine path per process at a time; each run closes its path first.
        show(bench_writer(root / f"writer-{batch}", batch,
                          usages[: min(args.rows, batch * args.max_inserts)]))
    if args.kafka:
        from pipeline.embedded import EmbeddedBroker

        with EmbeddedBroker(log_path=root / "broker.log") as broker:
            for batch in [int(b) for b in str(args.kafka_batch_sizes).split(",") if b.strip()]:
                show(bench_kafka(root / f"kafka-{batch}", broker, batch,
                                 usages[: args.kafka_rows], timeout=args.timeout,
                                 flush_s=args.kafka_flush_s))
    print()
    print("| path | flush rows | rows | seconds | rows/insert | rows/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.mode} | {r.batch} | {r.rows} | {r.seconds:.2f} | "
              f"{r.rows / max(r.inserts, 1):,.0f} | {r.rate:,.0f} |")
    return 0
