"""What the gateway keeps per tenant on the tenant's partition: admissions (idempotency and
budget reservations), spend per period, canary outcomes. Intake admits and reserves;
the tenant's Usage events settle. Both run on the worker that owns the partition, so one
writer changes each row and no lock is needed. Plain Python over three mappings (Faust
tables in the worker, dicts in tests).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import MutableMapping

from pipeline.config import Section, config_path, load_yaml
from pipeline.events.models import Alert, TenantPolicy, Usage, OK
from pipeline.tenancy.admissions import (ADMITTED, EXPIRED, REFUSED, SETTLED, Admission,
                                         AdmissionLog)
from pipeline.tenancy.budgets import Crossing, SpendBook, spend_keys, usd_text
from pipeline.tenancy.canary import CANARY, CanaryBook, arm_label

ALERT_NAMESPACE = uuid.UUID("6f1d3c52-8e0a-4d7a-9a55-2f3f4b1c0a11")


@dataclass(frozen=True)
class TenancyConfig:
    idempotency_window_s: int = 3600
    reservation_timeout_s: int = 3600
    sweep_interval_s: int = 30
    keep_spend_days: int = 400


def load_tenancy(path: Path | None = None) -> TenancyConfig:
    path = path or config_path("tenancy.yaml")
    s = Section(path, "", load_yaml(path))
    return TenancyConfig(
        idempotency_window_s=s.int("idempotency_window_s", minimum=1),
        reservation_timeout_s=s.int("reservation_timeout_s", minimum=1),
        sweep_interval_s=s.int("sweep_interval_s", minimum=1),
        keep_spend_days=s.int("keep_spend_days", minimum=32))


def alert_id(rule: str, subject: str) -> str:
    """Deterministic, so a re-delivered decision re-publishes the same alert, not a new one."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{rule}|{subject}"))


def budget_alert(tenant: str, c: Crossing, at_ms: int) -> Alert:
    rule = f"budget_{c.level}"
    return Alert(
        alert_id=alert_id(rule, c.key), rule=rule, state="firing",
        severity="critical" if c.level == "hard" else "warning", tenant=tenant,
        subject=c.scope, value=usd_text(c.spend.projected_nanos + c.estimate_nanos),
        threshold=usd_text(c.limit_nanos), window=f"{c.budget.period} from {c.key.rsplit(chr(31), 1)[-1]}",
        message=("hard budget reached: new requests are refused with budget_exceeded; "
                 if c.level == "hard" else "soft budget crossed: requests downgraded to cheaper "
                 "models that meet their quality floor; ") + c.describe(),
        at_ms=at_ms, labels={"period": c.budget.period, "team": c.budget.team or ""})


class TenantState:
    def __init__(self, admissions: MutableMapping[str, dict], spend: MutableMapping[str, dict],
                 canaries: MutableMapping[str, dict], config: TenancyConfig = TenancyConfig()):
        self.admissions = AdmissionLog(admissions)
        self.spend = SpendBook(spend)
        self.canaries = CanaryBook(canaries)
        self.config = config
        self._last_sweep: dict[int, int] = {}

    # --- intake side -----------------------------------------------------------------

    def admit(self, tenant: str, team: str | None, request_id: str, partition: int, offset: int,
              at_ms: int, reserved_nanos: int) -> None:
        keys = spend_keys(tenant, team, at_ms)
        self.spend.reserve(keys, reserved_nanos, partition)
        self.admissions.put(tenant, request_id, Admission(
            partition, offset, at_ms, ADMITTED, reserved_nanos, keys))

    def refuse(self, tenant: str, request_id: str, partition: int, offset: int, at_ms: int) -> None:
        self.admissions.put(tenant, request_id, Admission(partition, offset, at_ms, REFUSED))

    def sweep(self, partition: int, now_ms: int) -> int:
        """Forget admissions past the idempotency window, release reservations whose Usage
        never came, drop old spend rows — only rows of ``partition`` (the one being
        processed: a table change is logged to the partition of the event at hand)."""
        if now_ms - self._last_sweep.get(partition, 0) < self.config.sweep_interval_s * 1000:
            return 0
        self._last_sweep[partition] = now_ms
        c = self.config
        forget, stale = self.admissions.expired(partition, now_ms, c.idempotency_window_s * 1000,
                                                c.reservation_timeout_s * 1000)
        for key in forget:
            del self.admissions.rows[key]
        for key, a in stale:
            self.spend.release(a.spend_keys, a.reserved_nanos, partition)
            a.state, a.reserved_nanos = EXPIRED, 0
            self.admissions.rows[key] = asdict(a)
        old = self.spend.expired(partition, now_ms, c.keep_spend_days)
        for key in old:
            del self.spend.rows[key]
        return len(forget) + len(stale) + len(old)

    # --- usage side ------------------------------------------------------------------

    def settle(self, usage: Usage, partition: int, now_ms: int,
               policy: TenantPolicy | None) -> list[Alert]:
        """Settle the request's reservation with its billed cost, once; judge its canary."""
        a = self.admissions.get(usage.tenant, usage.request_id)
        if a is not None and a.state == SETTLED:
            return []                                   # a re-delivered Usage: already counted
        if a is None:                                   # never reserved here (or forgotten)
            keys = spend_keys(usage.tenant, usage.team or None, usage.created_at_ms)
            a = Admission(partition, -1, now_ms, SETTLED, 0, keys)
            self.spend.settle(keys, 0, usage.cost_nanos, partition)
        else:
            reserved = a.reserved_nanos if a.state == ADMITTED else 0
            self.spend.settle(a.spend_keys, reserved, usage.cost_nanos, partition)
        a.state, a.reserved_nanos, a.settled_at_ms, a.status = SETTLED, 0, now_ms, usage.status
        self.admissions.put(usage.tenant, usage.request_id, a)
        return self._judge_canary(usage, partition, now_ms, policy)

    def _judge_canary(self, usage: Usage, partition: int, now_ms: int,
                      policy: TenantPolicy | None) -> list[Alert]:
        rule = policy.canary if policy else None
        if rule is None or usage.canary != arm_label(rule, CANARY):
            return []
        ok = usage.status == OK and usage.served_model == rule.model
        latency = max(0, usage.completed_at_ms - usage.created_at_ms)
        verdict = self.canaries.record(usage.tenant, rule, ok, latency, partition, now_ms)
        if verdict is None:
            return []
        return [Alert(
            alert_id=alert_id("canary_rollback", f"{usage.tenant}|{rule.name}|{now_ms}"),
            rule="canary_rollback", state="firing", severity="critical", tenant=usage.tenant,
            subject=f"canary {rule.name} -> {rule.model}",
            value=f"success {verdict.success_rate:.2%}, P95 {verdict.p95_ms:.0f} ms "
                  f"over {verdict.samples} requests",
            threshold=f"success >= {rule.min_success_rate:.2%}, P95 <= {rule.max_p95_ms} ms",
            window=f"last {rule.window} canary requests",
            message=f"canary {rule.name} rolled back: {verdict.breach}; all of the tenant's "
                    f"traffic is back on its normal route until the rule is changed",
            at_ms=now_ms, labels={"canary": rule.name, "model": rule.model})]
