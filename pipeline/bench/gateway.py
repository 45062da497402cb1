"""`llmpipe bench gateway`: the OpenAI-compatible HTTP gateway end to end (HTTP → gateway →
Kafka → worker → simulator → Kafka → gateway → HTTP), beside the same calls made straight
to the simulator, in one run on one simulator:

- ``direct`` / ``direct-stream``: the bench body POSTed to the simulator (plain, and with
  ``stream: true``: time to the first content delta is the simulator's own TTFT);
- ``gateway`` / ``gateway-stream``: the same body POSTed to ``llmpipe gateway`` with a
  tenant's key, pinned to the same deployment's model.

Added latency = gateway − direct at the same concurrency and percentile; added TTFT =
gateway-stream's TTFT − direct-stream's. CPU milliseconds per request per process (gateway,
front worker, ledger worker, broker, simulator, this client) from /proc."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx

from pipeline.bench.cpu import CpuClock
from pipeline.bench.floors import HTTP_LIMITS, CallFailed, bench_request, direct_to, openai_body
from pipeline.bench.latency import (LEDGER_WAIT_S, QUANTILES, Phase, failure_lines,
                                    fetch_tuning, positive_int, quantiles_of, requests_at,
                                    run_phase)
from pipeline.dev.gateway import issue_key, start_gateway
from pipeline.dev.stack import DevStack, Worker
from pipeline.providers.transport import STREAM_BODY, AiohttpTransport

HELP = ("the HTTP gateway end to end beside direct calls to the simulator: req/s, added "
        "latency, added time to first token, CPU per request per process")
DEPLOYMENT = "openai-gpt-4o-mini"
MODEL = "gpt-4o-mini"
TENANTS = 8             # as `llmpipe bench latency`: one key each, used in turn
CALL_TIMEOUT_S = 60.0
PROCESSES = ("gateway", "worker", "ledger", "broker", "sim", "client")


class HttpTarget:
    """The bench body POSTed to ``url`` (plain or streamed), one HTTP call each. A streamed
    call's TTFT is the time to its first non-empty content delta."""

    def __init__(self, name: str, url: str, keys: list[str], model: str, stream: bool,
                 ledger: Worker | None = None):
        self.name, self.url, self.model, self.stream = name, url, model, stream
        self.ledger = ledger
        self._headers = [{"authorization": f"Bearer {key}"} for key in keys]
        self._http: httpx.AsyncClient | None = None
        self.ttft_ms: dict[str, float] = {}

    async def __aenter__(self) -> "HttpTarget":
        self._http = httpx.AsyncClient(timeout=CALL_TIMEOUT_S, limits=HTTP_LIMITS,
                                       transport=AiohttpTransport(HTTP_LIMITS))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._http is not None
        await self._http.aclose()

    def body(self, i: int) -> dict[str, Any]:
        body = openai_body(bench_request(i, "interactive"), self.model)
        return {**body, "stream": True} if self.stream else body

    async def call(self, i: int) -> str:
        assert self._http is not None
        started = time.perf_counter()
        if not self.stream:
            resp = await self._http.post(self.url, json=self.body(i),
                                         headers=self._headers[i % len(self._headers)])
            if resp.status_code != 200:
                raise CallFailed(f"HTTP {resp.status_code}")
            resp.json()["choices"][0]["message"]
            return resp.headers.get("x-llmpipe-request-id", str(i))
        first = None
        async with self._http.stream("POST", self.url, json=self.body(i),
                                     headers=self._headers[i % len(self._headers)],
                                     extensions={STREAM_BODY: True}) as resp:
            if resp.status_code != 200:
                raise CallFailed(f"HTTP {resp.status_code}")
            ref = resp.headers.get("x-llmpipe-request-id", str(i))
            async for line in resp.aiter_lines():
                if first is None and line.startswith("data: {") and _has_text(line):
                    first = (time.perf_counter() - started) * 1000
        if first is None:
            raise CallFailed("no content")
        self.ttft_ms[ref] = first
        return ref

    async def provider_ms(self, refs: list[str]) -> dict[str, float]:
        """Through the gateway: waits until the ledger has every usage row, so the ledger's
        work falls inside the phase's CPU window."""
        if self.ledger is None:
            return {}
        await asyncio.to_thread(self.ledger.wait_for_usage, refs, LEDGER_WAIT_S)
        rows = await asyncio.to_thread(self.ledger.usage_rows, refs)
        return {r["request_id"]: float(r["provider_ms"]) for r in rows}


def _has_text(line: str) -> bool:
    compact = line.replace(" ", "")
    return '"content":"' in compact and '"content":""' not in compact


def _cells(q: list[float] | None) -> str:
    return "".join(f"{v:8.1f}" for v in q) if q else f"{'-':>8}" * len(QUANTILES)


def _added(q: list[float] | None, base: list[float] | None) -> str:
    if not q or not base:
        return f"{'-':>16}"
    return f"{q[0] - base[0]:7.1f}/{q[2] - base[2]:.1f}".rjust(16)


def format_table(concurrency: int, n: int, phases: list[Phase], ttft: dict[str, list[float]]) -> str:
    head = (f"{f'c={concurrency}':<16}{'req/s':>8}{'p50':>8}{'p95':>8}{'p99':>8}"
            f"{'added p50/p99':>16}{'ttft p50':>10}{'ttft p99':>10}{'added ttft':>16}"
            f"   cpu ms/req:" + "".join(f"{name:>8}" for name in PROCESSES))
    lines = [f"{n} requests per phase", head]
    by_name = {p.name: p for p in phases}
    floor = {"gateway": "direct", "gateway-stream": "direct-stream"}
    for p in phases:
        q = p.quantiles()
        base = by_name.get(floor.get(p.name, ""))
        t = quantiles_of(ttft.get(p.name, []))
        tbase = quantiles_of(ttft.get(floor.get(p.name, ""), []))
        tcells = f"{t[0]:10.1f}{t[2]:10.1f}" if t else f"{'-':>10}{'-':>10}"
        lines.append(f"{p.name:<16}{p.rate:8.1f}{_cells(q)}"
                     f"{_added(q, base.quantiles() if base else None)}{tcells}"
                     f"{_added(t, tbase) if p.name == 'gateway-stream' else '-':>16}"
                     f"{'':>14}{p.cpu_cells(PROCESSES, 8)}")
    return "\n".join(lines + failure_lines(phases))


LEGEND = """\
(ms; percentiles by linear interpolation. added = the gateway phase's quantile minus the
direct phase's at the same concurrency (p50/p99); ttft = time to the first content delta of
a streamed call; added ttft = gateway-stream's minus direct-stream's. cpu ms/req = each
process's CPU over the phase (through the gateway: until the ledger had every usage row) /
completed requests; gateway = the `llmpipe gateway` process, worker = the front worker
(intake, dispatch), ledger = the ledger worker, client = this load generator.)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=lambda s: [positive_int(x) for x in s.split(",")],
                   default=[1, 50, 200], help="comma-separated (default 1,50,200)")
    p.add_argument("--requests", type=positive_int, default=None,
                   help="per phase (default 200 x concurrency, at most 2000)")
    p.add_argument("--warmup", type=positive_int, default=20)
    p.add_argument("--provider-latency-ms", type=positive_int, default=50)
    p.add_argument("--fetch-max-wait-ms", type=positive_int, default=None,
                   help="LLMPIPE_FETCH_MAX_WAIT_MS for the workers and the gateway (default: "
                        "the setting's default, 20): what each Kafka hop waits at most on the "
                        "embedded broker, which does not wake multi-partition fetches")
    p.add_argument("--data-dir", default=".data/bench-gateway")


def main(args: argparse.Namespace) -> int:
    stack = DevStack(Path(args.data_dir), simulator_args=[
        "--fixed-latency-ms", str(args.provider_latency_ms), "--no-base-errors"])
    try:
        stack.start()
        tuning = fetch_tuning(args)
        worker, ledger = stack.start_split(**tuning)
        keys = [issue_key(stack, f"bench-{i}") for i in range(TENANTS)]
        gateway = start_gateway(stack, "bench", **tuning)
        return asyncio.run(bench(stack, worker, ledger, gateway, keys, args))
    finally:
        stack.stop()


async def bench(stack: DevStack, worker: Worker, ledger: Worker, gateway, keys: list[str],
                args: argparse.Namespace) -> int:
    assert stack.broker is not None and stack.simulator is not None
    clock = CpuClock({"gateway": gateway.process.pid, "worker": worker.process.pid,
                      "ledger": ledger.process.pid, "broker": stack.broker.pid,
                      "sim": stack.simulator.pid, "client": os.getpid()})
    direct = direct_to(stack, DEPLOYMENT, CALL_TIMEOUT_S)
    url = f"{gateway.base_url}/chat/completions"

    def targets() -> list[HttpTarget]:
        provider = [direct.api_key]
        return [HttpTarget("direct", direct.url, provider, direct.provider_model, False),
                HttpTarget("direct-stream", direct.url, provider, direct.provider_model, True),
                HttpTarget("gateway", url, keys, MODEL, False, ledger),
                HttpTarget("gateway-stream", url, keys, MODEL, True, ledger)]

    print(f"simulator: fixed {args.provider_latency_ms} ms, no injected errors; "
          f"{args.warmup} warm-up calls before each phase\n"
          f"direct: POST {direct.url} (model {direct.provider_model}); gateway: POST {url} "
          f"(model {MODEL}, interactive, {TENANTS} tenants in turn) -> {DEPLOYMENT}\n"
          f"pipeline: a front worker (intake, dispatch) and a ledger worker, one gateway; "
          f"fetch wait {stack.settings(**fetch_tuning(args)).fetch_max_wait_ms} ms")
    failed = 0
    for concurrency in args.concurrency:
        n = requests_at(concurrency, args.requests)
        phases, ttft = [], {}
        for target in targets():
            phase = await run_phase(target, n, concurrency, args.warmup, clock)
            phases.append(phase)
            ttft[target.name] = [target.ttft_ms[r] for r in phase.latencies_ms
                                 if r in target.ttft_ms]
            if target.name.startswith("gateway"):
                failed += sum(phase.failures.values())
        print(f"\n{format_table(concurrency, n, phases, ttft)}", flush=True)
    print(f"\n{LEGEND}")
    return 1 if failed else 0
