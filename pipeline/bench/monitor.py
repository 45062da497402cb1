"""How fast the cost monitor evaluates: Usage events per second through
``Monitor.observe_usage`` with the packaged rules, state in dicts (the worker's Faust
tables add their changelog writes on top). ``llmpipe bench monitor``."""

from __future__ import annotations

import argparse
import time

from pipeline.events.models import Usage
from pipeline.monitor.evaluate import Monitor
from pipeline.monitor.rules import load_rules

T0 = 1_763_856_000_000


def run(events: int, tenants: int, rate_per_s: int) -> str:
    rules = load_rules().for_source("usage")
    monitor = Monitor(rules, {}, {})
    step_ms = max(1, 1000 // rate_per_s)
    usages = [Usage(request_id=f"r{i}", tenant=f"t{i % tenants}", team=f"team{i % 7}",
                    created_at_ms=T0 + i * step_ms - 300, completed_at_ms=T0 + i * step_ms,
                    status="ok" if i % 50 else "error", error_code="" if i % 50 else "rate_limited",
                    deployment=f"d{i % 9}", served_model="gpt-4.1", cost_nanos=123_456,
                    pipeline_ms=300)
              for i in range(events)]
    alerts = 0
    started = time.perf_counter()
    for i, usage in enumerate(usages):
        decision = monitor.observe_usage(usage, i % 6, i)
        alerts += len(decision.alerts)
        monitor.apply(decision.writes)
    elapsed = time.perf_counter() - started
    return (f"{events} usage events, {len(rules)} usage rules, {tenants} tenants: "
            f"{events / elapsed:,.0f} events/s ({elapsed * 1e6 / events:.0f} us/event), "
            f"{len(monitor.buckets)} window rows, {alerts} alerts")


HELP = "the cost monitor's rule evaluation: events/s and microseconds per event"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--tenants", type=int, default=50)
    p.add_argument("--rate", type=int, default=500, help="event-time rate (events/s)")


def main(args: argparse.Namespace) -> int:
    print(run(args.events, args.tenants, args.rate))
    return 0
