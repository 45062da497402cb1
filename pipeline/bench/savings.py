"""`llmpipe bench savings`: replay a documented traffic mix through the pipeline and compare what
routing cost with sending everything to the baseline model (gpt-4.1).

The mix (a support/assistant workload, no routing hints, so the figure is what
classification and routing alone save): prompts drawn from the labelled set of
`tests/unit/data/classifier_eval.jsonl` (English and Chinese) by true class —
50% simple (max_tokens 256), 30% medium (512), 20% complex (1024) — over 4 tenants.
The baseline cost of each request is its own provider-reported tokens priced at the
baseline model, so both sides bill the same tokens. A complex request (by its label)
served below the complex quality floor is counted and listed: routing must never buy
savings with quality the caller needs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from pipeline.catalog import Catalog, load_catalog
from pipeline.client import GatewayClient, make_request
from pipeline.dev.stack import DevStack, Worker
from pipeline.events.models import Request
from pipeline.routing.examples import DEFAULT_DATA, load_examples
from pipeline.routing.policy import load_routing

MIX = {"simple": (0.5, 256), "medium": (0.3, 512), "complex": (0.2, 1024)}
TENANTS = ("shop-support", "shop-search", "bank-assist", "cn-kefu")


def mix_requests(n: int, seed: int = 11, reply_topic: str | None = None,
                 data: Path = DEFAULT_DATA) -> list[tuple[Request, str]]:
    """``n`` requests and their true class, in the proportions of :data:`MIX`."""
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = {}
    for ex in load_examples(data):
        by_class.setdefault(ex.label, []).append(ex.prompt)
    classes = list(MIX)
    weights = [MIX[c][0] for c in classes]
    out = []
    for i in range(n):
        label = rng.choices(classes, weights=weights)[0]
        tenant = TENANTS[i % len(TENANTS)]
        req = make_request(tenant, rng.choice(by_class[label]), max_tokens=MIX[label][1],
                           end_user=f"user-{rng.randint(1, 50)}", reply_topic=reply_topic,
                           metadata={"mix": label})
        out.append((req, label))
    return out


@dataclass
class SavingsReport:
    requests: int
    ok: int
    cost: Decimal
    baseline: Decimal
    baseline_model: str
    models: Counter = field(default_factory=Counter)
    below_floor: list[str] = field(default_factory=list)     # complex requests under the floor

    @property
    def saved_pct(self) -> Decimal:
        if not self.baseline:
            return Decimal(0)
        return ((self.baseline - self.cost) / self.baseline * 100).quantize(Decimal("0.1"))

    def text(self) -> str:
        mix = ", ".join(f"{m} {c}" for m, c in self.models.most_common())
        return "\n".join([
            f"traffic mix: {self.requests} requests ({self.ok} ok); served by: {mix}",
            f"cost routed:            ${self.cost:.6f}",
            f"cost all on {self.baseline_model}: ${self.baseline:.6f}",
            f"saved: {self.saved_pct}% (cost is {(self.cost / self.baseline if self.baseline else 0):.3f}x "
            f"the baseline)",
            f"complex requests below their quality floor: {len(self.below_floor)}",
        ])


def summarise(rows: list[dict], labels: dict[str, str], catalog: Catalog, floor: float
              ) -> SavingsReport:
    report = SavingsReport(len(rows), 0, Decimal(0), Decimal(0), catalog.baseline_model)
    for row in rows:
        if row["status"] != "ok":
            continue
        report.ok += 1
        report.cost += Decimal(row["cost_usd"])
        report.baseline += Decimal(row["baseline_cost_usd"])
        report.models[row["served_model"]] += 1
        if labels.get(row["request_id"]) == "complex" and \
                catalog.models[row["served_model"]].quality < floor:
            report.below_floor.append(f"{row['request_id']} -> {row['served_model']}")
    return report


async def replay(stack: DevStack, worker: Worker, n: int, concurrency: int = 32,
                 seed: int = 11) -> SavingsReport:
    catalog = load_catalog()
    floor = load_routing(catalog).quality_floors.get("complex", 0.0)
    pairs = mix_requests(n, seed)
    labels = {r.request_id: label for r, label in pairs}
    slots = asyncio.Semaphore(concurrency)
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        async def one(r: Request) -> None:
            async with slots:
                await gw.request(r, timeout=120)
        await asyncio.gather(*(one(r) for r, _ in pairs))
    ids = list(labels)
    await asyncio.to_thread(worker.wait_for_usage, ids, 60.0)
    rows = await asyncio.to_thread(worker.usage_rows, ids)
    return summarise(rows, labels, catalog, floor)


HELP = ("replay the documented traffic mix and compare its cost with sending everything "
        "to the baseline model")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--data-dir", default=".data/savings")


def main(args: argparse.Namespace) -> int:
    stack = DevStack(Path(args.data_dir), simulator_args=["--latency-scale", "0.05", "--seed", "11"])
    with stack.start():
        worker = stack.start_worker()
        report = asyncio.run(replay(stack, worker, args.requests, args.concurrency))
    print(report.text())
    for line in report.below_floor:
        print(f"  below floor: {line}")
    return 0 if not report.below_floor else 1
