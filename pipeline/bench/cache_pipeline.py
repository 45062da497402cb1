"""`llmpipe bench cache --pipeline`: the response cache through the real pipeline, on the
documented **support mix**, with the cost of routing and cache together against sending
everything to the baseline model (gpt-4.1).

The support mix (one e-commerce support day, interleaved from a seed):
 - ``--faq`` questions of the FAQ workload (pipeline/cache/faq.py, zh + en, repeats,
   paraphrases and new questions) from one shop's support bot, tenant ``shop-support``,
   max_tokens 256, no model named (routing picks);
 - ``--requests`` requests of the savings mix (pipeline/bench/savings.py: assistant tasks
   from four tenants, simple/medium/complex).
Every tenant has the cache on, exact and semantic, at its default threshold (0.95).

Requests go in sequence order with ``--concurrency`` in flight through the embedded stack
(Kafka, intake with the cache step, routing, batcher, dispatch, the simulator at 0.05x its
profile latency, the ledger in ClickHouse). Everything printed is read back from the usage
rows in ClickHouse, except the latency, which the client measures:

- hit rate by kind on the FAQ part beside the offline replay of the same questions (the
  exact dict + semantic index alone, `llmpipe bench cache`): the pipeline misses a repeat
  whose first answer is still in flight or whose fill has not reached the intake worker;
- cost: all on the baseline model (each row's baseline cost: its provider tokens, or for a
  hit the stored answer's tokens, priced on gpt-4.1) · routing alone (a hit counted at what
  its call would have cost today, `cache_saved_usd`) · routing + cache (what was billed);
- client latency P50/P99 of hits and misses."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from pipeline.bench.savings import mix_requests
from pipeline.cache.embedder import load_embedder
from pipeline.cache.faq import workload
from pipeline.client import GatewayClient, make_request
from pipeline.dev.stack import DevStack
from pipeline.events.models import Request, TenantPolicy
from pipeline.events.codec import Codec
from pipeline.tenancy.directory import put_policy

SUPPORT_TENANT = "shop-support"
FAQ_MAX_TOKENS = 256
FLOOR_COST_CUT = Decimal(70)           # the acceptance floor, % vs all-gpt-4.1
POLICY_SETTLE_S = 3.0                  # for the intake worker to read the tenants' policies


@dataclass
class Tally:
    rows: int = 0
    ok: int = 0
    kinds: Counter = field(default_factory=Counter)       # exact | semantic | miss
    billed: Decimal = Decimal(0)
    baseline: Decimal = Decimal(0)
    routed_only: Decimal = Decimal(0)

    def add(self, row: dict) -> None:
        self.rows += 1
        if row["status"] != "ok":
            return
        self.ok += 1
        hit = row["cache"] == "hit"
        self.kinds[row["cache_kind"] if hit else "miss"] += 1
        self.billed += Decimal(row["cost_usd"])
        self.baseline += Decimal(row["baseline_cost_usd"])
        self.routed_only += Decimal(row["cache_saved_usd"] if hit else row["cost_usd"])

    def line(self, name: str) -> str:
        n = max(1, self.ok)
        return (f"{name:<14} {self.ok:>5} ok / {self.rows:<5} exact {self.kinds['exact'] / n:>6.1%}  "
                f"semantic {self.kinds['semantic'] / n:>6.1%}  hits "
                f"{(self.kinds['exact'] + self.kinds['semantic']) / n:>6.1%}")


def cut(cost: Decimal, baseline: Decimal) -> Decimal:
    return ((1 - cost / baseline) * 100).quantize(Decimal("0.1")) if baseline else Decimal(0)


def support_mix(faq: int, assistant: int, seed: int) -> list[tuple[Request, str]]:
    """The requests in sending order, each with its part ("faq" or "assistant")."""
    faq_part = [(make_request(SUPPORT_TENANT, q.text, max_tokens=FAQ_MAX_TOKENS,
                              metadata={"mix": "faq", "kind": q.kind}), "faq")
                for q in workload(faq, seed)]
    assistant_part = [(r, "assistant") for r, _ in mix_requests(assistant, seed)]
    rng = random.Random(seed)
    out, a, b = [], 0, 0
    while a < len(faq_part) or b < len(assistant_part):
        take_faq = b >= len(assistant_part) or (
            a < len(faq_part) and rng.random() < len(faq_part) / (len(faq_part) + len(assistant_part)))
        if take_faq:
            out.append(faq_part[a])
            a += 1
        else:
            out.append(assistant_part[b])
            b += 1
    return out


def offline_hit_rate(replay, faq: int, seed: int, threshold: float
                     ) -> tuple[float, float, float]:
    """(exact, semantic, ceiling) shares of the offline replay (cache.py's ``replay``) of
    the same FAQ questions."""
    r = replay(load_embedder(), workload(faq, seed), threshold)
    return r.exact / r.n, r.semantic / r.n, r.ceiling / r.n


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


async def drive(stack: DevStack, pairs: list[tuple[Request, str]], concurrency: int,
                progress) -> dict[str, float]:
    """Send in order, ``concurrency`` in flight; the client latency of each (ms)."""
    slots = asyncio.Semaphore(concurrency)
    took: dict[str, float] = {}
    done = 0
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        async def one(r: Request) -> None:
            nonlocal done
            t0 = time.perf_counter()
            await gw.request(r, timeout=120)
            took[r.request_id] = (time.perf_counter() - t0) * 1e3
            done += 1
            if done % 100 == 0:
                progress(f"  {done}/{len(pairs)} answered", end="\r")
            slots.release()

        tasks = []
        for r, _ in pairs:
            await slots.acquire()           # sequence order: the next goes when one ends
            tasks.append(asyncio.create_task(one(r)))
        await asyncio.gather(*tasks)
    return took


async def set_policies(stack: DevStack, tenants: set[str]) -> None:
    for tenant in sorted(tenants):
        await put_policy(stack.bootstrap, stack.topics.tenants, Codec(),
                         TenantPolicy(tenant, cache_kinds=["exact", "semantic"]))
    await asyncio.sleep(POLICY_SETTLE_S)


def run(args: argparse.Namespace, progress, replay) -> int:
    """``replay``: the offline replay the pipeline's FAQ hits are shown beside."""
    pairs = support_mix(args.faq, args.requests, args.seed)
    part_of = {r.request_id: part for r, part in pairs}
    print(f"support mix: {args.faq} FAQ questions (tenant {SUPPORT_TENANT}) + {args.requests} "
          f"assistant requests (savings mix), seed {args.seed}, concurrency {args.concurrency}")
    stack = DevStack(Path(args.data_dir),
                     simulator_args=["--latency-scale", "0.05", "--seed", str(args.seed)])
    with stack.start():
        worker = stack.start_worker()
        asyncio.run(set_policies(stack, {r.tenant for r, _ in pairs}))
        t0 = time.perf_counter()
        took = asyncio.run(drive(stack, pairs, args.concurrency, progress))
        wall = time.perf_counter() - t0
        ids = list(part_of)
        worker.wait_for_usage(ids, 90.0)
        rows = worker.usage_rows(ids)
    tallies = {"faq": Tally(), "assistant": Tally(), "all": Tally()}
    hit_ms, miss_ms = [], []
    for row in rows:
        tallies[part_of[row["request_id"]]].add(row)
        tallies["all"].add(row)
        if row["request_id"] in took and row["status"] == "ok":
            (hit_ms if row["cache"] == "hit" else miss_ms).append(took[row["request_id"]])
    progress("")
    print(f"{len(rows)} usage rows for {len(ids)} requests in {wall:.1f} s "
          f"({len(ids) / wall:.1f} req/s)\n")
    print("== hits, from the usage rows ==")
    for name, t in tallies.items():
        print(t.line(name))
    exact, semantic, ceiling = offline_hit_rate(replay, args.faq, args.seed, 0.95)
    print(f"{'faq offline':<14} the same questions, exact dict + index alone: exact {exact:.1%}  "
          f"semantic {semantic:.1%}  hits {exact + semantic:.1%}  (ceiling {ceiling:.1%})")

    print("\n== cost (usage rows) ==")
    print(f"{'part':<10} {'all on gpt-4.1':>15} {'routing alone':>15} {'routing+cache':>15} "
          f"{'cut: routing':>13} {'routing+cache':>14}")
    for name, t in tallies.items():
        print(f"{name:<10} ${t.baseline:>14.6f} ${t.routed_only:>14.6f} ${t.billed:>14.6f} "
              f"{cut(t.routed_only, t.baseline):>12}% {cut(t.billed, t.baseline):>13}%")
    total = cut(tallies["all"].billed, tallies["all"].baseline)
    print(f"routing + cache vs all-gpt-4.1: {total}% (floor ≥ {FLOOR_COST_CUT}%: "
          f"{'meets' if total >= FLOOR_COST_CUT else 'BELOW'})")

    print("\n== client latency (ms) ==")
    for name, samples in (("hit", hit_ms), ("miss", miss_ms)):
        if samples:
            print(f"{name:<5} n={len(samples):<5} P50 {statistics.median(samples):8.1f}  "
                  f"P99 {pct(samples, 0.99):8.1f}")
    lost = len(ids) - len({row['request_id'] for row in rows})
    if lost:
        print(f"MISSING: {lost} requests without a usage row")
    return 1 if lost else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--pipeline: the support mix through the embedded stack")
    g.add_argument("--pipeline", action="store_true",
                   help="run the support mix through the real pipeline instead of offline")
    g.add_argument("--faq", type=int, default=600, help="FAQ questions in the support mix")
    g.add_argument("--requests", type=int, default=400, help="savings-mix requests in it")
    g.add_argument("--concurrency", type=int, default=8)
    g.add_argument("--data-dir", default=".data/bench-cache")
