"""`llmpipe dev`: start the embedded stack, send demo traffic, print what happened."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from pipeline.client import GatewayClient, ResponseTimeout
from pipeline.clock import now_ms
from pipeline.dev.demo import demo_poison, demo_policies, demo_requests
from pipeline.dev.gateway import demo_calls, issue_key, start_gateway
from pipeline.dev.stack import DevStack, StackError
from pipeline.events.models import Alert, DeadLetter, Response, TenantPolicy
from pipeline.events.codec import Codec
from pipeline.tenancy.directory import put_policy
from pipeline.tenancy.policy_file import describe_policy

CODEC = Codec()
DEMO_KEY_TENANT = "demo"     # the tenant the printed gateway key belongs to


def say(text: str = "") -> None:
    print(text, flush=True)


async def publish_policies(stack: DevStack) -> None:
    for policy in demo_policies():
        await put_policy(stack.bootstrap, stack.topics.tenants, CODEC, policy)
        say(f"  tenant policy      {policy.tenant}: {describe_policy(policy)}")



def _ms(value) -> str:
    return "-" if value is None else f"{float(value):,.1f} ms"


def batching_summary(worker) -> str:
    """One line per priority from the worker's micro-batcher: batches, sizes, fill reasons
    and the wait the window added."""
    try:
        stats = worker.batcher_stats()
    except (httpx.HTTPError, ValueError) as exc:
        return f"micro-batching: stats unavailable ({exc})"
    lines = ["Micro-batching (per priority)"]
    for priority, p in sorted(stats.get("priorities", {}).items()):
        wait = p.get("added_wait_ms") or {}
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(p.get("fill_reasons", {}).items()))
        lines.append(f"  {priority:<12} {p['requests']:>5} requests in {p['batches']:>4} batches "
                     f"(mean {p['mean_batch_size']}, max {p['max_batch_size']}; {reasons}); "
                     f"added wait p50 {_ms(wait.get('p50'))}, p99 {_ms(wait.get('p99'))}")
    for priority, limits in sorted(stats.get("limits", {}).items()):
        if limits.get("max_wait_ms") == 0:
            lines.append(f"  {priority:<12} no window: intake dispatches each request itself "
                         f"(or, for another worker's deployment, sends a Batch of one)")
    return "\n".join(lines) + "\n"


def metrics_summary(worker, gateway) -> str:
    """A few live values from the worker's and the gateway's Prometheus endpoints."""
    from prometheus_client.parser import text_string_to_metric_families

    def scrape(url: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        text = httpx.get(url, timeout=10).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if (s.labels.get("period", "month") != "month"
                        or s.labels.get("team") not in (None, "*")):
                    continue                # budgets: the tenants' monthly spend only, summed
                if s.name.endswith(("_total", "_count")) or family.type == "gauge":
                    label = next((k for k in ("outcome", "state", "where") if k in s.labels),
                                 "kind" if s.name == "llmpipe_table_writes" else None)
                    key = s.name + ("{%s=%s}" % (label, s.labels[label]) if label else "")
                    totals[key] = totals.get(key, 0.0) + s.value
        return totals
    try:
        w = scrape(f"{worker.url}/metrics")
        g = scrape(f"{gateway.base_url.removesuffix('/v1')}/metrics")
    except (httpx.HTTPError, ValueError) as exc:
        return f"metrics: unavailable ({exc})"
    outcomes = ", ".join(f"{k.split('=')[1][:-1]} {v:.0f}" for k, v in sorted(w.items())
                         if k.startswith("llmpipe_requests_total{"))
    return (f"metrics (Prometheus): {worker.url}/metrics and "
            f"{gateway.base_url.removesuffix('/v1')}/metrics\n"
            f"  requests by outcome: {outcomes or '-'}; cache lookups "
            f"{w.get('llmpipe_cache_lookups_total', 0):.0f}; batches "
            f"{w.get('llmpipe_batches_total', 0):.0f}; dispatched in intake "
            f"{w.get('llmpipe_intake_dispatches_total{where=intake}', 0):.0f} (over the "
            f"llm.batches hop {w.get('llmpipe_intake_dispatches_total{where=hop}', 0):.0f}); "
            f"consumer lag "
            f"{w.get('llmpipe_consumer_lag', 0):.0f}; table writes "
            f"{w.get('llmpipe_table_writes{kind=written}', 0):.0f} sent as "
            f"{w.get('llmpipe_table_writes{kind=sent}', 0):.0f} changelog records "
            f"(coalesced); gateway HTTP requests "
            f"{g.get('llmpipe_gateway_requests_total', 0):.0f}; tenants' spend this month "
            f"${w.get('llmpipe_budget_spent_usd{state=settled}', 0):.4f} settled, "
            f"${w.get('llmpipe_budget_spent_usd{state=reserved}', 0):.4f} in flight")


def read_alerts(stack: DevStack) -> Counter:
    return Counter(f"{a.rule} ({a.tenant})" for a in stack.read_events(stack.topics.alerts, Alert))


async def drive(stack: DevStack, n: int, seed: int, timeout: float
                ) -> tuple[dict, list[str], bool]:
    """Demo traffic with hostile records among it: the demo responses, the demo request
    ids, and whether every hostile record ended in an outcome."""
    requests = demo_requests(n, seed)
    responses: dict = {}
    poison = demo_poison(stack.topics.usage)
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        for r in requests:
            gw.expect(r)
        started = time.monotonic()
        half = len(requests) // 2
        for r in requests[:half]:
            await gw.send(r)
        positions = await stack.publish_raw([(stack.topics.requests, key, value)
                                             for _, key, value, _ in poison])
        for r in requests[half:]:
            await gw.send(r)
        say(f"sent {n} demo requests from {len({r.tenant for r in requests})} tenants, and "
            f"{len(poison)} hostile records among them; waiting for responses ...")

        async def one(r):
            try:
                responses[r.request_id] = await gw.wait(r, timeout)
            except ResponseTimeout:
                pass

        await asyncio.gather(*(one(r) for r in requests))
        elapsed = time.monotonic() - started
    status = Counter(r.status for r in responses.values())
    say(f"{len(responses)}/{n} terminal responses in {elapsed:.1f}s ({dict(status)})")
    report, poison_ok = poison_outcomes(stack, poison, positions)
    say(report)
    return responses, [r.request_id for r in requests], poison_ok


def poison_outcomes(stack: DevStack, poison: list, positions: list[tuple[int, int]],
                    timeout: float = 15.0) -> tuple[str, bool]:
    """Where each hostile record ended (its dead letter, or its error response), and
    whether every one did."""
    deadline = time.monotonic() + timeout
    while True:
        letters = {(d.source_partition, d.source_offset): d
                   for d in stack.read_events(stack.topics.dead_letter, DeadLetter)
                   if d.source_topic == stack.topics.requests}
        answers = {r.request_id: r for r in stack.read_events(stack.topics.responses, Response)
                   if any(r.request_id == rid for *_, rid in poison)}
        if all(where in letters or rid in answers for (*_, rid), where in zip(poison, positions)) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lines = ["Hostile records (each ends in one outcome; its neighbours are served as usual)"]
    missing = 0
    for (what, _, _, rid), where in zip(poison, positions):
        if where in letters:
            outcome = f"dead letter ({letters[where].reason_code})"
        elif rid in answers and answers[rid].error:
            e = answers[rid].error
            outcome = f"{e.code}: {e.message[:90]}"
        else:
            outcome = f"MISSING: no outcome within {timeout:g}s"
            missing += 1
        lines.append(f"  {what:<36} -> {outcome}")
    return "\n".join(lines) + "\n", missing == 0


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
        say(f"  worker             pid {worker.process.pid}, agents {'+'.join(worker.health()['agents'])}, "
            f"web {worker.url}, log {worker.log_path}")
        asyncio.run(publish_policies(stack))
        key = issue_key(stack, DEMO_KEY_TENANT, TenantPolicy(DEMO_KEY_TENANT,
                                                             cache_kinds=["exact"]))
        gateway = start_gateway(stack, "dev")
        say(f"  gateway (OpenAI)   {gateway.base_url} (pid {gateway.process.pid}), demo key for "
            f"tenant {DEMO_KEY_TENANT}: {key}")
        since_ms = now_ms() - 60_000
        responses, ids, poison_ok = asyncio.run(drive(stack, args.demo_requests, args.seed,
                                                      args.timeout))
        say("Through the HTTP gateway (as the OpenAI SDK calls it)")
        lines, gateway_ids = demo_calls(gateway, key)
        say("\n".join(lines) + "\n")
        ids += gateway_ids
        responses.update(dict.fromkeys(gateway_ids))      # answered over HTTP
        counts = worker.wait_for_usage(ids, timeout=60)
        say()
        say(worker.report(since_ms))
        say(batching_summary(worker))
        say(metrics_summary(worker, gateway))
        alerts = read_alerts(stack)
        say("alerts on llm.alerts: " + (", ".join(f"{k} x{v}" for k, v in sorted(alerts.items()))
                                       or "none"))
        missing_resp = [rid for rid in ids if rid not in responses]
        bad_rows = {rid: counts.get(rid, 0) for rid in ids if counts.get(rid, 0) != 1}
        say(f"accounted for: {len(ids) - len(missing_resp)}/{len(ids)} responses, "
            f"{sum(1 for rid in ids if counts.get(rid, 0) == 1)}/{len(ids)} with exactly one usage row")
        ok = not missing_resp and not bad_rows and poison_ok
        if not ok:
            say(f"MISSING: {len(missing_resp)} without response, {len(bad_rows)} without exactly one usage row")
        if args.exit:
            return 0 if ok else 1
        say(f"\nrunning; the OpenAI SDK works against it as is:\n"
            f"  OpenAI(base_url=\"{gateway.base_url}\", api_key=\"{key}\")\n"
            f"or send requests over Kafka with `llmpipe send --bootstrap {stack.bootstrap} "
            "'your prompt'` — Ctrl-C stops everything")
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
