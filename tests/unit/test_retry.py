"""The one retry policy every retrying loop uses (dispatch, Emitter, ledger inserts, the
alert webhook): backoff, jitter, cap, Retry-After, attempt bound and deadline."""

from __future__ import annotations

import random

import pytest

from pipeline.resilience.retry import DEADLINE, EXHAUSTED, PERMANENT, RetryPolicy, retry_after


def test_backoff_doubles_caps_and_jitters_within_bounds():
    policy, rng = RetryPolicy(1, 60, 0.25), random.Random(3)
    for retry in range(10):
        raw = min(2 ** retry, 60)
        assert raw * 0.75 <= policy.delay(retry, rng) <= raw * 1.25


def test_without_jitter_the_delay_is_exact():
    policy = RetryPolicy(0.5, 4.0, 0.0)
    assert [policy.delay(n, random.Random()) for n in range(6)] == [0.5, 1, 2, 4, 4, 4]


def test_retry_after_replaces_the_computed_delay_and_is_capped():
    policy, rng = RetryPolicy(1, 10, 0.25), random.Random(1)
    assert policy.delay(0, rng, retry_after_s=7) == 7
    assert policy.delay(5, rng, retry_after_s=0) == 0
    assert policy.delay(0, rng, retry_after_s=600) == 10


def test_a_loop_that_never_gives_up_does_not_overflow():
    assert RetryPolicy(0.1, 5.0, 0.0).delay(10_000, random.Random()) == 5.0


def test_after_retries_until_the_attempt_bound():
    policy, rng = RetryPolicy(1, 60, 0.0, max_attempts=3), random.Random(1)
    assert policy.after(1, rng).delay_s == 1 and policy.after(1, rng).retry
    assert policy.after(2, rng).delay_s == 2
    last = policy.after(3, rng)
    assert not last.retry and last.stop == EXHAUSTED


def test_a_call_can_narrow_the_bound_and_an_unbounded_policy_keeps_going():
    bounded, unbounded, rng = RetryPolicy(1, 60, 0.0, 5), RetryPolicy(1, 60, 0.0), random.Random()
    assert bounded.after(2, rng, max_attempts=2).stop == EXHAUSTED   # earlier visits used some
    assert unbounded.after(1_000, rng).retry


def test_a_permanent_failure_stops_at_once():
    assert RetryPolicy(max_attempts=9).after(1, random.Random(), retryable=False).stop == PERMANENT


def test_a_wait_past_the_deadline_stops_and_says_how_long_it_would_have_been():
    policy, rng = RetryPolicy(1, 60, 0.0, max_attempts=5), random.Random()
    cut = policy.after(1, rng, retry_after_s=30, remaining_s=10)
    assert (cut.retry, cut.stop, cut.delay_s) == (False, DEADLINE, 30)
    assert policy.after(1, rng, retry_after_s=3, remaining_s=10).delay_s == 3


@pytest.mark.parametrize("header, seconds", [
    ("2", 2.0), ("0.5", 0.5), ("-3", 0.0), ("", None), (None, None), ("soon", None),
    ("inf", None), ("nan", None), ("Wed, 21 Oct 2026 07:28:00 GMT", None),
])
def test_retry_after_header_reads_delta_seconds_only(header, seconds):
    assert retry_after(header) == seconds
