"""Budgets: spend per tenant (and team) per day / week / month, in integer nano-dollars.

Each period keeps what was settled (billed by Usage events) and what is reserved (the
estimated cost of requests still in flight). A request is checked against every budget
that applies to it: projected = settled + reserved + its estimate. Over a hard limit it is
refused; over a soft limit it is downgraded and an alert raised — once per period.
Spend is tracked whether or not a budget exists, so a budget added mid-month starts from
the month's real spend. State lives in a mapping (a Faust table on the tenant's partition;
a dict in tests); every change is written back as a new value so a table logs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import MutableMapping

from pipeline.catalog import NANOS_PER_USD
from pipeline.events.ids import SEP
from pipeline.events.models import Budget

PERIODS = ("day", "week", "month")
ALL_TEAMS = "*"


def period_start(period: str, at_ms: int) -> str:
    """UTC start date of the period holding ``at_ms``: days, ISO weeks (Monday), months."""
    day = datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).date()
    if period == "day":
        return day.isoformat()
    if period == "week":
        return (day - timedelta(days=day.weekday())).isoformat()
    if period == "month":
        return day.replace(day=1).isoformat()
    raise ValueError(f"unknown budget period {period!r}; expected one of {PERIODS}")


def spend_key(tenant: str, team: str, period: str, at_ms: int) -> str:
    return spend_key_at(tenant, team, period, period_start(period, at_ms))


def spend_key_at(tenant: str, team: str, period: str, start: str) -> str:
    return SEP.join((tenant, team, period, start))


def split_spend_key(key: str) -> tuple[str, str, str, str] | None:
    """(tenant, team, period, period start) of a ``spend_key``; None for any other key."""
    parts = key.split(SEP)
    return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None


def spend_keys(tenant: str, team: str | None, at_ms: int) -> list[str]:
    """Every spend row a request of ``tenant``/``team`` at ``at_ms`` counts towards."""
    teams = [ALL_TEAMS] + ([team] if team else [])
    return [spend_key(tenant, t, p, at_ms) for t in teams for p in PERIODS]


def usd_to_nanos(usd: Decimal) -> int:
    return int(usd * NANOS_PER_USD)


@dataclass
class Spend:
    settled_nanos: int = 0
    reserved_nanos: int = 0
    partition: int = -1
    seq: int = 0                # the last change applied (per-partition sequence)
    soft_alerted: bool = False
    hard_alerted: bool = False

    @property
    def projected_nanos(self) -> int:
        return self.settled_nanos + self.reserved_nanos

    def row(self) -> dict:
        """Its fields (all immutable): ``dataclasses.asdict`` without the deep copy."""
        return dict(vars(self))


@dataclass(frozen=True)
class Crossing:
    """A budget the request would cross."""
    level: str                 # soft | hard
    budget: Budget
    key: str
    spend: Spend
    limit_nanos: int
    estimate_nanos: int
    first_in_period: bool      # no alert raised for this level in this period yet

    @property
    def scope(self) -> str:
        return f"team {self.budget.team}" if self.budget.team else "tenant"

    def describe(self) -> str:
        return (f"{self.budget.period} {self.level} budget for {self.scope}: spent "
                f"${usd_text(self.spend.settled_nanos)} + in flight ${usd_text(self.spend.reserved_nanos)} "
                f"+ this request ~${usd_text(self.estimate_nanos)} > limit ${usd_text(self.limit_nanos)}")


def usd_text(nanos: int) -> str:
    return str((Decimal(nanos) / NANOS_PER_USD).quantize(Decimal("0.000001")))


def sheet_key(tenant: str, team: str) -> str:
    return SEP.join((tenant, team))


def _bucket(spend: Spend, start: str) -> dict:
    return {"start": start, **spend.row()}


def _spend(bucket: dict) -> Spend:
    return Spend(**{k: v for k, v in bucket.items() if k != "start"})


class SpendBook:
    """Spend rows. Each (tenant, team) has ONE *sheet* holding its current day, week and
    month, so a change is one table write (one changelog record), not three; a period that
    closes is written once as a row of its own under its ``spend_key``, which keeps the
    history (and is the shape rows had before sheets, so those still read). Each period
    in a sheet keeps the last change it applied (``seq``), as a row did."""

    def __init__(self, rows: MutableMapping[str, dict]):
        self.rows = rows
        # Keys of the spend rows (sheets and closed periods): ``rows`` is a view of a table
        # that holds every admission too (~10^6 rows for an hour at a few hundred requests
        # a second), and the budget gauges read every period at each scrape. Read in full
        # once, then kept up to date; None again after a rebalance.
        self._keys: set[str] | None = None

    def _known(self) -> set[str]:
        if self._keys is None:
            self._keys = set(self.rows)
        return self._keys

    def forget(self) -> None:
        """After a rebalance: rows of other partitions came or went with the changelog."""
        self._keys = None

    def _set(self, key: str, raw: dict) -> None:
        self.rows[key] = raw
        if self._keys is not None:
            self._keys.add(key)

    def drop(self, key: str) -> None:
        del self.rows[key]
        if self._keys is not None:
            self._keys.discard(key)

    def get(self, key: str) -> Spend:
        tenant, team, period, start = key.split(SEP)
        bucket = (self.rows.get(sheet_key(tenant, team)) or {}).get("buckets", {}).get(period)
        if bucket is not None and bucket["start"] == start:
            return _spend(bucket)
        raw = self.rows.get(key)
        return Spend(**raw) if raw else Spend()

    def put(self, key: str, spend: Spend) -> None:
        self._write({key: spend})

    def periods(self):
        """(tenant, team, period, start, Spend) of every period held: the sheets' current
        ones and the closed ones' rows."""
        current, closed = set(), []
        for key in list(self._known()):
            raw = self.rows.get(key)
            if raw is None:
                continue
            if "buckets" in raw:
                tenant, team = key.split(SEP)
                for period, bucket in raw["buckets"].items():
                    current.add((tenant, team, period, bucket["start"]))
                    yield tenant, team, period, bucket["start"], _spend(bucket)
            elif (parts := split_spend_key(key)) is not None:
                closed.append((parts, raw))
        for parts, raw in closed:
            if parts not in current:
                yield (*parts, Spend(**raw))

    def crossings(self, tenant: str, team: str | None, budgets: list[Budget], at_ms: int,
                  estimate_nanos: int) -> list[Crossing]:
        """Budgets this request would cross, hard ones first."""
        found = []
        for b in budgets:
            if b.team is not None and b.team != team:
                continue
            key = spend_key(tenant, b.team or ALL_TEAMS, b.period, at_ms)
            spend = self.get(key)
            projected = spend.projected_nanos + estimate_nanos
            for level, limit, alerted in (("hard", b.hard_usd, spend.hard_alerted),
                                          ("soft", b.soft_usd, spend.soft_alerted)):
                if limit is not None and projected > usd_to_nanos(limit):
                    found.append(Crossing(level, b, key, spend, usd_to_nanos(limit),
                                          estimate_nanos, not alerted))
                    break
        return sorted(found, key=lambda c: c.level != "hard")

    def mark_alerted(self, crossing: Crossing, partition: int) -> None:
        spend = self.get(crossing.key)
        if crossing.level == "hard":
            spend.hard_alerted = True
        else:
            spend.soft_alerted = True
        spend.partition = partition
        self.put(crossing.key, spend)

    def apply(self, keys: list[str], reserved_delta: int, settled_delta: int, seq: int,
              partition: int) -> None:
        """Apply one change (a reservation, a settlement, a release) to every period in
        ``keys``, once: a period that already carries ``seq`` or later is left alone, so a
        change replayed after a crash is not counted twice (see TenantState)."""
        changed = {}
        for key in keys:
            spend = self.get(key)
            if spend.seq >= seq:
                continue
            spend.reserved_nanos += reserved_delta
            spend.settled_nanos += settled_delta
            spend.seq, spend.partition = seq, partition
            changed[key] = spend
        self._write(changed)

    def _write(self, changed: dict[str, Spend]) -> None:
        """Write periods back: a sheet's current ones in one write per sheet; a newer
        period closes the one it replaces (written to its own row first, so a crash between
        the two writes leaves it in both, never in neither); an older one (a request
        admitted before midnight, settled after) goes to its closed row. Every sheet a
        change touches is written last, even when only closed rows changed: the
        write-behind sends rows in the order of their last writes, and this keeps a closed
        row ahead of the sheet that no longer holds its period (TenantState)."""
        sheets: dict[str, dict] = {}
        for key, spend in changed.items():
            tenant, team, period, start = key.split(SEP)
            name = sheet_key(tenant, team)
            if name not in sheets:
                sheets[name] = self.rows.get(name) or {"buckets": {}}
                sheets[name] = {**sheets[name], "buckets": dict(sheets[name]["buckets"])}
            buckets = sheets[name]["buckets"]
            held = buckets.get(period)
            if held is not None and held["start"] > start:
                self._set(key, spend.row())
                continue
            if held is not None and held["start"] < start:
                self._set(spend_key_at(tenant, team, period, held["start"]), _spend(held).row())
            buckets[period] = _bucket(spend, start)
        for name, sheet in sheets.items():
            periods = sheet["buckets"].values()
            if not periods:
                continue
            sheet["seq"] = max(b["seq"] for b in periods)
            sheet["partition"] = max(b["partition"] for b in periods)
            self._set(name, sheet)

    def expired(self, partition: int, now_ms: int, keep_days: int) -> list[str]:
        """Rows of ``partition`` whose period (a sheet: its newest one) started more than
        ``keep_days`` ago."""
        horizon = datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc).date() - timedelta(days=keep_days)
        old = []
        for key in list(self._known()):
            raw = self.rows.get(key)
            if raw is None or raw.get("partition") != partition:
                continue
            if "buckets" in raw:
                start = max((b["start"] for b in raw["buckets"].values()), default="")
            else:
                start = key.rsplit(SEP, 1)[-1]
            if start and datetime.fromisoformat(start).date() < horizon:
                old.append(key)
        return old
