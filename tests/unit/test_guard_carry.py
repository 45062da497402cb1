"""Guard state handed from one worker to the next (a rebalance): the limits hold across the
handover as if one limiter had run throughout, and the breaker continues where it was."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings, strategies as st

from pipeline.clock import ManualClock, now_ms
from pipeline.resilience.breaker import BreakerState, CircuitBreaker
from pipeline.resilience.bucket import DeploymentLimiter
from pipeline.resilience.guard import BreakerSettings, DeploymentGuard, GuardSettings, \
    Guards, HealthSettings, LimitSettings


def handed_over(limiter: DeploymentLimiter, gap_s: float, start: float, **kw):
    """A new limiter on a clock of its own (another process), continuing from ``limiter``'s
    state exported ``gap_s`` seconds earlier; the state goes through JSON, as in the table."""
    clock = ManualClock(start)
    new = DeploymentLimiter(clock=clock, **kw)
    new.restore(json.loads(json.dumps(limiter.export())), gap_s)
    return new, clock


@settings(max_examples=150, deadline=None)
@given(rpm=st.integers(1, 30), burst_share=st.floats(0.0, 1.0),
       steps=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 5), st.booleans(),
                                st.integers(0, 3_000)), min_size=1, max_size=150))
def test_limits_hold_across_any_number_of_handovers(rpm, burst_share, steps):
    """Bursts of attempts at arbitrary gaps; at some steps the deployment moves to another
    worker after a pause. Over all workers together no 60 s window holds more than rpm
    grants and no interval T more than burst + T * rpm / 60."""
    burst = max(1, round(rpm * burst_share))
    kw = dict(rpm=rpm, tpm=10**9, max_concurrency=10**6, request_burst=burst)
    clock = ManualClock(1_000.0)
    limiter, now, grants = DeploymentLimiter(clock=clock, **kw), 0.0, []
    for gap_ms, attempts, move, pause_ms in steps:
        if move:
            limiter, clock = handed_over(limiter, pause_ms / 1000, start=float(len(grants)), **kw)
            now += pause_ms / 1000
        clock.advance(gap_ms / 1000)
        now += gap_ms / 1000
        for _ in range(attempts):
            admission = limiter.try_acquire(1)
            if admission is not None:
                grants.append(now)
                admission.release(1)
    for i, t in enumerate(grants):
        assert sum(1 for g in grants[: i + 1] if g > t - 60.0) <= rpm
        for j in range(i, len(grants)):
            assert j - i + 1 <= burst + (grants[j] - t) * rpm / 60 + 1e-6


def test_a_fresh_limiter_would_break_the_envelope():
    """The property above is not vacuous: without the state, the next worker's full bucket
    is a second burst."""
    kw = dict(rpm=60, tpm=10**9, max_concurrency=10, request_burst=5)
    old = DeploymentLimiter(clock=ManualClock(), **kw)
    assert sum(old.try_acquire(1) is not None for _ in range(10)) == 5
    fresh = DeploymentLimiter(clock=ManualClock(), **kw)
    assert sum(fresh.try_acquire(1) is not None for _ in range(10)) == 5
    carried, _ = handed_over(old, 0.0, start=0.0, **kw)
    assert sum(carried.try_acquire(1) is not None for _ in range(10)) == 0


def test_tokens_and_debt_are_carried_and_refill_during_the_pause():
    kw = dict(rpm=1000, tpm=600, max_concurrency=10)
    old = DeploymentLimiter(clock=ManualClock(), **kw)
    old.try_acquire(100).release(700)            # used 600 more than estimated: debt
    assert old.tokens.available == -100
    carried, _ = handed_over(old, 5.0, start=50.0, **kw)   # tpm 600 refills 10/s
    assert carried.tokens.available == -50
    assert carried.requests_last_minute == 1


def test_minute_count_keeps_calls_until_they_are_a_minute_old():
    kw = dict(rpm=3, tpm=10**6, max_concurrency=10, request_burst=3)
    clock = ManualClock()
    old = DeploymentLimiter(clock=clock, **kw)
    for _ in range(3):
        old.try_acquire(1).release(1)
    clock.advance(30.4)
    carried, new_clock = handed_over(old, 10.0, start=7.0, **kw)
    assert carried.try_acquire(1) is None        # the three calls are 40.4 s old
    new_clock.advance(19.0)                      # 59.4 s (ages round down: still in)
    assert carried.try_acquire(1) is None
    new_clock.advance(1.0)
    assert carried.try_acquire(1) is not None


def test_open_breaker_stays_open_for_the_rest_of_its_time_without_a_new_alert():
    clock = ManualClock()
    old = CircuitBreaker(failure_threshold=2, open_s=30.0, clock=clock)
    old.record_failure()
    old.record_failure()
    clock.advance(10.0)
    state = old.export()
    new_clock = ManualClock(500.0)
    new = CircuitBreaker(failure_threshold=2, open_s=30.0, clock=new_clock)
    new.restore(state, 5.0)
    assert new.state is BreakerState.OPEN and not new.allow()
    assert abs(new.retry_after() - 15.0) < 1e-9
    assert new.drain_transitions() == []
    new_clock.advance(15.0)
    assert new.state is BreakerState.HALF_OPEN and new.allow()


def test_consecutive_failures_carry_while_closed():
    old = CircuitBreaker(failure_threshold=3, clock=ManualClock())
    old.record_failure()
    old.record_failure()
    new = CircuitBreaker(failure_threshold=3, clock=ManualClock())
    new.restore(old.export(), 0.0)
    new.record_failure()
    assert new.state is BreakerState.OPEN


SETTINGS = GuardSettings(BreakerSettings(5, 30.0, 3, 2),
                         LimitSettings(rpm=60, tpm=10_000, max_concurrency=4, max_wait_s=0),
                         HealthSettings(60.0, 10_000.0, 0.5, 10, 100))


def test_guards_restore_what_carried_returns_and_count_changes():
    old = DeploymentGuard("dep-a", SETTINGS, ManualClock())
    assert old.changes == 0
    permit = asyncio.run(old.acquire(10, 0, asyncio.sleep))
    permit.succeeded(10)
    assert old.changes == 2                      # admitted, ended: worth writing again
    for _ in range(9):
        old.limiter.try_acquire(10)
    guards = Guards(lambda dep: SETTINGS, ManualClock())
    exported = old.export(now_ms())
    guards.carried = lambda dep: exported if dep == "dep-a" else None
    assert old.limiter.requests_last_minute == 5            # 1 + 4 (max_concurrency)
    assert guards.get("dep-a").limiter.requests_last_minute == 5
    assert guards.get("dep-b").limiter.requests_last_minute == 0
    assert [d for d, _ in guards.items()] == ["dep-a", "dep-b"]
