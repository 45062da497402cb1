"""`llmpipe bench faults`: provider faults injected into the simulator while requests flow through
the embedded stack, one scenario at a time, and what callers saw: success rate, end-to-end
latency, attempts, failovers, and the breaker transitions published on llm.alerts. After
each scenario the fault is cleared and requests are driven until the faulty deployments'
breakers are closed again. tests/integration/test_faults.py runs the same scenarios and
asserts on the same records (responses, usage rows, alerts, simulator stats)."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.catalog import load_catalog
from pipeline.client import GatewayClient, ResponseTimeout, make_request
from pipeline.clock import now_ms
from pipeline.providers.deployments import Deployments, load_deployments
from pipeline.dev.stack import DevStack, Worker, write_config_dir
from pipeline.embedded.broker import EmbeddedBroker
from pipeline.paths import config_dir as default_config_dir
from pipeline.events.models import Alert, Request, Response
from pipeline.resilience.guard import BREAKER_RULES
from pipeline.resilience.health import percentile
from pipeline.simulator import key_fingerprint

# Overrides of pipeline/config/deployments.yaml for fault runs, so a scenario takes seconds:
#   total_timeout_s 2      a hung call is cut after 2 s (default 30 s)
#   backoff_base_s 0.05    retries after 0.05 s, 0.1 s (+-25%) instead of 1 s, 2 s;
#   backoff_cap_s 1        a Retry-After above 1 s is capped at 1 s (default 60 s)
#   breaker.open_s 2       an open breaker admits probes after 2 s (default 30 s)
# Everything else stays as configured: 3 attempts per deployment, a breaker opening after
# 5 consecutive failures and closing after 2 successful probes, 60 s request deadline.
FAULT_CALLS: dict[str, Any] = {"total_timeout_s": 2, "backoff_base_s": 0.05, "backoff_cap_s": 1}
FAULT_RESILIENCE: dict[str, Any] = {"breaker": {"open_s": 2}}
# gpt-4o-mini's deployment calls OpenAI with a key of its own, so that one key can be
# revoked while the other OpenAI deployments keep theirs (the unauthorized_key scenario).
REVOKED_KEY_ENV = "LLMPIPE_FAULTS_OPENAI_MINI_KEY"
FAULT_DEPLOYMENTS: dict[str, dict[str, Any]] = {"openai-gpt-4o-mini": {"api_key_env": REVOKED_KEY_ENV}}
# Simulated providers at 1/20 of the DOMAIN §2 latencies, without their base error rates:
# the only failures are the injected ones.
SIMULATOR_ARGS = ["--latency-scale", "0.05", "--no-base-errors", "--seed", "13"]
RETRY_AFTER_S = 0.5          # what the 429s of the rate-limit storm carry
BREAKER_ALERTS = tuple(BREAKER_RULES.values())


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    model: str                          # every request pins this model
    faults: dict[str, dict[str, Any]]   # simulator faults, by provider-side model name
    faulty: tuple[str, ...]             # the deployment ids those faults hit
    # True: the faulty deployments' breakers must open; False: they must stay closed
    # (the fault says nothing about the deployment); None: random faults, either may happen.
    breaker_opens: bool | None
    # The environment variable of an API key the simulator revokes, for every model: 401
    # for each call made with that key (the key is known only once the stack runs).
    revoked_key_env: str | None = None

    def faults_on(self, stack: DevStack) -> dict[str, dict[str, Any]]:
        """The simulator faults to set on ``stack``."""
        if self.revoked_key_env is None:
            return self.faults
        revoked = key_fingerprint(stack.provider_keys[self.revoked_key_env])
        return {**self.faults, "*": {"kind": "unauthorized", "key": revoked}}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("rate_limit_storm", f"every gpt-4.1 call answered 429, Retry-After {RETRY_AFTER_S:g}s",
             "gpt-4.1",
             {"gpt-4.1": {"kind": "rate_limit", "rate": 1.0, "retry_after_s": RETRY_AFTER_S}},
             ("openai-gpt-4.1",), True),
    Scenario("server_errors_30pct", "30% of gpt-4o calls answered 500", "gpt-4o",
             {"gpt-4o": {"kind": "server_error", "rate": 0.3, "status": 500}},
             ("openai-gpt-4o",), None),
    Scenario("hung_connections", "every gemini-2.5-flash call hangs until the client leaves",
             "gemini-2.5-flash", {"gemini-2.5-flash": {"kind": "hang"}},
             ("google-gemini-2.5-flash",), True),
    Scenario("provider_down", "every OpenAI deployment answers 503", "gpt-4.1",
             {m: {"kind": "server_error", "rate": 1.0, "status": 503}
              for m in ("gpt-4.1", "gpt-4o", "gpt-4o-mini")},
             ("openai-gpt-4.1", "openai-gpt-4o", "openai-gpt-4o-mini"), True),
    Scenario("context_length", "every deepseek-v3.2 call refused: maximum context length",
             "deepseek-v3.2", {"deepseek-v3.2": {"kind": "context_length"}},
             ("deepseek-v3.2",), False),
    Scenario("unauthorized_key", "the OpenAI key of the gpt-4o-mini deployment is revoked: "
             "401 for every call with it", "gpt-4o-mini", {}, ("openai-gpt-4o-mini",), True,
             revoked_key_env=REVOKED_KEY_ENV),
)
# `llmpipe bench faults` runs this first: the same traffic without a fault, for comparison.
NO_FAULT = Scenario("no_fault", "no fault injected (the reference)", "gpt-4.1", {}, (), False)
BY_NAME = {s.name: s for s in (NO_FAULT, *SCENARIOS)}


@dataclass
class Outcome:
    """One request as its caller saw it."""
    request: Request
    response: Response | None       # None: no terminal response within the timeout
    e2e_ms: float                   # publish to response consumed, at the client

    @property
    def ok(self) -> bool:
        return self.response is not None and self.response.status == "ok"


@dataclass
class ScenarioRun:
    scenario: Scenario
    started_ms: int
    outcomes: list[Outcome]                  # the scenario's requests, fault injected
    recovery: list[Outcome]                  # requests after the fault was cleared
    usage_counts: dict[str, int]             # usage rows per request id (ledger)
    usage_rows: dict[str, dict]              # the row per request id
    response_counts: Counter                 # terminal responses per request id (llm.responses)
    alerts: list[Alert]                      # breaker alerts since the start, all deployments
    breaker_during: dict[str, str | None]    # of the faulty deployments, fault still on
    breaker_states: dict[str, str | None]    # of the faulty deployments, after recovery
    simulator: dict                          # the simulator's stats after the scenario
    duplicates_dropped: int                  # repeats the SDK dropped
    wall_s: float

    # -- figures

    @property
    def responses(self) -> list[Response]:
        return [o.response for o in self.outcomes if o.response is not None]

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.outcomes if o.ok)

    @property
    def success_rate(self) -> float:
        return self.succeeded / len(self.outcomes) if self.outcomes else 0.0

    def latency_ms(self, q: float) -> float:
        values = sorted(o.e2e_ms for o in self.outcomes if o.response is not None)
        return percentile(values, q) if values else float("nan")

    @property
    def attempts(self) -> list[int]:
        return [r.attempts for r in self.responses]

    @property
    def failovers(self) -> int:
        """Requests answered by another deployment than the one they were routed to."""
        return sum(1 for r in self.responses if len(r.tried) > 1)

    def breaker_alerts(self, deployment: str | None = None) -> list[Alert]:
        faulty = self.scenario.faulty if deployment is None else (deployment,)
        return [a for a in self.alerts if a.subject in faulty]

    def transitions(self) -> Counter:
        return Counter(a.rule for a in self.breaker_alerts())

    def calls(self, model: str) -> dict[str, int]:
        """Calls the simulator saw for ``model``, by HTTP status."""
        return dict(self.simulator.get("models", {}).get(model, {}).get("by_status", {}))


# --- driving traffic ------------------------------------------------------------------


async def drive(stack: DevStack, requests: list[Request], concurrency: int,
                timeout: float = 90.0) -> tuple[list[Outcome], int]:
    """Send ``requests`` with at most ``concurrency`` in flight; each one's outcome in
    order, and how many repeated responses the SDK dropped."""
    slots = asyncio.Semaphore(concurrency)
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        async def one(req: Request) -> Outcome:
            async with slots:
                t0 = time.perf_counter()
                try:
                    resp: Response | None = await gw.request(req, timeout=timeout)
                except ResponseTimeout:
                    resp = None
                return Outcome(req, resp, (time.perf_counter() - t0) * 1000)

        outcomes = await asyncio.gather(*(one(r) for r in requests))
        await asyncio.sleep(0.5)             # a repeat would arrive right behind its original
        return list(outcomes), gw.duplicates_dropped


def pinned_requests(tenant: str, model: str, n: int, label: str) -> list[Request]:
    # distinct prompts, so no cache could answer in the provider's place
    return [make_request(tenant, f"{label} {i}: list three colours", model=model, max_tokens=32,
                         metadata={"scenario": label})
            for i in range(n)]


def recover(stack: DevStack, worker: Worker, scenario: Scenario, tenant: str,
            timeout: float = 30.0) -> tuple[list[Outcome], dict[str, str | None]]:
    """With the fault cleared, send requests pinned to each faulty deployment's model, one
    at a time, until every faulty deployment has answered one of them itself and its
    breaker reads closed. An open breaker admits probes after open_s; two successful
    probes close it."""
    return asyncio.run(_recover(stack, worker, scenario, tenant, timeout))


async def _recover(stack: DevStack, worker: Worker, scenario: Scenario, tenant: str,
                   timeout: float) -> tuple[list[Outcome], dict[str, str | None]]:
    by_dep = {d: stack_deployments(stack).by_id[d].model for d in scenario.faulty}
    outcomes: list[Outcome] = []
    pending = set(scenario.faulty)
    deadline = time.monotonic() + timeout
    states: dict[str, str | None] = {}
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        while pending and time.monotonic() < deadline:
            for dep in sorted(pending):
                (req,) = pinned_requests(tenant, by_dep[dep], 1,
                                         f"{scenario.name}-recovery-{len(outcomes)}")
                t0 = time.perf_counter()
                try:
                    resp: Response | None = await gw.request(req, timeout=60.0)
                except ResponseTimeout:
                    resp = None
                outcome = Outcome(req, resp, (time.perf_counter() - t0) * 1000)
                outcomes.append(outcome)
                served_here = outcome.ok and resp is not None and resp.deployment == dep
                states[dep] = await asyncio.to_thread(worker.breaker_state, dep)
                if served_here and states[dep] == "closed":
                    pending.discard(dep)
                elif states[dep] == "open":
                    await asyncio.sleep(0.2)     # no probe is admitted before open_s
    for dep in scenario.faulty:
        states[dep] = worker.breaker_state(dep)
    return outcomes, states


def stack_deployments(stack: DevStack) -> Deployments:
    """The deployments (and call limits) the stack's workers run with."""
    config = Path(stack.config_dir) if stack.config_dir is not None else default_config_dir()
    catalog = load_catalog(config / "catalog.yaml")
    return load_deployments(catalog, config / "deployments.yaml", env={})


def wait_for_alerts(stack: DevStack, since_ms: int, until: Any, timeout: float = 15.0) -> list[Alert]:
    """Breaker alerts since ``since_ms``, re-read until ``until(alerts)`` holds or the
    timeout (the timer that publishes transitions ticks every second)."""
    deadline = time.monotonic() + timeout
    while True:
        alerts = stack.alerts(since_ms, BREAKER_ALERTS)
        if until(alerts) or time.monotonic() > deadline:
            return alerts
        time.sleep(0.3)


def run_scenario(stack: DevStack, worker: Worker, scenario: Scenario, n: int,
                 concurrency: int = 16) -> ScenarioRun:
    """Inject the scenario's faults, send ``n`` requests pinned to its model, clear the
    faults and recover, then collect what every record says about those requests."""
    tenant = f"faults-{scenario.name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    started_ms = now_ms()
    t0 = time.monotonic()
    stack.reset_simulator()
    stack.set_faults(scenario.faults_on(stack))
    try:
        outcomes, dropped = asyncio.run(drive(
            stack, pinned_requests(tenant, scenario.model, n, scenario.name), concurrency))
        simulator = stack.simulator_stats()
        during = {dep: worker.breaker_state(dep) for dep in scenario.faulty}
    finally:
        stack.clear_faults()
    wall_s = time.monotonic() - t0
    recovery, states = recover(stack, worker, scenario, tenant)
    ids = [o.request.request_id for o in outcomes + recovery]

    def closed_again(alerts: list[Alert]) -> bool:
        """Every faulty deployment whose breaker opened has a breaker_closed alert after."""
        for dep in scenario.faulty:
            rules = [a.rule for a in alerts if a.subject == dep]
            if "breaker_open" in rules and rules[-1] != "breaker_closed":
                return False
        return True

    alerts = wait_for_alerts(stack, started_ms, closed_again)
    counts = worker.wait_for_usage(ids, timeout=60)
    rows = {r["request_id"]: r for r in worker.usage_rows(ids)}
    wanted = set(ids)
    response_counts = Counter(r.request_id for r in stack.read_events(stack.topics.responses, Response)
                              if r.request_id in wanted)
    return ScenarioRun(scenario, started_ms, outcomes, recovery, counts, rows, response_counts,
                       alerts, during, states, simulator, dropped, wall_s)


# --- the command ----------------------------------------------------------------------


def start_fault_stack(data_dir: Path, broker: EmbeddedBroker | None = None, topic_prefix: str = "",
                      app_id: str = "llmpipe") -> tuple[DevStack, Worker]:
    """The embedded stack (on ``broker`` if given) with the fault configuration above and
    one worker (intake, dispatch, ledger)."""
    config = write_config_dir(data_dir / "config", calls=FAULT_CALLS, resilience=FAULT_RESILIENCE,
                              deployments=FAULT_DEPLOYMENTS)
    stack = DevStack(data_dir / "stack", topic_prefix=topic_prefix, app_id=app_id,
                     simulator_args=SIMULATOR_ARGS, config_dir=config,
                     extra_key_vars=(REVOKED_KEY_ENV,))
    stack.start(broker=broker)
    try:
        return stack, stack.start_worker()
    except BaseException:
        stack.stop()
        raise


def warm_up(stack: DevStack, per_model: int = 4) -> None:
    """A few unmeasured requests to every model first (as `llmpipe bench` does): consumer
    group settled, connection pools open, tenancy state created."""
    config = Path(stack.config_dir) if stack.config_dir is not None else default_config_dir()
    catalog = load_catalog(config / "catalog.yaml")
    models = sorted({d.model for d in stack_deployments(stack).by_id.values()
                     if catalog.models[d.model].kind == "chat"})     # chat requests only
    requests = [r for m in models for r in pinned_requests("faults-warmup", m, per_model, "warm-up")]
    asyncio.run(drive(stack, requests, len(requests)))


def table(runs: list[ScenarioRun]) -> str:
    head = ("scenario", "requests", "ok", "p50 ms", "p95 ms", "p99 ms", "attempts mean/max",
            "failovers", "breaker transitions (faulty deployments)")
    rows = [head]
    for run in runs:
        attempts = run.attempts or [0]
        t = run.transitions()
        seen = ", ".join(f"{rule.removeprefix('breaker_')} {t[rule]}" for rule in BREAKER_ALERTS
                         if t[rule]) or "none"
        rows.append((run.scenario.name, str(len(run.outcomes)), f"{run.success_rate:.1%}",
                     f"{run.latency_ms(.5):.0f}", f"{run.latency_ms(.95):.0f}",
                     f"{run.latency_ms(.99):.0f}",
                     f"{sum(attempts) / len(attempts):.2f} / {max(attempts)}",
                     str(run.failovers), seen))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


HELP = ("provider faults injected into the simulator while requests flow: success, latency, "
        "attempts, failovers and breaker transitions per scenario")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=200, help="requests per scenario")
    p.add_argument("--scenario", default="all", metavar="NAME|all",
                   help="one scenario (no_fault, rate_limit_storm, server_errors_30pct, "
                        "hung_connections, provider_down, context_length, unauthorized_key) "
                        "or all (default)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--data-dir", default=".data/faults")


def main(args: argparse.Namespace) -> int:
    if args.scenario != "all" and args.scenario not in BY_NAME:
        print(f"llmpipe bench faults: unknown scenario {args.scenario!r}; one of "
              f"{', '.join(BY_NAME)} or all")
        return 2
    names = list(BY_NAME) if args.scenario == "all" else [args.scenario]
    data_dir = Path(args.data_dir)
    stack, worker = start_fault_stack(data_dir)
    runs: list[ScenarioRun] = []
    try:
        warm_up(stack)
        for name in names:
            scenario = BY_NAME[name]
            print(f"{scenario.name}: {scenario.summary}; {args.requests} requests pinned to "
                  f"{scenario.model}, {args.concurrency} in flight ...", flush=True)
            run = run_scenario(stack, worker, scenario, args.requests, args.concurrency)
            runs.append(run)
            accounted = sum(1 for o in run.outcomes
                            if run.response_counts[o.request.request_id] == 1
                            and run.usage_counts.get(o.request.request_id) == 1)
            states = ", ".join(f"{d} {s}" for d, s in sorted(run.breaker_states.items()))
            print(f"  {run.succeeded}/{len(run.outcomes)} ok in {run.wall_s:.1f}s; "
                  f"{accounted} with exactly one response and one usage row; "
                  f"{len(run.recovery)} recovery requests; breakers now: {states}", flush=True)
    finally:
        stack.stop()
    print()
    print(table(runs))
    complete = all(r.success_rate == 1.0 and all(
        r.response_counts[o.request.request_id] == 1 and r.usage_counts.get(o.request.request_id) == 1
        for o in r.outcomes) for r in runs)
    return 0 if complete else 1

