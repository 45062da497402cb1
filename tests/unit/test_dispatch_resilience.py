"""Dispatch behind per-deployment guards: breaker, rate limits, health demotion, deadlines
and failover, driven by a manual clock and scripted fake adapters (nothing sleeps)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pipeline import errors
from pipeline.metrics import REGISTRY
from pipeline.catalog import load_catalog
from pipeline.config import ConfigError
from pipeline.providers.deployments import Deployments, load_deployments
from pipeline.dispatch import DEGRADED, Dispatcher
from pipeline.errors import GatewayError
from pipeline.events.codec import Codec
from pipeline.events.models import (Alert, ChatMessage, Request, Response, RouteDecision,
                                    RoutedRequest, Usage)
from pipeline.outputs import Out
from pipeline.providers.base import Completion
from pipeline.resilience.retry import RetryPolicy
from pipeline.resilience.breaker import BreakerState
from pipeline.clock import ManualClock
from pipeline.resilience.guard import DeploymentGuard, GuardSettings, Refusal
from pipeline.settings import Topics

catalog = load_catalog()
BASE = load_deployments(catalog, env={})
topics = Topics()

GPT41, GPT4O, MINI = "openai-gpt-4.1", "openai-gpt-4o", "openai-gpt-4o-mini"
CLAUDE, GEMINI, DEEPSEEK = "anthropic-claude-sonnet-4.5", "google-gemini-2.5-flash", "deepseek-v3.2"
EAST, SOUTH = "deepseek-v3.2-cn-east", "deepseek-v3.2-cn-south"



async def handled(d: Dispatcher, r: RoutedRequest) -> list[Out]:
    """A request's outputs followed by the breaker alerts it caused (the agent publishes
    those from its alert tick; here they are drained right after the request)."""
    return await d.handle(r) + d.alerts()

# --- fakes -----------------------------------------------------------------------------------

class FakeTime:
    """A manual clock and the sleep every wait goes through. ``autojump``: a sleep moves the
    clock at once; otherwise sleepers wait until the test calls :meth:`advance`."""

    def __init__(self, start: float = 1_000.0, autojump: bool = True):
        self.clock = ManualClock(start)
        self.autojump = autojump
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future]] = []

    def wall_ms(self) -> int:
        return int(round(self.clock.now() * 1000))

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.autojump:
            self.clock.advance(max(0.0, seconds))
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.clock.now() + seconds, fut))
        await fut

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for entry in list(self._sleepers):
            due, fut = entry
            if fut.done():
                self._sleepers.remove(entry)
            elif due <= self.clock.now() + 1e-9:
                fut.set_result(None)
                self._sleepers.remove(entry)


STATUS = {errors.RATE_LIMITED: 429, errors.OVERLOADED: 503, errors.PROVIDER_ERROR: 500,
          errors.INVALID_REQUEST: 400, errors.CONTEXT_LENGTH_EXCEEDED: 400, errors.AUTH_ERROR: 401,
          errors.TIMEOUT: None}


class FakeAdapter:
    """Answers from a script: "ok", an error code, (code, retry_after_s), or a future to
    wait on first (a call that hangs until the test releases it). Each call takes
    ``latency_s`` of fake time."""

    def __init__(self, time: FakeTime, script=(), default="ok", latency_s: float = 0.2):
        self.time, self.script, self.default, self.latency_s = time, list(script), default, latency_s
        self.calls: list[float] = []          # fake time of each call's start

    async def complete(self, routed: RoutedRequest) -> Completion:
        self.calls.append(self.time.clock.now())
        outcome = self.script.pop(0) if self.script else self.default
        if isinstance(outcome, asyncio.Future):
            outcome = await outcome
        self.time.clock.advance(self.latency_s)
        retry_after = None
        if isinstance(outcome, tuple):
            outcome, retry_after = outcome
        if outcome != "ok":
            exc = GatewayError(f"fake {outcome}", outcome, retry_after_s=retry_after,
                               status=STATUS.get(outcome))
            exc.elapsed_ms = int(self.latency_s * 1000)
            raise exc
        return Completion("hi", "stop", 100, 50, 0, int(self.latency_s * 1000))

    async def aclose(self) -> None:
        return None


def deployments_with(*, breaker=None, limits=None, health=None, calls=None,
                     regions: bool = False) -> Deployments:
    """The shipped deployments with the given guard settings on all of them, and (with
    ``regions``) two more regions of deepseek-v3.2: cn-east (priority 2), cn-south (3)."""
    g = BASE.by_id[GPT41].guard
    guard = GuardSettings(dataclasses.replace(g.breaker, **(breaker or {})),
                          dataclasses.replace(g.limits, **(limits or {})),
                          dataclasses.replace(g.health, **(health or {})))
    by_id = {d.id: dataclasses.replace(d, guard=guard) for d in BASE.by_id.values()}
    if regions:
        by_id[EAST] = dataclasses.replace(by_id[DEEPSEEK], id=EAST, region="cn-east", priority=2)
        by_id[SOUTH] = dataclasses.replace(by_id[DEEPSEEK], id=SOUTH, region="cn-south", priority=3)
    calls = dict(calls or {})
    if "max_attempts" in calls:
        calls["retry"] = dataclasses.replace(BASE.calls.retry, max_attempts=calls.pop("max_attempts"))
    return Deployments(by_id, dataclasses.replace(BASE.calls, **calls))


def make(time: FakeTime, deployments: Deployments, adapters: dict[str, FakeAdapter]) -> Dispatcher:
    return Dispatcher(catalog, deployments, adapters, topics, RetryPolicy(1, 60, 0.25),
                      rng=random.Random(7), sleep=time.sleep, clock=time.wall_ms,
                      monotonic=time.clock)


def routed(time: FakeTime, deployments: Deployments, dep: str = GPT41, fallbacks=(GPT4O, MINI),
           received_ago_s: float = 0.0, estimated: int = 100, max_tokens: int = 200) -> RoutedRequest:
    d = deployments.by_id[dep]
    received = time.wall_ms() - int(received_ago_s * 1000)
    request = Request(request_id=str(uuid.uuid4()), tenant="acme",
                      messages=[ChatMessage("user", "hello")], created_at_ms=received)
    return RoutedRequest(
        request=request,
        route=RouteDecision(deployment=dep, model=d.model, provider=d.provider, rule="pinned",
                            region=d.region),
        max_tokens=max_tokens, reply_topic=topics.responses, received_at_ms=received,
        routed_at_ms=received, fallbacks=list(fallbacks), estimated_prompt_tokens=estimated)


async def settle() -> None:
    """Let every task that can run, run (they only wait on futures the test controls)."""
    for _ in range(50):
        await asyncio.sleep(0)


def of(outs, cls):
    return [o.event for o in outs if isinstance(o.event, cls)]


def reroute(outs) -> RoutedRequest:
    (event,) = [o.event for o in outs if o.topic == topics.routed]
    return event


def response(outs) -> Response:
    (event,) = of(outs, Response)
    return event


# --- circuit breaker -------------------------------------------------------------------------

async def test_breaker_opens_fails_over_without_a_call_half_opens_and_closes():
    time = FakeTime()
    deps = deployments_with(breaker=dict(failure_threshold=3, open_s=30, half_open_probes=3,
                                         success_threshold=2))
    gpt = FakeAdapter(time, default=errors.OVERLOADED)
    d = make(time, deps, {GPT41: gpt})

    # three failed attempts (max_attempts 3) open the breaker and fail the request over
    outs = await handled(d, routed(time, deps))
    opened_at = time.clock.now()
    assert reroute(outs).route.deployment == GPT4O and len(gpt.calls) == 3
    (opened,) = of(outs, Alert)
    assert (opened.rule, opened.state, opened.subject, opened.value) == ("breaker_open", "firing", GPT41, "3")
    assert opened.threshold == "3" and "3 consecutive failures" in opened.message
    assert [o.key for o in outs if o.topic == topics.alerts] == ["*"]

    # while OPEN: no provider call, immediate failover recorded as breaker_open
    for _ in range(5):
        time.clock.advance(5.9)
        outs = await handled(d, routed(time, deps))
        moved = reroute(outs)
        assert moved.tried[-1].error_code == errors.BREAKER_OPEN and moved.tried[-1].attempts == 0
        assert of(outs, Alert) == []
    assert len(gpt.calls) == 3

    # after open_s: the next request is a probe; two successes close the breaker
    time.clock.advance(opened_at + 30.001 - time.clock.now())
    gpt.default = "ok"
    outs = await handled(d, routed(time, deps))
    assert response(outs).status == "ok"
    assert [(a.rule, a.state) for a in of(outs, Alert)] == [("breaker_half_open", "firing")]
    assert d.guards.get(GPT41).breaker.state is BreakerState.HALF_OPEN
    outs = await handled(d, routed(time, deps))
    assert [(a.rule, a.state) for a in of(outs, Alert)] == [("breaker_closed", "resolved")]
    assert d.guards.get(GPT41).breaker.state is BreakerState.CLOSED
    assert d.alerts() == []                                # each transition reported once
    assert len(gpt.calls) == 5


async def test_one_failure_in_half_open_reopens_it():
    time = FakeTime()
    deps = deployments_with(breaker=dict(failure_threshold=1, open_s=30), calls=dict(max_attempts=1))
    gpt = FakeAdapter(time, script=[errors.TIMEOUT, errors.PROVIDER_ERROR])
    d = make(time, deps, {GPT41: gpt})
    await handled(d, routed(time, deps))
    time.clock.advance(30)
    outs = await handled(d, routed(time, deps))             # the probe fails
    assert [(a.rule, a.labels["reason"]) for a in of(outs, Alert)] == [
        ("breaker_half_open", "open_elapsed"), ("breaker_open", "probe_failed")]
    assert reroute(outs).tried[-1].error_code == errors.PROVIDER_ERROR
    time.clock.advance(29)
    outs = await handled(d, routed(time, deps))
    assert reroute(outs).tried[-1].error_code == errors.BREAKER_OPEN and len(gpt.calls) == 2


async def test_half_open_admits_at_most_the_configured_probes_at_once():
    time = FakeTime()
    deps = deployments_with(breaker=dict(failure_threshold=1, open_s=10, half_open_probes=2,
                                         success_threshold=2), calls=dict(max_attempts=1))
    loop = asyncio.get_running_loop()
    gates = [loop.create_future(), loop.create_future()]
    gpt = FakeAdapter(time, script=[errors.OVERLOADED] + gates)
    d = make(time, deps, {GPT41: gpt})
    await handled(d, routed(time, deps))
    time.clock.advance(10)
    probes = [asyncio.create_task(d.handle(routed(time, deps))) for _ in range(2)]
    await settle()
    third = await handled(d, routed(time, deps))            # both probe slots taken
    assert reroute(third).tried[-1].error_code == errors.BREAKER_OPEN
    for gate in gates:
        gate.set_result("ok")
    done = await asyncio.gather(*probes)
    assert all(response(outs).status == "ok" for outs in done)
    assert d.guards.get(GPT41).breaker.state is BreakerState.CLOSED
    assert len(gpt.calls) == 3


@pytest.mark.parametrize("code", [errors.INVALID_REQUEST, errors.CONTEXT_LENGTH_EXCEEDED])
async def test_request_errors_never_open_the_breaker_or_hurt_health(code):
    time = FakeTime()
    deps = deployments_with(breaker=dict(failure_threshold=2), health=dict(min_samples=1))
    gpt = FakeAdapter(time, default=code)
    d = make(time, deps, {GPT41: gpt})
    for _ in range(10):
        outs = await handled(d, routed(time, deps, fallbacks=()))
        assert response(outs).error.code == code and of(outs, Alert) == []
    guard = d.guards.get(GPT41)
    assert guard.breaker.state is BreakerState.CLOSED and guard.breaker.consecutive_failures == 0
    assert guard.health.error_rate() == 0.0 and not guard.degraded()
    assert len(gpt.calls) == 10                           # not retried either


@pytest.mark.parametrize("code", [errors.RATE_LIMITED, errors.TIMEOUT, errors.PROVIDER_ERROR,
                                  errors.OVERLOADED, errors.AUTH_ERROR])
async def test_deployment_trouble_counts_for_the_breaker(code):
    time = FakeTime()
    deps = deployments_with(breaker=dict(failure_threshold=2), calls=dict(max_attempts=1))
    d = make(time, deps, {GPT41: FakeAdapter(time, default=code)})
    await handled(d, routed(time, deps))
    outs = await handled(d, routed(time, deps))
    assert [a.rule for a in of(outs, Alert)] == ["breaker_open"]
    assert f"(last: {code})" in of(outs, Alert)[0].message


async def test_breaker_alerts_encode_against_the_alert_schema_on_the_alerts_topic():
    time = FakeTime()
    deps = deployments_with(breaker=dict(failure_threshold=1), calls=dict(max_attempts=1))
    d = make(time, deps, {GPT41: FakeAdapter(time, default=errors.OVERLOADED)})
    outs = await handled(d, routed(time, deps))
    (out,) = [o for o in outs if isinstance(o.event, Alert)]
    codec = Codec()
    decoded = codec.decode(codec.encode(out.event, out.topic), Alert)
    assert decoded == out.event and out.topic == topics.alerts
    assert decoded.at_ms == time.wall_ms() and decoded.labels["model"] == "gpt-4.1"
    uuid.UUID(decoded.alert_id)


async def test_an_open_breaker_half_opens_on_the_alert_tick_without_traffic():
    time = FakeTime()
    deps = deployments_with(breaker=dict(failure_threshold=1, open_s=30), calls=dict(max_attempts=1))
    d = make(time, deps, {GPT41: FakeAdapter(time, default=errors.OVERLOADED)})
    await handled(d, routed(time, deps))
    assert d.alerts() == []
    time.clock.advance(30)
    (out,) = d.alerts()
    assert out.event.rule == "breaker_half_open"
    assert out.event.at_ms == time.wall_ms()
    assert d.alerts() == []


# --- rate limits -----------------------------------------------------------------------------

async def test_limiter_waits_for_a_token_then_calls():
    time = FakeTime()
    deps = deployments_with(limits=dict(rpm=60, request_burst=1, max_wait_s=5))
    gpt = FakeAdapter(time, latency_s=0.0)
    d = make(time, deps, {GPT41: gpt})
    first = await handled(d, routed(time, deps))
    second = await handled(d, routed(time, deps))
    assert response(first).status == response(second).status == "ok"
    assert gpt.calls == [1000.0, 1001.0]                   # 60 rpm: one a second
    assert time.slept == [pytest.approx(1.0)]


async def test_limiter_fails_over_at_once_when_the_wait_would_be_too_long():
    time = FakeTime()
    deps = deployments_with(limits=dict(rpm=6, request_burst=1, max_wait_s=5))
    gpt = FakeAdapter(time, latency_s=0.0)
    d = make(time, deps, {GPT41: gpt})
    await handled(d, routed(time, deps))
    outs = await handled(d, routed(time, deps))
    moved = reroute(outs)
    assert moved.tried[-1].error_code == errors.RATE_LIMITED and moved.tried[-1].attempts == 0
    assert moved.route.deployment == GPT4O
    assert len(gpt.calls) == 1 and time.slept == []       # no pointless wait


async def test_token_estimate_counts_prompt_and_max_tokens_and_is_settled():
    time = FakeTime()
    deps = deployments_with(limits=dict(tpm=1_000, max_wait_s=5))
    gpt = FakeAdapter(time, latency_s=0.0)                 # uses 150 tokens
    d = make(time, deps, {GPT41: gpt})
    outs = await handled(d, routed(time, deps, estimated=300, max_tokens=500))
    assert response(outs).status == "ok"
    assert d.guards.get(GPT41).limiter.tokens.available == pytest.approx(850)
    too_big = await handled(d, routed(time, deps, estimated=900, max_tokens=200))
    assert reroute(too_big).tried[-1].error_code == errors.RATE_LIMITED


async def test_rpm_holds_over_minutes_of_fake_time():
    time = FakeTime()
    deps = deployments_with(limits=dict(rpm=30, request_burst=30, max_wait_s=5))
    gpt = FakeAdapter(time, latency_s=0.05)
    d = make(time, deps, {GPT41: gpt})
    codes = Counter()
    for _ in range(400):                                   # one request every 0.5 s for 200 s
        outs = await handled(d, routed(time, deps))
        codes["ok" if of(outs, Response) else reroute(outs).tried[-1].error_code] += 1
        time.clock.advance(0.5)
    starts = gpt.calls
    for i, t in enumerate(starts):
        assert sum(1 for s in starts[: i + 1] if s > t - 60) <= 30
    assert codes[errors.RATE_LIMITED] > 0 and codes["ok"] == len(starts)
    span_min = (starts[-1] - starts[0]) / 60
    assert len(starts) <= 30 * (span_min + 1)


async def test_concurrency_cap_makes_requests_wait_for_a_slot():
    time = FakeTime(autojump=False)
    deps = deployments_with(limits=dict(max_concurrency=2, max_wait_s=5))
    loop = asyncio.get_running_loop()
    gates = [loop.create_future() for _ in range(3)]
    gpt = FakeAdapter(time, script=gates, latency_s=0.0)
    d = make(time, deps, {GPT41: gpt})
    tasks = [asyncio.create_task(d.handle(routed(time, deps))) for _ in range(3)]
    await settle()
    guard = d.guards.get(GPT41)
    assert len(gpt.calls) == 2 and guard.limiter.in_flight == 2
    assert guard.snapshot()["limits"]["waiting_for_slot"] == 1
    gates[0].set_result("ok")                              # one call ends: the third goes
    await settle()
    assert len(gpt.calls) == 3 and tasks[0].done()
    gates[1].set_result("ok"); gates[2].set_result("ok")
    assert all(response(outs).status == "ok" for outs in await asyncio.gather(*tasks))
    assert guard.limiter.in_flight == 0


async def test_a_full_concurrency_cap_fails_over_after_the_wait_bound():
    time = FakeTime(autojump=False)
    deps = deployments_with(limits=dict(max_concurrency=1, max_wait_s=5))
    gate = asyncio.get_running_loop().create_future()
    gpt = FakeAdapter(time, script=[gate], latency_s=0.0)
    d = make(time, deps, {GPT41: gpt})
    busy = asyncio.create_task(d.handle(routed(time, deps)))
    await settle()
    waiting = asyncio.create_task(d.handle(routed(time, deps)))
    await settle()
    time.advance(4.9)
    await settle()
    assert not waiting.done()
    time.advance(0.1)
    outs = await waiting
    assert reroute(outs).tried[-1].error_code == errors.RATE_LIMITED and len(gpt.calls) == 1
    gate.set_result("ok")
    assert response(await busy).status == "ok"


# --- deadline and timeouts -------------------------------------------------------------------

async def test_deadline_stops_retries_and_ends_in_timeout_when_nothing_is_left():
    time = FakeTime()
    deps = deployments_with(calls=dict(deadline_s=10, max_attempts=5))
    # 1 s per call; Retry-After 4 s: calls at 0 and 5 s, then a retry at 10 s would miss it
    gpt = FakeAdapter(time, default=(errors.RATE_LIMITED, 4.0), latency_s=1.0)
    d = make(time, deps, {GPT41: gpt})
    outs = await handled(d, routed(time, deps, fallbacks=()))
    r = response(outs)
    assert r.error.code == errors.TIMEOUT and "deadline of 10s exceeded" in r.error.message
    assert f"tried {GPT41} ({errors.RATE_LIMITED})" in r.error.message
    assert gpt.calls == [1000.0, 1005.0] and time.slept == [4.0]
    assert of(outs, Usage)[0].attempts == 2


async def test_deadline_cut_fails_over_while_time_remains():
    time = FakeTime()
    deps = deployments_with(calls=dict(deadline_s=10, max_attempts=5))
    d = make(time, deps, {GPT41: FakeAdapter(time, default=(errors.RATE_LIMITED, 30.0), latency_s=1.0)})
    outs = await handled(d, routed(time, deps))
    moved = reroute(outs)
    assert moved.route.deployment == GPT4O and moved.tried[-1].attempts == 1
    assert moved.received_at_ms == time.wall_ms() - 1000    # the deadline travels with it


async def test_a_request_past_its_deadline_gets_timeout_without_a_call():
    time = FakeTime()
    deps = deployments_with(calls=dict(deadline_s=60))
    gpt = FakeAdapter(time)
    d = make(time, deps, {GPT41: gpt})
    outs = await handled(d, routed(time, deps, received_ago_s=61))
    r = response(outs)
    assert r.error.code == errors.TIMEOUT and gpt.calls == [] and r.attempts == 0


async def test_total_timeout_cuts_a_hanging_call():
    time = FakeTime()
    deps = deployments_with(calls=dict(total_timeout_s=0.05, max_attempts=1))
    hang = asyncio.get_running_loop().create_future()      # never answered
    gpt = FakeAdapter(time, script=[hang])
    d = make(time, deps, {GPT41: gpt})
    outs = await handled(d, routed(time, deps, fallbacks=()))
    r = response(outs)
    assert r.error.code == errors.TIMEOUT and "within 0.1s" in r.error.message
    assert d.guards.get(GPT41).breaker.consecutive_failures == 1
    assert d.guards.get(GPT41).limiter.in_flight == 0


async def test_an_attempt_never_outlives_the_request_deadline():
    time = FakeTime()
    deps = deployments_with(calls=dict(total_timeout_s=30, deadline_s=60, max_attempts=1))
    hang = asyncio.get_running_loop().create_future()
    d = make(time, deps, {GPT41: FakeAdapter(time, script=[hang])})
    outs = await asyncio.wait_for(d.handle(routed(time, deps, received_ago_s=59.95, fallbacks=())), 5)
    assert response(outs).error.code == errors.TIMEOUT


# --- failover --------------------------------------------------------------------------------

async def test_context_length_fails_over_only_to_a_larger_window():
    time = FakeTime()
    deps = deployments_with()
    claude = FakeAdapter(time, default=errors.CONTEXT_LENGTH_EXCEEDED)
    d = make(time, deps, {CLAUDE: claude})
    outs = await handled(d, routed(time, deps, CLAUDE, fallbacks=(GPT4O, DEEPSEEK, GEMINI, MINI)))
    moved = reroute(outs)
    assert moved.route.deployment == GEMINI and moved.fallbacks == []
    assert "skipped openai-gpt-4o, deepseek-v3.2, openai-gpt-4o-mini" in moved.route.reason
    assert len(claude.calls) == 1                          # not retried


async def test_context_length_without_a_larger_window_is_terminal():
    time = FakeTime()
    deps = deployments_with()
    d = make(time, deps, {GPT41: FakeAdapter(time, default=errors.CONTEXT_LENGTH_EXCEEDED)})
    outs = await handled(d, routed(time, deps, GPT41, fallbacks=(GPT4O, MINI, CLAUDE)))
    r = response(outs)
    assert r.error.code == errors.CONTEXT_LENGTH_EXCEEDED and r.attempts == 1
    assert "context window not above 1,047,576" in r.error.message


async def test_exhausted_chain_names_every_deployment_and_why():
    time = FakeTime()
    deps = deployments_with(breaker=dict(failure_threshold=1), calls=dict(max_attempts=1))
    adapters = {GPT41: FakeAdapter(time, default=errors.OVERLOADED),
                GPT4O: FakeAdapter(time, default=errors.TIMEOUT)}
    d = make(time, deps, adapters)
    outs = await handled(d, routed(time, deps, fallbacks=(GPT4O,)))
    outs = await handled(d, reroute(outs))
    r = response(outs)
    assert r.error.code == errors.TIMEOUT and r.tried == [GPT41, GPT4O]
    assert f"tried {GPT41} (overloaded), {GPT4O} (timeout)" in r.error.message
    assert [a.subject for a in of(outs, Alert)] == [GPT4O]


async def test_attempts_per_deployment_count_earlier_visits():
    time = FakeTime()
    deps = deployments_with(calls=dict(max_attempts=3))
    gpt = FakeAdapter(time, default=errors.OVERLOADED)
    d = make(time, deps, {GPT41: gpt})
    first = reroute(await handled(d, routed(time, deps, fallbacks=(GPT41,))))   # listed twice
    assert first.route.deployment == GPT41 and len(gpt.calls) == 3
    r = response(await handled(d, first))
    assert len(gpt.calls) == 3 and r.error.code == errors.OVERLOADED


OUTCOMES = st.sampled_from(["ok", errors.RATE_LIMITED, errors.OVERLOADED, errors.TIMEOUT,
                            errors.PROVIDER_ERROR, errors.INVALID_REQUEST,
                            errors.CONTEXT_LENGTH_EXCEEDED, errors.AUTH_ERROR])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts=st.lists(st.lists(OUTCOMES, max_size=12), min_size=3, max_size=3),
       threshold=st.integers(1, 6), max_attempts=st.integers(1, 5), deadline_s=st.integers(3, 60),
       requests=st.integers(1, 6))
def test_every_request_ends_once_within_max_attempts_per_deployment(
        scripts, threshold, max_attempts, deadline_s, requests):
    async def scenario():
        time = FakeTime()
        deps = deployments_with(breaker=dict(failure_threshold=threshold),
                                calls=dict(max_attempts=max_attempts, deadline_s=deadline_s))
        chain = [GPT41, GPT4O, MINI]
        adapters = {dep: FakeAdapter(time, script=s, default=errors.OVERLOADED, latency_s=0.5)
                    for dep, s in zip(chain, scripts)}
        d = make(time, deps, adapters)
        for _ in range(requests):
            before = {dep: len(a.calls) for dep, a in adapters.items()}
            pending, ends, hops = [routed(time, deps, GPT41, fallbacks=chain[1:] + [GPT41])], [], 0
            while pending:
                hops += 1
                assert hops < 20
                outs = await handled(d, pending.pop())
                pending += [o.event for o in outs if o.topic == topics.routed]
                ends += of(outs, Response)
            assert len(ends) == 1
            used = {dep: len(a.calls) - before[dep] for dep, a in adapters.items()}
            assert all(n <= max_attempts for n in used.values())
            assert ends[0].attempts == sum(used.values())
            if ends[0].status == "error":     # the terminal error names each deployment tried
                assert all(f"{dep} (" in ends[0].error.message for dep in ends[0].tried)
    asyncio.run(scenario())


# --- health demotion -------------------------------------------------------------------------

def degrade(d: Dispatcher, dep: str, latency_ms: float = 3000, n: int = 20) -> None:
    guard = d.guards.get(dep)
    for _ in range(n):
        guard.health.record(latency_ms, True)
    assert guard.degraded()


async def test_degraded_deployment_hands_over_to_a_healthy_region_of_its_model():
    time = FakeTime()
    deps = deployments_with(regions=True)
    north = FakeAdapter(time)
    d = make(time, deps, {DEEPSEEK: north, EAST: FakeAdapter(time), SOUTH: FakeAdapter(time)})
    degrade(d, DEEPSEEK)
    outs = await handled(d, routed(time, deps, DEEPSEEK, fallbacks=(SOUTH, EAST, GEMINI)))
    moved = reroute(outs)
    assert moved.route.deployment == EAST and moved.route.rule == "demoted"   # priority 2 < 3
    assert moved.fallbacks == [SOUTH, DEEPSEEK, GEMINI]     # still in the chain, after its peers
    assert [(t.deployment, t.error_code, t.attempts) for t in moved.tried] == [(DEEPSEEK, DEGRADED, 0)]
    assert north.calls == [] and "p95 3000 ms" in moved.route.reason
    served = response(await handled(d, moved))
    assert served.status == "ok" and served.deployment == EAST and served.attempts == 1


async def test_demotion_happens_once_and_skips_known_unhealthy_peers():
    time = FakeTime()
    deps = deployments_with(regions=True)
    d = make(time, deps, {DEEPSEEK: FakeAdapter(time), EAST: FakeAdapter(time), SOUTH: FakeAdapter(time)})
    degrade(d, DEEPSEEK)
    degrade(d, EAST)
    moved = reroute(await handled(d, routed(time, deps, DEEPSEEK, fallbacks=(EAST, SOUTH, GEMINI))))
    assert moved.route.deployment == SOUTH                  # east is degraded too
    degrade(d, SOUTH)
    served = response(await handled(d, moved))               # no second demotion: it is called
    assert served.status == "ok" and served.deployment == SOUTH


async def test_no_demotion_without_a_healthy_peer_of_the_same_model():
    time = FakeTime()
    deps = deployments_with(regions=True)
    north = FakeAdapter(time)
    d = make(time, deps, {DEEPSEEK: north})
    degrade(d, DEEPSEEK)
    outs = await handled(d, routed(time, deps, DEEPSEEK, fallbacks=(GEMINI, MINI)))
    assert response(outs).status == "ok" and len(north.calls) == 1


async def test_open_breaker_fails_over_to_the_best_healthy_region_first():
    time = FakeTime()
    deps = deployments_with(regions=True, breaker=dict(failure_threshold=1), calls=dict(max_attempts=1))
    d = make(time, deps, {DEEPSEEK: FakeAdapter(time, default=errors.OVERLOADED),
                          EAST: FakeAdapter(time), SOUTH: FakeAdapter(time)})
    await handled(d, routed(time, deps, DEEPSEEK, fallbacks=(GEMINI,)))      # opens north
    d.guards.get(EAST).breaker.record_failure()                           # east open too
    moved = reroute(await handled(d, routed(time, deps, DEEPSEEK, fallbacks=(GEMINI, EAST, SOUTH))))
    assert moved.route.deployment == SOUTH and moved.route.rule == "failover"
    assert moved.tried[-1].error_code == errors.BREAKER_OPEN
    assert moved.fallbacks == [GEMINI, EAST]


async def test_health_window_sees_latency_and_errors_of_real_calls():
    time = FakeTime()
    deps = deployments_with(health=dict(min_samples=4, max_error_rate=0.3), calls=dict(max_attempts=1))
    gpt = FakeAdapter(time, script=["ok", "ok", errors.OVERLOADED, errors.OVERLOADED], latency_s=0.4)
    d = make(time, deps, {GPT41: gpt})
    for _ in range(4):
        await handled(d, routed(time, deps))
    view = d.health()["deployments"][GPT41]
    assert view["health"] == {"samples": 4, "p95_ms": pytest.approx(400.0), "error_rate": 0.5,
                              "degraded": True, "max_p95_ms": 1000.0, "max_error_rate": 0.3}
    assert view["breaker"]["state"] == "closed" and view["breaker"]["last_failure"] == "overloaded"
    assert view["limits"]["in_flight"] == 0 and view["limits"]["requests_last_minute"] == 4
    json.dumps(d.health())


async def test_retain_forgets_deployments_whose_partitions_moved():
    time = FakeTime()
    deps = deployments_with(breaker=dict(failure_threshold=1), calls=dict(max_attempts=1))
    d = make(time, deps, {GPT41: FakeAdapter(time, default=errors.OVERLOADED), GPT4O: FakeAdapter(time)})
    await handled(d, routed(time, deps, GPT41, fallbacks=()))
    await handled(d, routed(time, deps, GPT4O, fallbacks=()))
    assert d.retain({GPT4O}) == [GPT41]
    assert d.guards.peek(GPT41) is None and d.guards.peek(GPT4O) is not None
    assert d.guards.get(GPT41).breaker.state is BreakerState.CLOSED     # fresh


# --- the guard on its own ----------------------------------------------------------------------

async def test_guard_refuses_while_open_without_taking_tokens():
    clock = ManualClock()
    guard = DeploymentGuard("x", deployments_with(breaker=dict(failure_threshold=1)).by_id[GPT41].guard,
                            clock)
    guard.breaker.record_failure()
    before = guard.limiter.requests.available

    async def never(_):
        raise AssertionError("must not wait")
    refusal = await guard.acquire(10, 5, never)
    assert isinstance(refusal, Refusal) and refusal.code == errors.BREAKER_OPEN
    assert "open for another 30.0s" in refusal.message
    assert guard.limiter.requests.available == before and guard.limiter.in_flight == 0


async def test_guard_permit_must_end_once():
    guard = DeploymentGuard("x", BASE.by_id[GPT41].guard, ManualClock())
    permit = await guard.acquire(10, 0, asyncio.sleep)
    permit.succeeded(5)
    with pytest.raises(RuntimeError):
        permit.failed(errors.TIMEOUT)


# --- configuration ---------------------------------------------------------------------------

SOURCE = Path(__file__).resolve().parents[2] / "pipeline" / "config" / "deployments.yaml"


def load_edited(tmp_path: Path, old: str, new: str):
    text = SOURCE.read_text()
    assert old in text
    path = tmp_path / "deployments.yaml"
    path.write_text(text.replace(old, new, 1))
    return load_deployments(catalog, path, env={})


def test_shipped_config_carries_domain_figures_and_per_deployment_overrides():
    g = BASE.by_id[GPT41].guard
    assert (g.breaker.failure_threshold, g.breaker.open_s, g.breaker.half_open_probes,
            g.breaker.success_threshold) == (5, 30.0, 3, 2)
    assert (g.health.max_p95_ms, g.health.max_error_rate) == (1000.0, 0.05)
    assert BASE.by_id[CLAUDE].guard.health.max_p95_ms == 2500.0
    assert BASE.by_id[CLAUDE].guard.breaker == g.breaker
    assert BASE.calls.deadline_s == 60.0 and BASE.calls.total_timeout_s == 30.0


@pytest.mark.parametrize("old, new, key", [
    ("    success_threshold: 2 ", "    success_threshold: 4 ", "resilience"),
    ("    rpm: 10000 ", "    rpm: 0 ", "resilience.limits.rpm"),
    ("    max_wait_s: 5 ", "    max_wait_s: -1 ", "resilience.limits.max_wait_s"),
    ("  deadline_s: 60 ", "  deadline_s: 0 ", "calls.deadline_s"),
    ("        max_p95_ms: 2500", "        max_p95: 2500", "deployments[3].resilience.health.max_p95"),
    ("resilience:\n  breaker:", "resilience:\n  breakers:", "resilience.breakers"),
])
def test_bad_resilience_settings_name_the_key(tmp_path, old, new, key):
    with pytest.raises(ConfigError) as info:
        load_edited(tmp_path, old, new)
    assert info.value.key == key and "deployments.yaml" in str(info.value)


# --- Faust wiring: the health view and the rebalance hook ---------------------------------------

async def test_worker_serves_guard_state_and_drops_guards_after_a_rebalance(monkeypatch):
    import faust
    from aiohttp.test_utils import TestClient, TestServer
    from faust.types import TP

    from pipeline.agents.dispatch import register_dispatch
    from pipeline.outputs import Emitter
    from pipeline.runtime import build_runtime
    from pipeline.settings import Settings

    for dep in BASE.by_id.values():
        monkeypatch.setenv(dep.api_key_env, "sk-test-0123456789abcdef")
    runtime = build_runtime(Settings())
    app = faust.App("dispatch-view-test", broker="kafka://127.0.0.1:1", store="memory://",
                    autodiscover=False, key_serializer="raw", value_serializer="raw")

    async def send(*_):
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    source = app.topic(topics.routed, key_serializer="raw", value_serializer="raw")
    dispatcher = register_dispatch(app, runtime, source, Emitter(send, runtime.codec))
    dispatcher.guards.get(GPT41).breaker.record_failure()
    client = TestClient(TestServer(await app.web.wsgi()))
    await client.start_server()
    try:
        body = await (await client.get("/llmpipe/dispatch/health/")).json()
        view = body["deployments"][GPT41]
        assert view["breaker"] == {"state": "closed", "consecutive_failures": 1, "probes_in_flight": 0,
                                   "retry_after_s": 0.0, "last_failure": ""}
        assert view["limits"]["in_flight"] == 0 and view["limits"]["rpm"] == 10000
        assert view["health"]["p95_ms"] is None and view["health"]["degraded"] is False
        await app.on_partitions_assigned.send({TP(topics.routed, 0)})
        body = await (await client.get("/llmpipe/dispatch/health/")).json()
        assert body["deployments"] == {}       # not seen on an owned partition: starts fresh
    finally:
        await client.close()
        for adapter in dispatcher.adapters.values():
            await adapter.aclose()


# --- hedging ----------------------------------------------------------------------------------

def interactive(r: RoutedRequest, max_latency_ms: int | None = 500) -> RoutedRequest:
    hints = dataclasses.replace(r.request.hints, priority="interactive", max_latency_ms=max_latency_ms)
    return r.replace(request=r.request.replace(hints=hints))


async def test_a_slow_interactive_call_is_hedged_first_answer_wins_both_are_billed():
    time = FakeTime(autojump=False)
    deps = deployments_with(calls=dict(hedge_after_ms=400))
    hang = asyncio.get_running_loop().create_future()
    gpt, gpt4o = FakeAdapter(time, script=[hang]), FakeAdapter(time)
    d = make(time, deps, {GPT41: gpt, GPT4O: gpt4o, MINI: FakeAdapter(time)})
    req = interactive(routed(time, deps, estimated=1000))
    hedges = REGISTRY.get_sample_value("llmpipe_hedges_total", {"deployment": GPT41}) or 0
    task = asyncio.create_task(d.handle(req))
    await settle()
    assert len(gpt.calls) == 1 and gpt4o.calls == []          # hedge not yet due
    time.advance(0.4)
    await settle()
    outs = await task
    assert len(gpt4o.calls) == 1 and hang.cancelled()          # the slow call was cancelled
    resp, (usage,) = response(outs), of(outs, Usage)
    won = catalog.cost_nanos("gpt-4o", 100, 50)
    lost = catalog.cost_nanos("gpt-4.1", 1000, 0)             # cancelled: estimated prompt
    assert resp.status == "ok" and resp.model == "gpt-4o" and resp.cost_nanos == won + lost
    assert resp.tried == [GPT41, GPT4O] and usage.cost_nanos == won + lost
    assert (usage.route_rule, usage.fallbacks, usage.attempts) == ("hedge", 0, 2)
    assert REGISTRY.get_sample_value("llmpipe_hedges_total",
                                     {"deployment": GPT41}) == hedges + 1   # for /metrics


async def test_no_hedge_when_the_answer_comes_in_time_or_the_request_is_not_latency_critical():
    time = FakeTime()
    deps = deployments_with(calls=dict(hedge_after_ms=400))
    gpt, gpt4o = FakeAdapter(time, latency_s=0.1), FakeAdapter(time)
    d = make(time, deps, {GPT41: gpt, GPT4O: gpt4o})
    fast = await handled(d, interactive(routed(time, deps)))
    assert response(fast).model == "gpt-4.1" and gpt4o.calls == []
    time2 = FakeTime(autojump=False)
    slow = FakeAdapter(time2, script=[asyncio.get_running_loop().create_future()])
    d2 = make(time2, deps, {GPT41: slow, GPT4O: FakeAdapter(time2)})
    task = asyncio.create_task(d2.handle(interactive(routed(time2, deps), max_latency_ms=None)))
    time2.advance(1.0)
    await settle()
    assert not task.done() and len(d2.adapters[GPT4O].calls) == 0     # standard traffic: no hedge
    task.cancel()


async def test_when_both_hedged_calls_fail_the_chain_continues_past_both():
    time = FakeTime(autojump=False)
    deps = deployments_with(calls=dict(hedge_after_ms=100, max_attempts=1))
    slow = asyncio.get_running_loop().create_future()
    d = make(time, deps, {GPT41: FakeAdapter(time, script=[slow]),
                          GPT4O: FakeAdapter(time, default=errors.RATE_LIMITED),
                          MINI: FakeAdapter(time)})
    task = asyncio.create_task(d.handle(interactive(routed(time, deps))))
    await settle()
    time.advance(0.1)                                  # hedge to gpt-4o, which is rate limited
    await settle()
    slow.set_result(errors.OVERLOADED)                 # then the slow call fails too
    outs = await task
    moved = reroute(outs)
    assert moved.route.deployment == MINI and moved.fallbacks == []
    assert sorted((t.deployment, t.error_code) for t in moved.tried) == [
        (GPT41, errors.OVERLOADED), (GPT4O, errors.RATE_LIMITED)]


async def test_a_providers_retry_after_reaches_the_terminal_error():
    """The gateway turns it into a Retry-After header on its 429."""
    time = FakeTime()
    deps = deployments_with()
    gpt = FakeAdapter(time, default=(errors.RATE_LIMITED, 2.0))
    outs = await make(time, deps, {GPT41: gpt}).handle(routed(time, deps, fallbacks=()))
    error = response(outs).error
    assert error.code == errors.RATE_LIMITED and error.retry_after_ms == 2000
