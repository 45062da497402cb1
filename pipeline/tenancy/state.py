"""What the gateway keeps per tenant on the tenant's partition: admissions (idempotency and
budget reservations), spend per period, canary outcomes. Intake admits and reserves;
the tenant's Usage events settle. Both run on the worker that owns the partition, so one
writer changes each row and no lock is needed. Plain Python over three mappings (Faust
tables in the worker, dicts in tests).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, MutableMapping

from pipeline.aging import Aging
from pipeline.config import Section, config_path, load_yaml
from pipeline.events.ids import request_key
from pipeline.events.models import Alert, TenantPolicy, Usage, OK
from pipeline.tenancy.admissions import (ADMITTED, EXPIRED, REFUSED, SETTLED, Admission,
                                         AdmissionLog)
from pipeline.tenancy.budgets import SEP, Crossing, SpendBook, spend_keys, usd_text
from pipeline.tenancy.canary import CANARY, CanaryBook, arm_label

ALERT_NAMESPACE = uuid.UUID("6f1d3c52-8e0a-4d7a-9a55-2f3f4b1c0a11")
SPEND_SWEEP_MS = 3_600_000


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


class Prefixed(MutableMapping):
    """One kind of row inside the shared state mapping, told apart by a key prefix."""

    def __init__(self, rows: MutableMapping[str, dict], prefix: str):
        self.rows, self.prefix = rows, prefix + SEP

    def __getitem__(self, key: str) -> dict:
        return self.rows[self.prefix + key]

    def __setitem__(self, key: str, value: dict) -> None:
        self.rows[self.prefix + key] = value

    def __delitem__(self, key: str) -> None:
        del self.rows[self.prefix + key]

    def __iter__(self) -> Iterator[str]:
        n = len(self.prefix)
        return (k[n:] for k in list(self.rows.keys()) if k.startswith(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class TenantState:
    """All rows live in ONE mapping (one Faust table, so one changelog partition per tenant
    partition). Every spend change gets a per-partition sequence number and is written
    first into the request's admission (which keeps all of the request's changes), then
    into the spend rows, each of which remembers the last sequence it applied. On first use
    of a partition, changes present in an admission but missing from a spend row are
    re-applied — so a reservation or settlement is counted exactly once.

    What a crash may leave, and why that is enough: the changelog holds, for every row, a
    value it had, such that whenever a spend row's value is there, so is every admission
    written before that value was (Faust's write-through keeps a prefix of the writes; the
    write-behind, pipeline/kafka/write_behind.py, sends each row's latest value in the
    order of the rows' last writes, and an admission is always written before its spend
    rows, and a closed period's row before the sheet that drops it: SpendBook._write). An
    admission may then be there without its spend rows having any of its changes, which is
    why it keeps them all. The write-behind flushes only between steps, never between the
    writes of one change (they have no await between them)."""

    def __init__(self, rows: MutableMapping[str, dict], config: TenancyConfig = TenancyConfig()):
        self.rows = rows
        self.admissions = AdmissionLog(Prefixed(rows, "a"))
        self.spend = SpendBook(Prefixed(rows, "s"))
        self.canaries = CanaryBook(Prefixed(rows, "c"))
        self.config = config
        self._seq: dict[int, int] = {}
        self._last_sweep: dict[int, int] = {}
        self._last_spend_sweep: dict[int, int] = {}
        self._aging = Aging()                  # admissions by partition, oldest first

    # --- ordered spend changes -------------------------------------------------------

    def forget_partitions(self) -> None:
        """After a rebalance: another worker may have changed a partition meanwhile."""
        self._seq.clear()
        self._aging.forget()
        self.spend.forget()

    def prepare(self, partition: int) -> None:
        """Call before reading or changing ``partition``'s rows: reconciles it once."""
        if partition not in self._seq:
            self._seq[partition] = self.reconcile(partition)

    def _next_seq(self, partition: int) -> int:
        self.prepare(partition)
        self._seq[partition] += 1
        return self._seq[partition]

    def reconcile(self, partition: int) -> int:
        """Re-apply changes of ``partition`` that reached an admission but not every spend
        row; returns the highest sequence number in use."""
        pending: list[tuple[list[int], list[str]]] = []
        ages: list[tuple[int, str]] = []
        top = 0
        for key in list(self.admissions.rows):
            a = Admission(**self.admissions.rows[key])
            if a.partition != partition:
                continue
            ages.append((a.first_seen_ms, key))
            if a.change:
                pending += [(change, a.spend_keys) for change in a.changes]
                top = max(top, a.change[0])
        self._aging.known(partition, ages)
        for raw in self.spend.rows.values():
            if raw.get("partition") == partition:
                top = max(top, raw.get("seq", 0))
        for (seq, reserved, settled), keys in sorted(pending, key=lambda p: p[0][0]):
            self.spend.apply(keys, reserved, settled, seq, partition)
        return top

    def _change(self, tenant: str, request_id: str, a: Admission, reserved: int, settled: int,
                partition: int) -> None:
        if a.change:
            a.earlier = [*a.earlier, a.change]
        a.change = [self._next_seq(partition), reserved, settled]
        self.admissions.put(tenant, request_id, a)               # first: the intent
        self.spend.apply(a.spend_keys, reserved, settled, a.change[0], partition)

    # --- intake side -----------------------------------------------------------------

    def admit(self, tenant: str, team: str | None, request_id: str, partition: int, offset: int,
              at_ms: int, reserved_nanos: int) -> None:
        a = Admission(partition, offset, at_ms, ADMITTED, reserved_nanos,
                      spend_keys(tenant, team, at_ms))
        self._change(tenant, request_id, a, reserved_nanos, 0, partition)
        self._aging.add(partition, at_ms, request_key(tenant, request_id))

    def refuse(self, tenant: str, request_id: str, partition: int, offset: int, at_ms: int) -> None:
        self.prepare(partition)
        self.admissions.put(tenant, request_id, Admission(partition, offset, at_ms, REFUSED))
        self._aging.add(partition, at_ms, request_key(tenant, request_id))

    def sweep(self, partition: int, now_ms: int) -> int:
        """Forget admissions past the idempotency window, release reservations whose Usage
        never came, drop old spend rows — only rows of ``partition`` (the one being
        processed: a table change is logged to the partition of the event at hand)."""
        if now_ms - self._last_sweep.get(partition, 0) < self.config.sweep_interval_s * 1000:
            return 0
        self._last_sweep[partition] = now_ms
        self.prepare(partition)                 # indexes the partition's admissions by age
        c = self.config
        window, timeout = c.idempotency_window_s * 1000, c.reservation_timeout_s * 1000
        forget, stale, keep = [], [], []
        for at, key in self._aging.due(partition, now_ms - min(window, timeout)):
            raw = self.admissions.rows.get(key)
            if raw is None or raw.get("partition") != partition:
                continue                         # forgotten already, or not this partition's
            a = Admission(**raw)
            age = now_ms - a.first_seen_ms
            if a.in_flight and age > timeout:
                stale.append((key, a))
            elif not a.in_flight and age > window:
                forget.append(key)
                continue
            keep.append((at, key))               # expired now: forgotten once past the window
        self._aging.keep(partition, keep)
        for key in forget:
            del self.admissions.rows[key]
        for key, a in stale:
            tenant, request_id = key.split(SEP, 1)
            released = a.reserved_nanos
            a.state, a.reserved_nanos = EXPIRED, 0
            self._change(tenant, request_id, a, -released, 0, partition)
        old: list[str] = []
        if now_ms - self._last_spend_sweep.get(partition, 0) >= SPEND_SWEEP_MS:
            # Spend rows live ``keep_spend_days`` (days): read them all once an hour.
            self._last_spend_sweep[partition] = now_ms
            old = self.spend.expired(partition, now_ms, c.keep_spend_days)
            for key in old:
                self.spend.drop(key)
        return len(forget) + len(stale) + len(old)

    # --- usage side ------------------------------------------------------------------

    def settle(self, usage: Usage, partition: int, now_ms: int,
               policy: TenantPolicy | None) -> list[Alert]:
        """Settle the request's reservation with its billed cost, once; judge its canary.
        The first Usage of a request settles it; a repeated one (re-delivered, or a provider
        call re-done after a crash) changes nothing — the ledger keeps the first row too."""
        self.prepare(partition)
        a = self.admissions.get(usage.tenant, usage.request_id)
        if a is not None and a.state == SETTLED:
            return []
        if a is None:                                   # never reserved here (or forgotten)
            a = Admission(partition, -1, now_ms, SETTLED, 0,
                          spend_keys(usage.tenant, usage.team or None, usage.created_at_ms))
            self._aging.add(partition, now_ms, request_key(usage.tenant, usage.request_id))
        released = a.reserved_nanos if a.state == ADMITTED else 0
        a.state, a.reserved_nanos, a.settled_at_ms = SETTLED, 0, now_ms
        a.status, a.cost_nanos = usage.status, usage.cost_nanos
        self._change(usage.tenant, usage.request_id, a, -released, usage.cost_nanos, partition)
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
