"""`llmpipe bench batching`: calls per request and cost per request with and without
micro-batching, for a documented traffic mix, at several arrival rates.

Offline and deterministic: the requests are routed by the real router (catalog,
deployments, routing policy) and fed to the real windows (`pipeline/batching/window.py`,
limits from `batching.yaml`) on a virtual clock, with a timer that fires exactly when a
window comes of age — so the figures are what the window logic does, not what a loaded
machine's event loop adds (the integration test `tests/integration/test_batcher.py`
measures that on the embedded stack).

Traffic mix: the demo traffic (`pipeline/dev/demo.py`: four tenants, English and Chinese,
simple and complex prompts, routing hints) with priorities re-drawn as 20% interactive,
60% standard, 20% batch; Poisson arrivals at each rate.

What "calls" means: without batching, one provider call per request. With micro-batching,
"batched calls" counts one call per Batch — what a provider charges calls for when its API
takes several inputs per call (DOMAIN §5: 1,000 calls -> 125 at batches of 8). Chat
completion APIs take one conversation per call, so on the live path today dispatch still
makes one HTTP call per request (concurrently, within the deployment's guards) and the
live cost per request is unchanged: it is priced per token, not per call. The cost column
is each request's reservation estimate (estimated prompt + full max_tokens at list price).
The provider Batch API discount on batch-priority traffic is `pipeline/batchapi/`'s column.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from dataclasses import dataclass, field, replace

from pipeline.batching.config import BatchingConfig, load_batching
from pipeline.batching.window import Flush, WindowKey, Windows
from pipeline.catalog import nanos_to_usd
from pipeline.dev.demo import demo_requests
from pipeline.events.models import Request
from pipeline.resilience.health import percentile
from pipeline.routing.tokens import estimate_prompt_tokens
from pipeline.runtime import build_runtime
from pipeline.settings import Settings

MIX = {"interactive": 0.2, "standard": 0.6, "batch": 0.2}
RATES = (10, 50, 200, 1000)      # requests per second


@dataclass
class Routed:
    request: Request
    deployment: str
    priority: str
    tokens: int
    cost_nanos: int


@dataclass
class Result:
    rate: float
    requests: int
    batches: Counter = field(default_factory=Counter)       # per priority
    items: Counter = field(default_factory=Counter)
    fill: Counter = field(default_factory=Counter)
    waits: dict = field(default_factory=dict)                # priority -> sorted waits (ms)
    cost_nanos: int = 0

    @property
    def total_batches(self) -> int:
        return sum(self.batches.values())


def traffic(n: int, seed: int) -> list[Routed]:
    """``n`` demo requests with priorities drawn from :data:`MIX`, routed offline."""
    rng = random.Random(seed)
    router = build_runtime(Settings(seed=seed)).router()
    names, weights = list(MIX), list(MIX.values())
    out = []
    for req in demo_requests(n, seed=seed):
        priority = rng.choices(names, weights)[0]
        req = req.replace(hints=replace(req.hints, priority=priority))
        route = router.route(req, estimate_prompt_tokens(m.content for m in req.messages))
        out.append(Routed(req, route.decision.deployment, priority, route.prompt_tokens,
                          router.estimate_nanos(route)))
    return out


def simulate(requests: list[Routed], rate: float, config: BatchingConfig, seed: int) -> Result:
    """Poisson arrivals at ``rate``/s through the windows; a timer flushes aged windows at
    their due time exactly."""
    rng = random.Random(seed)
    now = [0]
    windows: Windows[Routed] = Windows(config.limits, lambda: now[0])
    result = Result(rate, len(requests))
    flushed: list[Flush[Routed]] = []

    def advance(to: int) -> None:
        while (due := windows.next_due_ms()) is not None and due <= to:
            now[0] = max(now[0], due)
            flushed.extend(windows.due())
        now[0] = to

    t = 0.0
    for r in requests:
        t += rng.expovariate(rate) * 1000
        advance(int(t))
        # one partition for all: windows are per deployment and priority whatever the partition
        flushed.extend(windows.add(WindowKey(0, r.deployment, config.priority_of(r.priority)),
                                   r, r.tokens))
        result.cost_nanos += r.cost_nanos
    advance(int(t) + max(lim.max_wait_ms for lim in config.priorities.values()) + 1)
    assert windows.pending() == 0
    waits: dict[str, list[int]] = {}
    for f in flushed:
        p = f.key.priority
        result.batches[p] += 1
        result.items[p] += len(f.items)
        result.fill[f.fill_reason] += 1
        waits.setdefault(p, []).extend(f.waits_ms())
    result.waits = {p: sorted(w) for p, w in waits.items()}
    assert sum(result.items.values()) == len(requests)
    return result


def report(results: list[Result], n: int) -> str:
    lines = [f"traffic: {n} demo requests, priorities {', '.join(f'{p} {int(w * 100)}%' for p, w in MIX.items())}; "
             "Poisson arrivals",
             "",
             "| arrivals/s | calls/request without batching | batched calls/request | mean batch size "
             "(interactive / standard / batch) | fill size/tokens/age/quiet | added wait P99 ms "
             "(interactive / standard / batch) | cost/request (live, with or without batching) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        size = " / ".join(f"{r.items[p] / r.batches[p]:.2f}" if r.batches[p] else "-" for p in MIX)
        wait = " / ".join(f"{percentile(r.waits[p], .99):.0f}" if r.waits.get(p) else "-" for p in MIX)
        fill = "/".join(str(r.fill[k]) for k in ("size", "tokens", "age", "quiet"))
        cost = nanos_to_usd(r.cost_nanos // max(1, r.requests))
        lines.append(f"| {r.rate:g} | 1.000 | {r.total_batches / r.requests:.3f} | {size} | {fill} | "
                     f"{wait} | ${cost:.6f} |")
    return "\n".join(lines)


HELP = "micro-batching: calls and cost per request with and without windows, by arrival rate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rates", help="arrival rates in req/s, comma-separated")
    p.add_argument("--seed", type=int, default=7, help="traffic and arrival seed")
    p.add_argument("--requests", type=int, default=2000)


def main(args: argparse.Namespace) -> int:
    config = load_batching()
    requests = traffic(args.requests, args.seed)
    rates = [float(x) for x in args.rates.split(",")] if args.rates else list(RATES)
    results = [simulate(requests, rate, config, args.seed) for rate in rates]
    limits = ", ".join(f"{p}: {lim.max_batch_size} req / {lim.max_batch_tokens} tok / {lim.max_wait_ms} ms"
                       for p, lim in config.priorities.items())
    print(f"windows ({limits})")
    print(report(results, args.requests))
    return 0
