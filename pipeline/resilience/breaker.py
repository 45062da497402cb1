"""Circuit breaker per deployment (DOMAIN.md §4): CLOSED → OPEN after consecutive failures,
OPEN for a cool-down, then HALF_OPEN admits a few probes; enough successes close it, one
failure re-opens it. Transitions queue up for the agent to publish as events."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pipeline.clock import Clock, MonotonicClock


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Transition reasons (stable strings: they end up in events and dashboards).
CONSECUTIVE_FAILURES = "consecutive_failures"
OPEN_ELAPSED = "open_elapsed"
PROBE_FAILED = "probe_failed"
PROBES_SUCCEEDED = "probes_succeeded"


@dataclass(frozen=True)
class Transition:
    deployment: str
    from_state: BreakerState
    to_state: BreakerState
    at: float            # the breaker's clock (monotonic seconds), not wall time
    reason: str
    failures: int = 0    # failures that caused it: the consecutive count, or 1 for a failed probe


class CircuitBreaker:
    """Each call admitted by :meth:`allow` must end in exactly one of
    :meth:`record_success`, :meth:`record_failure` or :meth:`record_cancelled`, so that a
    HALF_OPEN breaker knows how many probes are still in flight."""

    def __init__(self, failure_threshold: int = 5, open_s: float = 30.0,
                 half_open_probes: int = 3, success_threshold: int = 2, *,
                 deployment: str = "", clock: Clock | None = None):
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if open_s < 0:
            raise ValueError(f"open_s must be >= 0, got {open_s}")
        if half_open_probes < 1:
            raise ValueError(f"half_open_probes must be >= 1, got {half_open_probes}")
        if not 1 <= success_threshold <= half_open_probes:
            # more required successes than admitted probes could never close the breaker
            raise ValueError(f"success_threshold must be in 1..half_open_probes "
                             f"({half_open_probes}), got {success_threshold}")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.half_open_probes = half_open_probes
        self.success_threshold = success_threshold
        self.deployment = deployment
        self._clock = clock or MonotonicClock()
        self._state = BreakerState.CLOSED
        self._failures = 0            # consecutive, while CLOSED
        self._opened_at = 0.0
        self._probes_in_flight = 0    # while HALF_OPEN
        self._probe_successes = 0     # while HALF_OPEN
        self._transitions: list[Transition] = []

    @property
    def state(self) -> BreakerState:
        if (self._state is BreakerState.OPEN
                and self._clock.now() - self._opened_at >= self.open_s):
            self._move(BreakerState.HALF_OPEN, OPEN_ELAPSED)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def can_admit(self) -> bool:
        """Whether :meth:`allow` would admit a call now, without taking a probe slot."""
        state = self.state
        if state is BreakerState.HALF_OPEN:
            return self._probes_in_flight < self.half_open_probes
        return state is BreakerState.CLOSED

    @property
    def probes_in_flight(self) -> int:
        return self._probes_in_flight if self._state is BreakerState.HALF_OPEN else 0

    def allow(self) -> bool:
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._probes_in_flight >= self.half_open_probes:
            return False
        self._probes_in_flight += 1
        return True

    def retry_after(self) -> float:
        """Seconds until an OPEN breaker admits probes; 0 when it is not OPEN."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.open_s - self._clock.now())

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self._failures = 0
        elif state is BreakerState.HALF_OPEN:
            self._end_probe()
            self._probe_successes += 1
            if self._probe_successes >= self.success_threshold:
                self._move(BreakerState.CLOSED, f"{PROBES_SUCCEEDED}={self._probe_successes}")
        # OPEN: a late answer to a call admitted before opening says nothing new.

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._move(BreakerState.OPEN, f"{CONSECUTIVE_FAILURES}={self._failures}",
                           self._failures)
        elif state is BreakerState.HALF_OPEN:
            self._end_probe()
            self._move(BreakerState.OPEN, PROBE_FAILED, 1)

    def record_cancelled(self) -> None:
        """An admitted call ended without a verdict (e.g. the losing half of a hedge)."""
        if self.state is BreakerState.HALF_OPEN:
            self._end_probe()

    def export(self) -> dict:
        """State another worker takes over with :meth:`restore` (JSON-ready)."""
        state = self.state
        return {"state": state.value, "failures": self._failures,
                "open_for_s": self._clock.now() - self._opened_at
                if state is BreakerState.OPEN else 0.0}

    def restore(self, state: dict, elapsed_s: float) -> None:
        """Continue from a state exported ``elapsed_s`` seconds ago, without a transition
        (the exporting worker reported it). A half-open breaker's probes in flight stay
        with that worker; this one may send its own."""
        self._state = BreakerState(state["state"])
        self._failures = int(state["failures"])
        self._probes_in_flight = self._probe_successes = 0
        self._opened_at = self._clock.now() - float(state["open_for_s"]) - max(0.0, elapsed_s)

    def drain_transitions(self) -> list[Transition]:
        drained, self._transitions = self._transitions, []
        return drained

    def _end_probe(self) -> None:
        self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def _move(self, to: BreakerState, reason: str, failures: int = 0) -> None:
        now = self._clock.now()
        self._transitions.append(Transition(self.deployment, self._state, to, now, reason, failures))
        self._state = to
        self._failures = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        if to is BreakerState.OPEN:
            self._opened_at = now
