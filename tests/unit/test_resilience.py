"""Breaker, buckets, limiter and health windows, driven by a manual clock: no sleeps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from pipeline.resilience.breaker import BreakerState, CircuitBreaker, Transition
from pipeline.resilience.bucket import DeploymentLimiter, TokenBucket
from pipeline.clock import ManualClock, MonotonicClock
from pipeline.resilience.health import HealthWindow, percentile, rank

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


# --- clock -------------------------------------------------------------------------------

def test_manual_clock_moves_only_forward():
    clock = ManualClock(10.0)
    assert clock.advance(2.5) == 12.5 and clock.now() == 12.5
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_monotonic_clock_does_not_go_back():
    clock = MonotonicClock()
    a = clock.now()
    assert clock.now() >= a


# --- circuit breaker ---------------------------------------------------------------------

def _breaker(clock, **kw):
    return CircuitBreaker(deployment="openai-east", clock=clock, **kw)


def test_breaker_opens_after_exactly_threshold_consecutive_failures():
    clock = ManualClock()
    br = _breaker(clock)                         # DOMAIN defaults: 5 failures
    for _ in range(4):
        br.record_failure()
        assert br.state is CLOSED and br.allow()
    br.record_failure()
    assert br.state is OPEN
    assert not br.allow()


def test_success_in_between_resets_the_failure_count():
    br = _breaker(ManualClock(), failure_threshold=3)
    for _ in range(5):
        br.record_failure(); br.record_failure(); br.record_success()
    assert br.state is CLOSED
    br.record_failure(); br.record_failure(); br.record_failure()
    assert br.state is OPEN


def test_open_breaker_rejects_for_open_s_then_half_opens():
    clock = ManualClock()
    br = _breaker(clock, failure_threshold=1, open_s=30.0)
    br.record_failure()
    assert br.retry_after() == 30.0
    clock.advance(29.5)
    assert br.state is OPEN and not br.allow()
    assert br.retry_after() == pytest.approx(0.5)
    clock.advance(0.5)
    assert br.retry_after() == 0.0
    assert br.state is HALF_OPEN and br.allow()


def test_half_open_admits_at_most_n_probes_in_flight():
    clock = ManualClock()
    br = _breaker(clock, failure_threshold=1, open_s=10, half_open_probes=3, success_threshold=3)
    br.record_failure(); clock.advance(10)
    assert [br.allow() for _ in range(5)] == [True, True, True, False, False]
    br.record_cancelled()                       # a probe ends without a verdict: slot frees
    assert br.allow() and not br.allow()


def test_can_admit_answers_like_allow_without_taking_a_probe_slot():
    clock = ManualClock()
    br = _breaker(clock, failure_threshold=1, open_s=10, half_open_probes=2, success_threshold=2)
    assert br.can_admit()
    br.record_failure()
    assert not br.can_admit()
    clock.advance(10)
    assert all(br.can_admit() for _ in range(5)) and br.probes_in_flight == 0
    assert br.allow() and br.allow()
    assert not br.can_admit() and br.probes_in_flight == 2


def test_half_open_closes_after_success_threshold_successes():
    clock = ManualClock()
    br = _breaker(clock, failure_threshold=1, open_s=10, half_open_probes=3, success_threshold=2)
    br.record_failure(); clock.advance(10)
    assert br.allow() and br.allow()
    br.record_success()
    assert br.state is HALF_OPEN
    br.record_success()
    assert br.state is CLOSED
    assert all(br.allow() for _ in range(10))   # closed: no probe cap any more


def test_one_failure_in_half_open_reopens_for_a_full_open_s():
    clock = ManualClock()
    br = _breaker(clock, failure_threshold=1, open_s=10)
    br.record_failure(); clock.advance(10)
    assert br.allow() and br.allow()
    br.record_success()
    br.record_failure()
    assert br.state is OPEN and not br.allow()
    assert br.retry_after() == 10.0
    clock.advance(9.9)
    assert br.state is OPEN


def test_closed_count_starts_fresh_after_recovery():
    clock = ManualClock()
    br = _breaker(clock, failure_threshold=2, open_s=5, half_open_probes=1, success_threshold=1)
    br.record_failure(); br.record_failure(); clock.advance(5)
    assert br.allow(); br.record_success()
    br.record_failure()
    assert br.state is CLOSED                   # one failure after closing is not two


def test_transitions_are_listed_with_reasons_and_drained_once():
    clock = ManualClock(100.0)
    br = _breaker(clock, failure_threshold=2, open_s=30, half_open_probes=3, success_threshold=2)
    br.record_failure(); br.record_failure()            # -> OPEN at 100
    clock.advance(30); br.allow()                         # -> HALF_OPEN at 130
    br.record_failure()                                   # -> OPEN at 130
    clock.advance(30); br.allow(); br.allow()             # -> HALF_OPEN at 160
    br.record_success(); br.record_success()              # -> CLOSED at 160
    assert br.drain_transitions() == [
        Transition("openai-east", CLOSED, OPEN, 100.0, "consecutive_failures=2", failures=2),
        Transition("openai-east", OPEN, HALF_OPEN, 130.0, "open_elapsed"),
        Transition("openai-east", HALF_OPEN, OPEN, 130.0, "probe_failed", failures=1),
        Transition("openai-east", OPEN, HALF_OPEN, 160.0, "open_elapsed"),
        Transition("openai-east", HALF_OPEN, CLOSED, 160.0, "probes_succeeded=2"),
    ]
    assert br.drain_transitions() == []


def test_late_results_while_open_change_nothing():
    clock = ManualClock()
    br = _breaker(clock, failure_threshold=1, open_s=10)
    br.record_failure()
    br.record_success(); br.record_failure()
    assert br.state is OPEN and br.retry_after() == 10.0
    assert len(br.drain_transitions()) == 1


@pytest.mark.parametrize("kw", [dict(failure_threshold=0), dict(open_s=-1),
                                dict(half_open_probes=0), dict(success_threshold=4),
                                dict(success_threshold=0)])
def test_breaker_rejects_impossible_configuration(kw):
    with pytest.raises(ValueError):
        CircuitBreaker(clock=ManualClock(), **kw)


# --- token bucket ------------------------------------------------------------------------

def test_bucket_starts_full_and_refills_at_rate_up_to_burst():
    clock = ManualClock()
    b = TokenBucket(rate_per_s=2.0, burst=4, clock=clock)
    assert [b.try_take() for _ in range(5)] == [True] * 4 + [False]
    clock.advance(0.5)
    assert b.available == 1.0
    assert b.try_take() and not b.try_take()
    clock.advance(100)
    assert b.available == 4.0                    # capped at burst, not 200


def test_bucket_wait_time_is_exact():
    clock = ManualClock()
    b = TokenBucket(rate_per_s=4.0, burst=8, clock=clock)
    assert b.try_take(8)
    assert b.wait_time(3) == 0.75
    clock.advance(0.5)
    assert b.wait_time(3) == 0.25
    assert not b.try_take(3)
    clock.advance(0.25)
    assert b.wait_time(3) == 0.0 and b.try_take(3)
    assert b.wait_time(9) == math.inf            # more than the bucket can ever hold
    assert b.wait_time(0) == 0.0


@given(rate=st.integers(1, 1000), burst=st.integers(1, 1000), n=st.integers(1, 1000),
       drained=st.integers(0, 1000))
def test_bucket_grants_right_after_waiting_wait_time(rate, burst, n, drained):
    clock = ManualClock()
    b = TokenBucket(rate / 7, burst, clock)
    b.try_take(min(drained, burst))
    wait = b.wait_time(n)
    assert wait >= 0
    if n > burst:
        assert wait == math.inf and not b.try_take(n)
        return
    if wait > 0:
        assert not b.try_take(n)
    clock.advance(wait)
    assert b.try_take(n)


def test_refund_is_capped_at_burst():
    clock = ManualClock()
    b = TokenBucket(rate_per_s=1.0, burst=10, clock=clock)
    assert b.try_take(3)
    b.refund(100)
    assert b.available == 10.0
    assert b.try_take(6)
    b.refund(2)
    assert b.available == 6.0


def test_charge_creates_debt_that_refill_pays_off_first():
    clock = ManualClock()
    b = TokenBucket(rate_per_s=1.0, burst=5, clock=clock)
    b.charge(8)
    assert b.available == -3.0 and not b.try_take(1)
    assert b.wait_time(1) == 4.0


def test_negative_amounts_are_rejected():
    b = TokenBucket(1.0, 1, ManualClock())
    for op in (b.try_take, b.wait_time, b.refund, b.charge):
        with pytest.raises(ValueError):
            op(-1)


# --- deployment limiter ------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(rpm=st.integers(1, 30),
       burst_share=st.floats(0.0, 1.0),
       steps=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 5)),
                      min_size=1, max_size=200))
def test_limiter_never_exceeds_rpm_in_any_60s_window(rpm, burst_share, steps):
    """Bursts of attempts at arbitrary gaps (ms); whatever the request burst, no window
    (t-60, t] holds more than rpm grants."""
    clock = ManualClock()
    burst = max(1, round(rpm * burst_share))
    lim = DeploymentLimiter(rpm=rpm, tpm=10**9, max_concurrency=10**6, clock=clock,
                            request_burst=burst)
    grants = []
    for gap_ms, attempts in steps:
        clock.advance(gap_ms / 1000)
        for _ in range(attempts):
            adm = lim.try_acquire(1)
            if adm is not None:
                grants.append(clock.now())
                adm.release(1)
    for i, t in enumerate(grants):
        in_window = sum(1 for g in grants[: i + 1] if g > t - 60.0)
        assert in_window <= rpm


def test_limiter_grants_at_steady_rpm_rate_and_wait_time_matches():
    clock = ManualClock()
    lim = DeploymentLimiter(rpm=60, tpm=10**6, max_concurrency=100, clock=clock)
    granted = [lim.try_acquire(10) for _ in range(20)]
    assert sum(a is not None for a in granted) == 10          # default burst: rpm / 6
    assert lim.wait_time(10) == 1.0                            # 1 request per second
    clock.advance(1.0)
    assert lim.try_acquire(10) is not None and lim.try_acquire(10) is None


def test_limiter_concurrency_cap_and_release_frees_a_slot():
    clock = ManualClock()
    lim = DeploymentLimiter(rpm=1000, tpm=10**6, max_concurrency=2, clock=clock)
    a, b = lim.try_acquire(100), lim.try_acquire(100)
    assert a is not None and b is not None and lim.in_flight == 2
    assert lim.try_acquire(100) is None
    assert lim.wait_time(100) == math.inf                      # only a release helps
    clock.advance(60)
    assert lim.try_acquire(100) is None
    a.release(100)
    assert lim.in_flight == 1 and lim.try_acquire(100) is not None
    with pytest.raises(RuntimeError):
        a.release(100)


def test_refused_acquire_takes_nothing():
    clock = ManualClock()
    lim = DeploymentLimiter(rpm=60, tpm=600, max_concurrency=10, clock=clock)
    assert lim.try_acquire(601) is None                          # more than the token burst
    assert lim.wait_time(601) == math.inf
    assert lim.requests.available == 10.0 and lim.tokens.available == 600.0
    assert lim.in_flight == 0


def test_settlement_below_estimate_refunds_tokens():
    clock = ManualClock()
    lim = DeploymentLimiter(rpm=600, tpm=1200, max_concurrency=10, clock=clock)  # 20 tok/s
    adm = lim.try_acquire(1000)
    assert lim.tokens.available == 200.0
    adm.release(300)
    assert lim.tokens.available == 900.0
    assert lim.try_acquire(900) is not None


def test_settlement_above_estimate_is_debt_that_delays_the_next_grant():
    clock = ManualClock()
    lim = DeploymentLimiter(rpm=600, tpm=1200, max_concurrency=10, clock=clock)  # 20 tok/s
    adm = lim.try_acquire(1000)
    clock.advance(5)                                             # refills 100 -> 300
    adm.release(1800)                                            # 800 over the estimate
    assert lim.tokens.available == -500.0
    assert lim.try_acquire(100) is None
    assert lim.wait_time(100) == 30.0                            # (100 + 500) / 20
    clock.advance(29.5)
    assert lim.try_acquire(100) is None
    clock.advance(0.5)
    assert lim.try_acquire(100) is not None


def test_release_without_usage_keeps_the_estimate():
    lim = DeploymentLimiter(rpm=600, tpm=1200, max_concurrency=1, clock=ManualClock())
    lim.try_acquire(400).release(None)
    assert lim.tokens.available == 800.0 and lim.in_flight == 0


def test_limiter_sliding_window_wait_time():
    clock = ManualClock()
    # burst equal to rpm: the bucket would allow 2 x rpm per minute, the window does not
    lim = DeploymentLimiter(rpm=4, tpm=10**6, max_concurrency=100, clock=clock, request_burst=4)
    assert all(lim.try_acquire(1) is not None for _ in range(4))
    clock.advance(30)                                            # bucket has 2 again
    assert lim.requests.available == 2.0
    assert lim.try_acquire(1) is None
    assert lim.wait_time(1) == 30.0
    clock.advance(30)
    assert lim.try_acquire(1) is not None


# --- health ------------------------------------------------------------------------------

@given(st.lists(st.floats(0, 1e5, allow_nan=False), min_size=1, max_size=200))
def test_p95_matches_sorted_list_interpolation(latencies):
    clock = ManualClock()
    h = HealthWindow(clock=clock)
    for ms in latencies:
        h.record(ms, True)
    xs = sorted(latencies)
    rank_ = 0.95 * (len(xs) - 1)
    lo = int(rank_)
    hi = min(lo + 1, len(xs) - 1)
    expected = xs[lo] + (xs[hi] - xs[lo]) * (rank_ - lo)
    assert h.p95() == pytest.approx(expected)
    assert xs[0] <= h.p95() <= xs[-1]


def test_p95_known_values():
    assert percentile(list(range(1, 101)), 0.95) == pytest.approx(95.05)
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([0.0, 100.0], 0.95) == pytest.approx(95.0)


def test_samples_older_than_window_are_dropped():
    clock = ManualClock()
    h = HealthWindow(window_s=60, clock=clock)
    h.record(5000, False)
    clock.advance(30)
    h.record(100, True)
    assert len(h) == 2 and h.error_rate() == 0.5
    clock.advance(30)                            # first sample is now exactly 60 s old
    assert len(h) == 1 and h.p95() == 100.0 and h.error_rate() == 0.0
    clock.advance(30)
    assert len(h) == 0 and h.p95() is None and h.error_rate() == 0.0


def test_demotion_waits_for_min_samples():
    clock = ManualClock()
    h = HealthWindow(min_samples=20, clock=clock)
    for _ in range(19):
        h.record(5000, False)
    assert not h.demoted()
    h.record(5000, False)
    assert h.demoted()


def test_demotion_on_error_rate_above_threshold_only():
    h = HealthWindow(max_error_rate=0.05, min_samples=20, clock=ManualClock())
    for i in range(100):
        h.record(10, ok=i >= 5)                  # exactly 5%: not above
    assert h.error_rate() == 0.05 and not h.demoted()
    h.record(10, False)
    assert h.demoted()


def test_demotion_on_p95_above_threshold_only():
    h = HealthWindow(max_p95_ms=1000, min_samples=20, clock=ManualClock())
    for _ in range(20):
        h.record(1000, True)
    assert h.p95() == 1000.0 and not h.demoted()
    for _ in range(5):
        h.record(3000, True)
    assert h.p95() > 1000 and h.demoted()


def test_demoted_deployment_recovers_when_bad_samples_expire():
    clock = ManualClock()
    h = HealthWindow(window_s=60, min_samples=5, clock=clock)
    for _ in range(10):
        h.record(4000, False)
    assert h.demoted()
    clock.advance(61)
    for _ in range(10):
        h.record(50, True)
    assert not h.demoted()


def test_window_keeps_only_the_latest_max_samples():
    h = HealthWindow(min_samples=2, max_samples=5, clock=ManualClock())
    for _ in range(10):
        h.record(5000, False)
    for _ in range(5):
        h.record(10, True)
    assert len(h) == 5 and h.error_rate() == 0.0 and h.p95() == 10.0
    with pytest.raises(ValueError):
        HealthWindow(min_samples=20, max_samples=10)


def _window(clock, latency_ms, ok, n=20):
    h = HealthWindow(min_samples=20, clock=clock)
    for _ in range(n):
        h.record(latency_ms, ok)
    return h


def test_rank_healthy_first_then_region_priority_stable():
    clock = ManualClock()
    health = {
        "cn-north": _window(clock, 3000, True),      # slow: demoted
        "cn-east": _window(clock, 100, True),
        "cn-south": _window(clock, 100, True),
        "us-west": _window(clock, 100, False),       # failing: demoted
        "cn-east-b": _window(clock, 100, True),
    }
    candidates = [("us-west", 99), ("cn-north", 1), ("cn-south", 3), ("cn-east", 2),
                  ("cn-east-b", 2), ("new", 50)]     # "new" has no window yet: healthy
    assert rank(candidates, health) == ["cn-east", "cn-east-b", "cn-south", "new",
                                        "cn-north", "us-west"]


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=30))
def test_rank_is_a_stable_sort_by_demotion_then_priority(entries):
    clock = ManualClock()
    candidates = [(f"d{i}", prio) for i, (prio, _) in enumerate(entries)]
    health = {f"d{i}": _window(clock, 100, ok=not bad) for i, (_, bad) in enumerate(entries)}
    ranked = rank(candidates, health)
    assert sorted(ranked) == sorted(d for d, _ in candidates)
    keys = {d: (health[d].demoted(), p, i) for i, (d, p) in enumerate(candidates)}
    assert [keys[d] for d in ranked] == sorted(keys.values())
