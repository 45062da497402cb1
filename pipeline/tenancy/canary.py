"""Canary releases: a tenant rule sends N% of its end users to an alternative model.

The arm is a consistent hash of (tenant, rule, end user), so a user always lands in the
same arm however many workers run. The canary arm's outcomes (from its Usage events) are
judged over a sliding window; below the success-rate floor or above the P95 ceiling the
canary rolls back — every user returns to the normal route — until the rule changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import MutableMapping

from pipeline.events.models import CanaryRule
from pipeline.resilience.health import percentile
from pipeline.tenancy.budgets import SEP

CANARY, CONTROL = "canary", "control"


def arm_for(tenant: str, rule: CanaryRule, end_user: str) -> str:
    digest = hashlib.sha256(f"{tenant}{SEP}{rule.name}{SEP}{end_user}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10_000          # 0.01% resolution
    return CANARY if bucket < rule.percent * 100 else CONTROL


def arm_label(rule: CanaryRule, arm: str) -> str:
    return f"{rule.name}:{arm}"


def signature(rule: CanaryRule) -> str:
    """Changing any of these starts the canary afresh (new stats, rollback cleared)."""
    return f"{rule.name}|{rule.percent}|{rule.model}|{rule.min_success_rate}|{rule.max_p95_ms}"


@dataclass
class CanaryState:
    signature: str
    partition: int = -1
    outcomes: list[list[int]] = field(default_factory=list)   # [ok 0/1, latency_ms], newest last
    rolled_back_at_ms: int = 0
    rollback_reason: str = ""

    @property
    def rolled_back(self) -> bool:
        return self.rolled_back_at_ms > 0


@dataclass(frozen=True)
class Verdict:
    samples: int
    success_rate: float
    p95_ms: float
    breach: str          # empty when healthy or not enough samples


def judge(rule: CanaryRule, outcomes: list[list[int]]) -> Verdict:
    window = outcomes[-rule.window:]
    if not window:
        return Verdict(0, 1.0, 0.0, "")
    success = sum(ok for ok, _ in window) / len(window)
    p95 = percentile(sorted(latency for _, latency in window), 0.95)
    breach = ""
    if len(window) >= rule.min_samples:
        if success < rule.min_success_rate:
            breach = f"success rate {success:.2%} < {rule.min_success_rate:.2%}"
        elif p95 > rule.max_p95_ms:
            breach = f"P95 latency {p95:.0f} ms > {rule.max_p95_ms} ms"
    return Verdict(len(window), success, p95, breach)


class CanaryBook:
    def __init__(self, rows: MutableMapping[str, dict]):
        self.rows = rows

    @staticmethod
    def key(tenant: str, rule: CanaryRule) -> str:
        return f"{tenant}{SEP}{rule.name}"

    def get(self, tenant: str, rule: CanaryRule) -> CanaryState:
        raw = self.rows.get(self.key(tenant, rule))
        state = CanaryState(**raw) if raw else None
        if state is None or state.signature != signature(rule):
            return CanaryState(signature(rule))
        return state

    def active(self, tenant: str, rule: CanaryRule | None) -> bool:
        return rule is not None and rule.percent > 0 and not self.get(tenant, rule).rolled_back

    def record(self, tenant: str, rule: CanaryRule, ok: bool, latency_ms: int, partition: int,
               now_ms: int) -> Verdict | None:
        """Add one canary-arm outcome; returns the verdict when this outcome rolls it back."""
        state = self.get(tenant, rule)
        if state.rolled_back:
            return None
        state.outcomes = (state.outcomes + [[int(ok), int(latency_ms)]])[-rule.window:]
        state.partition = partition
        verdict = judge(rule, state.outcomes)
        if verdict.breach:
            state.rolled_back_at_ms, state.rollback_reason = now_ms, verdict.breach
        self.rows[self.key(tenant, rule)] = asdict(state)
        return verdict if verdict.breach else None
