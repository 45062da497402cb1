"""`llmpipe bench latency`: requests through the embedded stack (one front worker, the
ledger in a process of its own unless ``--ledger shared``, simulator at a fixed latency,
no injected errors) beside their floors, in one run on the same simulator
and broker (issue 17). At each concurrency, one phase each of:

- direct: the same requests POSTed straight to the simulator (pipeline/bench/floors.py);
- bare broker: their Avro bytes echoed through as many Kafka hops as the pipeline takes
  (2 for interactive, 4 for standard: one phase per hop count);
- interactive, standard: through the pipeline at that priority (the standard one waits
  its micro-batch window).

Per phase: req/s, end-to-end P50/P95/P99 at the caller, for the pipeline "added" (its
quantile minus direct's) and per request end to end minus the provider time the ledger
recorded, and CPU milliseconds per request of each process (pipeline/bench/cpu.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import yaml

from pipeline.bench.cpu import CpuClock, Usage
from pipeline.bench.floors import (INTERACTIVE_HOPS, PIPELINE_HOPS, BrokerEcho, CallFailed,
                                   Direct, Target, bench_request, direct_to, echo_topics)
from pipeline.client import GatewayClient
from pipeline.dev.stack import DevStack, Worker, write_config_dir
from pipeline.events.codec import Codec
from pipeline.kafka.topics import load_topic_specs, prefixed
from pipeline.paths import config_dir as default_config_dir
from pipeline.resilience.health import percentile

PHASES = ("direct", "broker", "interactive", "standard")
PRIORITIES = ("interactive", "standard")
PROCESSES = ("worker", "ledger", "broker", "sim", "client")
QUANTILES = (.5, .95, .99)
CALL_TIMEOUT_S = 120.0
LEDGER_WAIT_S = 60.0
MAX_DEFAULT_REQUESTS = 2000
#: Every deployment's call limits in the bench: far above any load here, so a phase
#: measures the pipeline, not the rate limiter (the configured rpm 10,000 allows 167 req/s
#: once its burst of 1,667 is spent, and the phases share the deployment's bucket).
BENCH_LIMITS = {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_concurrency": 4096}


@dataclass
class Phase:
    """One phase's measurements: latencies of the completed calls by reference, failures by
    reason, the wall time of the load, and each process's CPU over the phase."""
    name: str
    latencies_ms: dict[str, float]
    failures: Counter[str]
    wall_s: float
    cpu: Usage
    provider_ms: dict[str, float]

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        """Completed calls per second of the phase's load."""
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    def quantiles(self) -> list[float] | None:
        return quantiles_of(self.latencies_ms.values())

    def ledger_added(self) -> list[float] | None:
        """Per request, end to end minus the provider time the ledger recorded."""
        return quantiles_of(ms - self.provider_ms[ref] for ref, ms in self.latencies_ms.items()
                            if ref in self.provider_ms)

    def cpu_cells(self, names: tuple[str, ...], width: int) -> str:
        """CPU ms per completed request of each named process ("-" where not measured)."""
        return "".join(f"{self.cpu.per_request(name, self.completed):{width}.2f}"
                       if name in self.cpu.cpu_ms else f"{'-':>{width}}" for name in names)


def quantiles_of(values: Iterable[float]) -> list[float] | None:
    """``QUANTILES`` of ``values`` by linear interpolation, or None when there are none."""
    ordered = sorted(values)
    return [percentile(ordered, q) for q in QUANTILES] if ordered else None


class Pipeline:
    """Bench requests at one priority through the gateway, with a GatewayClient."""

    def __init__(self, stack: DevStack, ledger: Worker, priority: str, timeout_s: float):
        """``ledger``: the worker running the ledger, asked for the usage rows."""
        self.name = self.priority = priority
        self.stack, self.ledger, self.timeout_s = stack, ledger, timeout_s
        self.deployments: Counter[str] = Counter()    # where the pipeline routed them
        self._gw: GatewayClient | None = None

    async def __aenter__(self) -> "Pipeline":
        self._gw = GatewayClient(self.stack.bootstrap, self.stack.topics)
        await self._gw.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._gw is not None
        await self._gw.close()

    async def call(self, i: int) -> str:
        assert self._gw is not None
        request = bench_request(i, self.priority)
        response = await self._gw.request(request, timeout=self.timeout_s)
        if response.status != "ok":
            raise CallFailed(response.error.code if response.error else response.status)
        self.deployments[response.deployment or "?"] += 1
        return request.request_id

    async def provider_ms(self, refs: list[str]) -> dict[str, float]:
        """Waits until the ledger has every request's usage row, so the ledger's work for a
        phase falls inside that phase's CPU window."""
        await asyncio.to_thread(self.ledger.wait_for_usage, refs, LEDGER_WAIT_S)
        rows = await asyncio.to_thread(self.ledger.usage_rows, refs)
        return {r["request_id"]: float(r["provider_ms"]) for r in rows}


async def load(target: Target, n: int, concurrency: int) -> tuple[dict[str, float], Counter[str], float]:
    """The load generator every phase shares: ``n`` calls, at most ``concurrency`` at a
    time. Latency of each completed call by its reference, failures by reason, wall time."""
    slots = asyncio.Semaphore(concurrency)
    latencies: dict[str, float] = {}
    failures: Counter[str] = Counter()

    async def one(i: int) -> None:
        async with slots:
            started = time.perf_counter()
            try:
                ref = await target.call(i)
            except Exception as exc:
                failures[str(exc) if isinstance(exc, CallFailed) else type(exc).__name__] += 1
                return
            latencies[ref] = (time.perf_counter() - started) * 1000

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return latencies, failures, time.perf_counter() - began


async def run_phase(target: Target, n: int, concurrency: int, warmup: int, clock: CpuClock) -> Phase:
    """Warm the target up (connections, consumer positions), then measure ``n`` calls. The
    CPU window closes once the ledger has the phase's usage rows (pipeline phases)."""
    async with target:
        _, warm_failures, _ = await load(target, warmup, max(1, min(concurrency, warmup)))
        before = clock.sample()
        latencies, failures, wall = await load(target, n, concurrency)
        provider = await target.provider_ms(list(latencies))
        cpu = clock.since(before)
    failures.update({f"warm-up {reason}": count for reason, count in warm_failures.items()})
    return Phase(target.name, latencies, failures, wall, cpu, provider)


# --- the report ---------------------------------------------------------------------------

def _pair(values: list[float] | None) -> str:
    """"P50/P99" from quantiles in ``QUANTILES`` order, or "-" when there are none."""
    return f"{values[0]:.1f}/{values[2]:.1f}" if values else "-"


def _minus(values: list[float] | None, base: list[float] | None) -> list[float] | None:
    return [v - b for v, b in zip(values, base)] if values and base else None


def format_table(concurrency: int, requests: int, phases: list[Phase]) -> str:
    """One compact table for one concurrency: floors first, then the pipeline phases."""
    head = (f"{f'c={concurrency}':<12}{'req/s':>8}{'p50':>8}{'p95':>8}{'p99':>8}"
            f"{'added p50/p99':>16}{'e2e-prov p50/p99':>18}"
            f"   cpu ms/req:{'worker':>7}{'ledger':>7}{'broker':>7}{'sim':>7}{'client':>7}"
            f"{'client %core':>14}")
    lines = [f"{requests} requests per phase", head]
    direct = next((p.quantiles() for p in phases if p.name == "direct"), None)
    for p in phases:
        q = p.quantiles()
        cells = [f"{v:8.1f}" for v in q] if q else [f"{'-':>8}"] * len(QUANTILES)
        pipeline = p.name in PRIORITIES
        cpu = p.cpu_cells(PROCESSES, 7)
        lines.append(f"{p.name:<12}{p.rate:8.1f}{''.join(cells)}"
                     f"{_pair(_minus(q, direct)) if pipeline else '-':>16}"
                     f"{_pair(p.ledger_added()) if pipeline else '-':>18}"
                     f"{'':>14}{cpu}{p.cpu.share_of_core('client') * 100:13.0f}%")
    return "\n".join(lines + failure_lines(phases))


def failure_lines(phases: list[Phase]) -> list[str]:
    """One line per phase with failed calls: how many, and why."""
    lines = []
    for p in phases:
        if p.failures:
            reasons = ", ".join(f"{reason} x{count}" for reason, count in p.failures.most_common())
            lines.append(f"  {p.name}: {sum(p.failures.values())} failed ({reasons})")
    return lines


LEGEND = """\
(ms; percentiles by linear interpolation. added = the pipeline's quantile minus direct's at
the same concurrency; e2e-prov = per request, end to end minus the provider time the ledger
recorded. worker = the front worker (intake, batcher, dispatch; with --ledger shared the
ledger too); ledger = the ledger worker (ledger, monitor: chDB inserts). cpu ms/req = each
process's CPU time over the phase (for the pipeline until the
ledger had every usage row) / completed requests, idle burn included (the idle line
above: at low rates it is most of the floors' worker and broker figures); client = this
process: the load generator, and in the bare-broker phase the echo tasks too.)"""


# --- the run ------------------------------------------------------------------------------

HELP = ("requests through the embedded stack beside the direct-HTTP and bare-broker floors: "
        "throughput, P50/P95/P99, added latency and CPU per request per process")


def requests_at(concurrency: int, requested: int | None) -> int:
    """Requests per phase: as asked, else 200 per unit of concurrency, at most 2000."""
    return requested if requested is not None else min(200 * concurrency, MAX_DEFAULT_REQUESTS)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (a concurrency or hop count of 0 would
    wait forever)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def csv(kind: Callable[[str], object], allowed: tuple[str, ...] | None = None):
    """An argparse type for a comma-separated list of ``kind`` (from ``allowed``)."""
    def parse(text: str) -> list:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        wrong = [v for v in values if allowed is not None and v not in allowed]
        if not values or wrong:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list"
                                             f"{f' of {allowed}' if allowed else ''}, got {text!r}")
        return values
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=positive_int, default=None,
                   help="requests per phase (default: 200 x concurrency, at most 2000; the "
                        "default run takes about 5 minutes on 2 cores)")
    p.add_argument("--concurrency", type=csv(positive_int), default=[1, 50, 200],
                   help="comma-separated concurrencies, one table each (default 1,50,200)")
    p.add_argument("--only", type=csv(str, PHASES), default=list(PHASES),
                   help=f"phases to run, from {','.join(PHASES)} (default: all, in that order)")
    p.add_argument("--hops", type=csv(positive_int),
                   default=[len(INTERACTIVE_HOPS), len(PIPELINE_HOPS)],
                   help=f"bare-broker hop counts, one phase each (default "
                        f"{len(INTERACTIVE_HOPS)},{len(PIPELINE_HOPS)}: interactive's "
                        f"{' -> '.join(INTERACTIVE_HOPS)} and standard's "
                        f"{' -> '.join(PIPELINE_HOPS)})")
    p.add_argument("--provider-latency-ms", type=int, default=50,
                   help="the simulator's fixed latency per call (default 50)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured requests before each phase")
    p.add_argument("--idle-seconds", type=float, default=5.0,
                   help="how long the idle worker's CPU is measured, after the warm-up")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="front worker processes in one consumer group (default 1; the worker "
                        "CPU column is their sum); needs --ledger own beyond 1")
    p.add_argument("--fetch-max-wait-ms", type=int, default=None,
                   help="the workers' LLMPIPE_FETCH_MAX_WAIT_MS (default: the setting's, 20): "
                        "Tansu answers a fetch only when this runs out, so it trades latency "
                        "per hop against idle CPU (docs/ARCHITECTURE.md)")
    p.add_argument("--ledger", choices=("own", "shared"), default="own",
                   help="own (default): the ledger and monitor in a worker process of their "
                        "own, as deployed; shared: every agent in one worker process")
    p.add_argument("--data-dir", default=".data/bench")


def fetch_tuning(args: argparse.Namespace) -> dict[str, int]:
    """The worker settings ``--fetch-max-wait-ms`` asks for (none: the defaults)."""
    return {} if args.fetch_max_wait_ms is None else {"fetch_max_wait_ms": args.fetch_max_wait_ms}


def bench_config(dest: Path) -> Path:
    """The configuration directory with :data:`BENCH_LIMITS` for every deployment (a
    deployment's own ``resilience:`` would otherwise keep its limits)."""
    ids = [d["id"] for d in yaml.safe_load(
        (default_config_dir() / "deployments.yaml").read_text())["deployments"]]
    limits = {"limits": BENCH_LIMITS}
    return write_config_dir(dest, resilience=limits,
                            deployments={i: {"resilience": limits} for i in ids})


def main(args: argparse.Namespace) -> int:
    stack = DevStack(Path(args.data_dir), simulator_args=[
        "--fixed-latency-ms", str(args.provider_latency_ms), "--no-base-errors"])
    try:
        stack.start()                  # empties the data directory: the config goes in after
        stack.config_dir = bench_config(stack.data_dir / "config")
        tuning = fetch_tuning(args)
        if args.ledger == "own":
            worker, ledger = stack.start_split(**tuning)
        elif args.workers > 1:
            raise SystemExit("--workers beyond 1 needs --ledger own (chDB has one owner)")
        else:
            worker = ledger = stack.start_worker(**tuning)
        fronts = [worker] + [stack.start_worker(f"worker-{i}", agents=("intake", "dispatch"), **tuning)
                             for i in range(2, args.workers + 1)]
        return asyncio.run(bench(stack, fronts, ledger, args))
    finally:
        stack.stop()


async def bench(stack: DevStack, fronts: list[Worker], ledger: Worker,
                args: argparse.Namespace) -> int:
    assert stack.broker is not None and stack.broker.pid is not None and stack.simulator is not None
    worker = fronts[0]
    pids: dict[str, int | list[int]] = {
        "worker": [w.process.pid for w in fronts], "broker": stack.broker.pid,
        "sim": stack.simulator.pid, "client": os.getpid()}
    if ledger is not worker:
        pids["ledger"] = ledger.process.pid
    clock = CpuClock(pids)
    deployment = await routed_deployment(stack, worker, ledger, args.warmup)
    direct = direct_to(stack, deployment, CALL_TIMEOUT_S)
    before = clock.sample()
    await asyncio.sleep(args.idle_seconds)
    idle = clock.since(before)
    payload = Codec().encode(bench_request(0), stack.topics.requests)
    template = next(s for s in prefixed(load_topic_specs(), stack.topic_prefix)
                    if s.name == stack.topics.requests)
    print(preamble(args, direct, deployment, len(payload), template.partitions, idle))

    def targets(name: str) -> list[Target]:
        if name == "direct":
            return [direct]
        if name == "broker":
            return [BrokerEcho(stack.bootstrap, echo_topics(template, hops), payload,
                               stack.settings().fetch_max_wait_ms, CALL_TIMEOUT_S)
                    for hops in args.hops]
        return [Pipeline(stack, ledger, name, CALL_TIMEOUT_S)]

    pipeline_failed = 0
    for concurrency in args.concurrency:
        n = requests_at(concurrency, args.requests)
        phases = [await run_phase(target, n, concurrency, args.warmup, clock)
                  for name in PHASES if name in args.only for target in targets(name)]
        pipeline_failed += sum(sum(p.failures.values()) for p in phases if p.name in PRIORITIES)
        print(f"\n{format_table(concurrency, n, phases)}", flush=True)
    print(f"\n{LEGEND}")
    return 1 if pipeline_failed else 0


async def routed_deployment(stack: DevStack, worker: Worker, ledger: Worker, warmup: int) -> str:
    """Warm the worker up with standard requests and return the deployment it routed them
    to: the one the direct floor calls."""
    pipeline = Pipeline(stack, ledger, "standard", CALL_TIMEOUT_S)
    async with pipeline:
        _, failures, _ = await load(pipeline, max(warmup, 1), 1)
    if not pipeline.deployments:
        raise RuntimeError(f"no warm-up request succeeded ({dict(failures)}); worker log:\n"
                           f"{worker.log_tail()}")
    return pipeline.deployments.most_common(1)[0][0]


def pipeline_processes(args: argparse.Namespace) -> str:
    if args.ledger == "shared":
        return "one worker (intake, batcher, dispatch, ledger, monitor)"
    fronts = "a front worker" if args.workers == 1 else f"{args.workers} front workers in one group"
    return f"{fronts} (intake, batcher, dispatch) and a ledger worker (ledger, monitor)"


def preamble(args: argparse.Namespace, direct: Direct, deployment: str, payload_bytes: int,
             partitions: int, idle: Usage) -> str:
    """What each phase is, and the idle worker's CPU, above the tables."""
    paths = {len(INTERACTIVE_HOPS): f"interactive's {' -> '.join(INTERACTIVE_HOPS)}",
             len(PIPELINE_HOPS): f"standard's {' -> '.join(PIPELINE_HOPS)}"}
    broker = "; ".join(f"{hops} hops" + (f" as {paths[hops]}" if hops in paths else "")
                       for hops in args.hops)
    return "\n".join([
        f"simulator: fixed {args.provider_latency_ms} ms, no injected errors; "
        f"{args.warmup} warm-up requests before each phase",
        f"direct: POST {direct.url} model {direct.provider_model} (the worker's deployment "
        f"{deployment}), {direct.body_bytes()}-byte body",
        f"bare broker: {broker}; an echo task per hop after the first, in this process, "
        f"{payload_bytes}-byte Avro request, {partitions} partitions per topic",
        f"pipeline: {pipeline_processes(args)}, priority "
        f"{' and '.join(p for p in PRIORITIES if p in args.only) or '(none run)'}; "
        f"deployment limits raised to rpm {BENCH_LIMITS['rpm']:,}, tpm "
        f"{BENCH_LIMITS['tpm']:,}, {BENCH_LIMITS['max_concurrency']:,} calls in flight "
        "(the phases measure the pipeline, not the rate limiter)",
        f"idle, % of a core over {idle.elapsed_s:.0f}s: " + ", ".join(
            f"{name} {idle.share_of_core(name) * 100:.1f}%" for name in PROCESSES
            if name in idle.cpu_ms and name != "client")])
