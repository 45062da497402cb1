"""One deployment's protection in the dispatch worker: its circuit breaker, rate limiter
(RPM, TPM, concurrency) and health window behind a single object the dispatcher asks
before every provider call and tells the outcome of after it.

Where this state lives: in memory, in the dispatch worker that owns the deployment's
``llm.routed`` partition (the topic is keyed by deployment id), so one process is the only
writer and the limits hold however many workers run. :meth:`DeploymentGuard.export` and
:meth:`DeploymentGuard.restore` carry the breaker and the limiter's levels to the worker a
rebalance hands the partition to (pipeline/agents/guard_state.py); the health window and
the calls in flight start fresh there."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from pipeline import errors
from pipeline.clock import Clock, now_ms
from pipeline.events.models import Alert
from pipeline.resilience.breaker import BreakerState, CircuitBreaker, Transition
from pipeline.resilience.bucket import Admission, DeploymentLimiter
from pipeline.resilience.health import HealthWindow

Sleep = Callable[[float], Awaitable[None]]

# Failures that say something about the deployment (overloaded, down, slow, refusing our
# key) count for its breaker and health. A request the provider refused for its own sake
# (invalid_request, context_length_exceeded) is no evidence either way.
TRIPS_BREAKER = frozenset({errors.RATE_LIMITED, errors.TIMEOUT, errors.PROVIDER_ERROR,
                           errors.OVERLOADED, errors.AUTH_ERROR})


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int      # consecutive failures that open it
    open_s: float               # how long it stays OPEN before probing
    half_open_probes: int       # probe calls admitted at once while HALF_OPEN
    success_threshold: int      # probe successes that close it


@dataclass(frozen=True)
class LimitSettings:
    rpm: int
    tpm: int
    max_concurrency: int
    max_wait_s: float                  # longest a request waits for the limiter, then fails over
    request_burst: int | None = None   # None: ten seconds' worth (ceil(rpm / 6))


@dataclass(frozen=True)
class HealthSettings:
    window_s: float
    max_p95_ms: float
    max_error_rate: float
    min_samples: int
    max_samples: int


@dataclass(frozen=True)
class GuardSettings:
    breaker: BreakerSettings
    limits: LimitSettings
    health: HealthSettings


@dataclass(frozen=True)
class Refusal:
    """Why no call may be made now: ``breaker_open`` or ``rate_limited``."""
    code: str
    message: str


class Permit:
    """One admitted provider call. It must end in exactly one of :meth:`succeeded`,
    :meth:`failed` or :meth:`abandoned`, which free its concurrency slot and probe slot."""

    def __init__(self, guard: DeploymentGuard, admission: Admission):
        self.guard = guard
        self.admission = admission
        self.started_at = guard.clock.now()
        self.ended = False
        guard.changes += 1

    def latency_ms(self) -> float:
        return max(0.0, (self.guard.clock.now() - self.started_at) * 1000)

    def succeeded(self, tokens_used: int) -> None:
        g = self._end()
        g.breaker.record_success()
        g.health.record(self.latency_ms(), True)
        self._release(tokens_used)

    def failed(self, code: str) -> None:
        g = self._end()
        if code in TRIPS_BREAKER:
            g.breaker.record_failure()
            g.health.record(self.latency_ms(), False)
            g.last_failure = code
        else:
            g.breaker.record_cancelled()
        self._release(None)

    def abandoned(self) -> None:
        """The call ended without a verdict (cancelled, or a bug in the adapter)."""
        self._end().breaker.record_cancelled()
        self._release(None)

    def _end(self) -> DeploymentGuard:
        if self.ended:
            raise RuntimeError("permit already ended")
        self.ended = True
        return self.guard

    def _release(self, tokens_used: int | None) -> None:
        self.admission.release(tokens_used)
        self.guard.changes += 1
        self.guard._slot_freed()


class DeploymentGuard:
    def __init__(self, deployment: str, settings: GuardSettings, clock: Clock):
        self.deployment = deployment
        self.settings = settings
        self.clock = clock
        b, lim, h = settings.breaker, settings.limits, settings.health
        self.breaker = CircuitBreaker(b.failure_threshold, b.open_s, b.half_open_probes,
                                      b.success_threshold, deployment=deployment, clock=clock)
        self.limiter = DeploymentLimiter(lim.rpm, lim.tpm, lim.max_concurrency, clock,
                                         request_burst=lim.request_burst)
        self.health = HealthWindow(h.window_s, h.max_p95_ms, h.max_error_rate, h.min_samples,
                                   clock=clock, max_samples=h.max_samples)
        self.last_failure = ""
        self._slot_waiters: deque[asyncio.Future] = deque()
        self.changes = 0        # calls admitted + ended: unchanged means nothing to export

    def export(self, wall_ms: int) -> dict[str, Any]:
        """Breaker and limiter state as of ``wall_ms`` (epoch ms), JSON-ready."""
        return {"at_ms": wall_ms, "breaker": self.breaker.export(),
                "limits": self.limiter.export()}

    def restore(self, state: dict[str, Any], wall_ms: int) -> None:
        """Continue from what another worker exported; the time since is refill and
        cool-down. Wall clocks of workers are assumed in step (NTP)."""
        elapsed_s = max(0.0, (wall_ms - int(state["at_ms"])) / 1000)
        self.breaker.restore(state["breaker"], elapsed_s)
        self.limiter.restore(state["limits"], elapsed_s)

    def admits_calls(self) -> bool:
        return self.breaker.can_admit()

    def degraded(self) -> bool:
        return self.health.demoted()

    def healthy(self) -> bool:
        return self.admits_calls() and not self.degraded()

    async def acquire(self, tokens: int, max_wait_s: float, sleep: Sleep) -> Permit | Refusal:
        """Admit one call estimated at ``tokens`` (prompt + max output), waiting in the
        caller's task up to ``max_wait_s`` for the limiter. An OPEN breaker refuses at once."""
        if not self.breaker.can_admit():
            return self._breaker_refusal()
        give_up = self.clock.now() + max(0.0, max_wait_s)
        while True:
            admission = self.limiter.try_acquire(tokens)
            if admission is not None:
                break
            remaining = give_up - self.clock.now()
            if self.limiter.in_flight >= self.limiter.max_concurrency:
                if remaining <= 0 or not await self._wait_for_slot(remaining, sleep):
                    return Refusal(errors.RATE_LIMITED,
                                   f"{self.deployment}: all {self.limiter.max_concurrency} "
                                   f"concurrent call slots busy for {max_wait_s:g}s")
                continue
            wait = self.limiter.wait_time(tokens)
            if math.isinf(wait):
                return Refusal(errors.RATE_LIMITED,
                               f"{self.deployment}: {tokens} estimated tokens exceed its "
                               f"token allowance ({self.limiter.tokens.burst:g})")
            if wait > remaining:
                return Refusal(errors.RATE_LIMITED,
                               f"{self.deployment}: rate limit (rpm {self.limiter.rpm}, tpm "
                               f"{self.limiter.tpm}) frees room in {wait:.1f}s, over the "
                               f"{max_wait_s:g}s wait allowed")
            await sleep(max(wait, 0.001))
        if not self.breaker.allow():       # it opened, or probes filled, while we waited
            admission.release(0)
            self._slot_freed()
            return self._breaker_refusal()
        return Permit(self, admission)

    def snapshot(self) -> dict[str, Any]:
        """The guard's state for the worker's health view (JSON-ready)."""
        br, lim, h = self.breaker, self.limiter, self.health
        p95 = h.p95()
        return {
            "breaker": {"state": br.state.value, "consecutive_failures": br.consecutive_failures,
                        "probes_in_flight": br.probes_in_flight,
                        "retry_after_s": round(br.retry_after(), 3),
                        "last_failure": self.last_failure},
            "limits": {"request_tokens": round(lim.requests.available, 3),
                       "token_tokens": round(lim.tokens.available, 3),
                       "requests_last_minute": lim.requests_last_minute, "rpm": lim.rpm,
                       "tpm": lim.tpm, "in_flight": lim.in_flight,
                       "max_concurrency": lim.max_concurrency,
                       "waiting_for_slot": sum(1 for w in self._slot_waiters if not w.done())},
            "health": {"samples": len(h), "p95_ms": round(p95, 1) if p95 is not None else None,
                       "error_rate": round(h.error_rate(), 4), "degraded": h.demoted(),
                       "max_p95_ms": h.max_p95_ms, "max_error_rate": h.max_error_rate},
        }

    def _breaker_refusal(self) -> Refusal:
        br = self.breaker
        if br.state is BreakerState.OPEN:
            detail = f"open for another {br.retry_after():.1f}s"
        else:
            detail = f"half-open with {br.probes_in_flight} probe call(s) in flight"
        return Refusal(errors.BREAKER_OPEN, f"{self.deployment}: circuit breaker {detail}")

    async def _wait_for_slot(self, timeout_s: float, sleep: Sleep) -> bool:
        """Wait until a concurrency slot is released (True) or ``timeout_s`` passes."""
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        timer = asyncio.ensure_future(sleep(timeout_s))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            woken = waiter.done() and not waiter.cancelled()
            if not waiter.done():
                waiter.cancel()
            try:
                self._slot_waiters.remove(waiter)
            except ValueError:
                pass
        if not woken and self.limiter.in_flight < self.limiter.max_concurrency:
            self._slot_freed()      # a wake-up we did not use goes to the next waiter
        return woken

    def _slot_freed(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class Guards:
    """The guards of the deployments this worker dispatches to, created on first use —
    from the state ``carried(deployment)`` returns, when it returns one."""

    def __init__(self, settings_for: Callable[[str], GuardSettings], clock: Clock):
        self._settings_for = settings_for
        self.clock = clock
        self._guards: dict[str, DeploymentGuard] = {}
        self.carried: Callable[[str], dict[str, Any] | None] = lambda deployment: None

    def get(self, deployment: str) -> DeploymentGuard:
        guard = self._guards.get(deployment)
        if guard is None:
            guard = self._guards[deployment] = DeploymentGuard(
                deployment, self._settings_for(deployment), self.clock)
            state = self.carried(deployment)
            if state is not None:
                guard.restore(state, now_ms())
        return guard

    def items(self) -> list[tuple[str, DeploymentGuard]]:
        return list(self._guards.items())

    def peek(self, deployment: str) -> DeploymentGuard | None:
        """The guard if this worker has one (it has dispatched there), else None."""
        return self._guards.get(deployment)

    def retain(self, deployments: Iterable[str]) -> list[str]:
        """Forget every guard but those of ``deployments`` (after a rebalance took the
        others' partitions away); returns the ids forgotten. Pending transitions of a
        forgotten guard are dropped with it."""
        keep = set(deployments)
        gone = [d for d in self._guards if d not in keep]
        for d in gone:
            del self._guards[d]
        return gone

    def drain_transitions(self) -> list[tuple[DeploymentGuard, Transition]]:
        """Every breaker transition not yet reported, each exactly once. Reading the state
        first lets an OPEN breaker whose time is up move to HALF_OPEN even without traffic."""
        drained = []
        for guard in self._guards.values():
            guard.breaker.state
            drained += [(guard, t) for t in guard.breaker.drain_transitions()]
        return drained

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {d: g.snapshot() for d, g in sorted(self._guards.items())}


# --- breaker transitions as alert events ----------------------------------------------------

BREAKER_RULES = {BreakerState.OPEN: "breaker_open", BreakerState.HALF_OPEN: "breaker_half_open",
                 BreakerState.CLOSED: "breaker_closed"}
_SEVERITY = {BreakerState.OPEN: "critical", BreakerState.HALF_OPEN: "warning",
             BreakerState.CLOSED: "info"}


def breaker_alert(guard: DeploymentGuard, t: Transition, at_ms: int, alert_id: uuid.UUID,
                  labels: dict[str, str] | None = None) -> Alert:
    """The Alert event of one breaker transition: ``breaker_open`` and ``breaker_half_open``
    fire, ``breaker_closed`` resolves; subject is the deployment, value the failures that
    caused the transition."""
    b = guard.settings.breaker
    if t.to_state is BreakerState.OPEN:
        cause = (f"{t.failures} consecutive failures" if t.from_state is BreakerState.CLOSED
                 else "a half-open probe failed")
        last = f" (last: {guard.last_failure})" if guard.last_failure else ""
        message = (f"circuit breaker of {t.deployment} opened after {cause}{last}; its "
                   f"requests fail over without a provider call for {b.open_s:g}s")
        threshold = b.failure_threshold if t.from_state is BreakerState.CLOSED else 1
        window = f"{b.open_s:g}s"
    elif t.to_state is BreakerState.HALF_OPEN:
        message = (f"circuit breaker of {t.deployment} is half-open after {b.open_s:g}s: up "
                   f"to {b.half_open_probes} probe calls, {b.success_threshold} successes close it")
        threshold, window = b.success_threshold, ""
    else:
        message = (f"circuit breaker of {t.deployment} closed after {b.success_threshold} "
                   f"successful probes; traffic flows normally")
        threshold, window = b.success_threshold, ""
    return Alert(
        alert_id=str(alert_id), rule=BREAKER_RULES[t.to_state],
        state="resolved" if t.to_state is BreakerState.CLOSED else "firing",
        value=str(t.failures), threshold=str(threshold), at_ms=at_ms,
        severity=_SEVERITY[t.to_state], tenant="*", subject=t.deployment, window=window,
        message=message,
        labels={"deployment": t.deployment, "from": t.from_state.value, "to": t.to_state.value,
                "reason": t.reason, **(labels or {})})
