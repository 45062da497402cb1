"""What the tenancy table's housekeeping costs once it holds a whole idempotency window of
admissions (an hour at a few hundred requests a second: ~10^6 rows), state in a dict (the
worker's Faust table is slower to walk). The floor is one full read of the rows, which is
what a sweep and each budget-gauge scrape cost before they were indexed. ``llmpipe bench
sweeps``."""

from __future__ import annotations

import argparse
import time
import uuid

from pipeline.events.models import TenantPolicy, Usage
from pipeline.tenancy.admissions import SETTLED, Admission
from pipeline.tenancy.state import TenancyConfig, TenantState

NOW = 1_765_000_000_000
PARTITIONS = 6


def _ms(fun) -> tuple[float, object]:
    started = time.process_time()
    result = fun()
    return (time.process_time() - started) * 1000, result


def run(admissions: int, window_s: int) -> list[str]:
    rows: dict[str, dict] = {}
    state = TenantState(rows, TenancyConfig(idempotency_window_s=window_s,
                                            reservation_timeout_s=window_s))
    window_ms = window_s * 1000
    for i in range(admissions):      # evenly over the window, as a steady rate leaves them
        first_seen = NOW - window_ms + 100_000 + i * (window_ms - 100_000) // admissions
        state.admissions.put("acme", str(uuid.uuid4()),
                             Admission(i % PARTITIONS, i, first_seen, SETTLED, 0, []))
    state.settle(Usage(request_id="r", tenant="acme", created_at_ms=NOW, completed_at_ms=NOW,
                       status="ok", cost_nanos=1), 0, NOW, TenantPolicy("acme"))

    def unindexed_sweep() -> int:      # what a sweep read before the index
        return sum(1 for _, raw in list(state.admissions.rows.items())
                   if raw.get("partition") == 0 and Admission(**raw))

    def unindexed_gauges() -> int:     # what the budget gauges read before
        return sum(1 for _, raw in list(state.spend.rows.items()) if raw)

    floor_sweep, _ = _ms(unindexed_sweep)
    floor_gauges, _ = _ms(unindexed_gauges)
    state.forget_partitions()          # as after an assignment
    first, _ = _ms(lambda: state.sweep(0, NOW))
    again, _ = _ms(lambda: state.sweep(0, NOW + 30_000))
    due, swept = _ms(lambda: state.sweep(0, NOW + 200_000))
    state.forget_partitions()
    gauges_first, _ = _ms(lambda: sum(1 for _ in state.spend.periods()))
    gauges, periods = _ms(lambda: sum(1 for _ in state.spend.periods()))
    rate = admissions / window_s
    return [
        f"{admissions:,} admissions over a {window_s} s window ({rate:,.0f} requests/s), "
        f"{PARTITIONS} partitions; CPU ms",
        f"floor (reading every row, as before the indexes): a sweep of one partition "
        f"{floor_sweep:.0f} ms, every 30 s per partition = "
        f"{PARTITIONS * floor_sweep / 30_000 * 100:.1f}% of a core; a budget-gauge scrape "
        f"{floor_gauges:.0f} ms",
        f"sweep of one partition: the first after an assignment {first:.0f} ms (reads it "
        f"once, indexes it), 30 s later {again:.2f} ms, 200 s later {due:.1f} ms for the "
        f"{swept:,} rows then due",
        f"budget gauges: the first scrape after an assignment {gauges_first:.0f} ms, then "
        f"{gauges:.2f} ms ({periods} periods)",
    ]


HELP = "tenancy housekeeping (sweeps, budget gauges) over a full idempotency window"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admissions", type=int, default=800_000)
    p.add_argument("--window-s", type=int, default=3600)


def main(args: argparse.Namespace) -> int:
    for line in run(args.admissions, args.window_s):
        print(line, flush=True)
    return 0
