"""Evaluation of the alert rules and the de-duplication state machine: windowed sums per
(rule, tenant, subject, window start) in one mapping, a firing/pending state per (rule,
tenant, subject) in another, and the transitions between them as Alert events (one when a
condition starts to hold, one when it stops). Plain Python over two mappings (Faust tables
in the worker, dicts in tests); every decision takes the time as an argument, so tests
never sleep."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from decimal import Decimal

from pipeline.events.models import Alert, Usage
from pipeline.monitor.rules import (ALERT_COUNT, ERROR_RATE, FIRING, LATENCY_BOUNDS_MS,
                                    LATENCY_P95, OK, PENDING, RESOLVED, SPEND, SPIKE, Rule)
from pipeline.monitor.windows import format_duration, iso

ALERT_NAMESPACE = uuid.UUID("0b7e6c1e-51a4-4d0c-9a43-7d8f3e2b6a90")
SEP = "\x1f"


@dataclass(frozen=True)
class Reading:
    """A rule's value for one subject at one time. The texts shown in an alert are made
    only when an alert is (most readings decide nothing)."""
    value: Decimal
    threshold: Decimal
    breached: bool          # the firing condition holds
    cleared: bool           # the resolve condition holds
    episode: int | None     # tumbling: the window start; sliding: None
    describe: Callable[[], tuple[str, str]]     # -> (window, value as shown)

    @property
    def window(self) -> str:
        return self.describe()[0]

    @property
    def text(self) -> str:
        return self.describe()[1]


@dataclass
class Decision:
    """What one evaluation wants: alerts to publish, then state rows to write (after the
    alerts are acknowledged, so a crash in between re-publishes the same alert ids)."""
    alerts: list[Alert] = field(default_factory=list)
    writes: dict[str, dict | None] = field(default_factory=dict)

    def merge(self, other: "Decision") -> None:
        self.alerts.extend(other.alerts)
        self.writes.update(other.writes)


def alert_id(rule: str, tenant: str, subject: str, episode: int, state: str) -> str:
    """Deterministic: a replay after a crash re-publishes the same ids, never new ones."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{rule}|{tenant}|{subject}|{episode}|{state}"))


def usd(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-9)


def subject_of(rule: Rule, usage: Usage) -> tuple[str, str] | None:
    """(tenant, subject) a usage event counts for under ``rule``, None if none."""
    if rule.scope == "tenant":
        return usage.tenant, ""
    value = {"team": usage.team, "model": usage.served_model,
             "deployment": usage.deployment}[rule.scope]
    return (usage.tenant, value) if value else None


def latency_of(rule: Rule, usage: Usage) -> int:
    if rule.latency == "provider":
        return usage.provider_ms
    if rule.latency == "total":
        return max(0, usage.completed_at_ms - usage.created_at_ms)
    return usage.pipeline_ms


def latency_bounds(rule: Rule) -> list[int]:
    return sorted(set(LATENCY_BOUNDS_MS) | {int(rule.threshold)})


class Monitor:
    """Buckets and states of one source (usage or alerts). A bucket row remembers the source
    partition and the last offset it counted, so a re-delivered event is not counted twice;
    states are written only through Decision.writes."""

    def __init__(self, rules: Iterable[Rule], buckets: MutableMapping[str, dict],
                 states: MutableMapping[str, dict]):
        self.rules = tuple(rules)
        self.by_name = {r.name: r for r in self.rules}
        self.buckets, self.states = buckets, states
        # Resolutions published by the timer but not yet written (a table write needs an
        # event of the row's partition): state key -> (alert id, partition).
        self.timer_resolved: dict[str, tuple[str, int]] = {}
        self._last_sweep: dict[int, int] = {}
        self._latency_bounds: dict[str, list[int]] = {}
        self._baselines: dict[str, tuple[int, int]] = {}     # spike: key -> (first, nanos)
        self._seen: dict[int, int] = {}                       # partition -> latest event time

    # --- counting ----------------------------------------------------------------------

    def _bucket_start(self, rule: Rule, t_ms: int) -> int:
        return rule.tumbling.start(t_ms) if rule.tumbling else t_ms // rule.step_ms * rule.step_ms

    def _add(self, rule: Rule, tenant: str, subject: str, t_ms: int, partition: int, offset: int,
             amount: int = 0, latency_ms: int | None = None, ident: str | None = None) -> None:
        start = self._bucket_start(rule, t_ms)
        key = SEP.join((rule.name, tenant, subject, str(start)))
        row = self.buckets.get(key)
        row = dict(row) if row else {"p": partition, "o": -1, "t": start, "n": 0}
        if row["p"] == partition and offset <= row["o"]:
            return                                            # re-delivered: counted already
        if ident is not None:
            if ident in row.get("ids", ()):
                return
            row["ids"] = [*row.get("ids", ()), ident]         # copies: the stored row stays as is
        if latency_ms is not None:
            bounds = self._bounds(rule)
            hist = list(row.get("h") or ())
            if len(hist) != len(bounds) + 1:      # new bucket, or the threshold (a bound) changed
                hist = [0] * (len(bounds) + 1)
            row["h"] = hist
            hist[next((i for i, b in enumerate(bounds) if latency_ms <= b), len(bounds))] += 1
        row["n"] += amount
        row["p"], row["o"] = partition, offset
        self.buckets[key] = row
        if rule.metric == SPIKE:
            cached = self._baselines.get(SEP.join((rule.name, tenant, subject)))
            if cached and start < cached[0]:          # a late event in the baseline
                del self._baselines[SEP.join((rule.name, tenant, subject))]

    def _rows(self, rule: Rule, tenant: str, subject: str, first: int, last: int) -> list[dict]:
        """Bucket rows of the sliding buckets starting in [first, last]."""
        prefix = SEP.join((rule.name, tenant, subject)) + SEP
        rows = []
        for start in range(first, last + 1, rule.step_ms):
            row = self.buckets.get(prefix + str(start))
            if row:
                rows.append(row)
        return rows

    # --- reading -----------------------------------------------------------------------

    def read(self, rule: Rule, tenant: str, subject: str, now_ms: int) -> Reading:
        if rule.tumbling:
            start = rule.tumbling.start(now_ms)
            row = self.buckets.get(SEP.join((rule.name, tenant, subject, str(start))))
            value = usd(row["n"] if row else 0)
            return Reading(value, rule.threshold, value > rule.threshold, value <= rule.threshold,
                           start, lambda: (rule.tumbling.label(start), f"{value:f}"))
        current = now_ms // rule.step_ms * rule.step_ms
        first = current - rule.window_ms + rule.step_ms
        rows = self._rows(rule, tenant, subject, first, current)

        def window() -> str:
            return f"last {rule.window} to {iso(now_ms)}"

        if rule.metric == SPIKE:
            value = usd(sum(r["n"] for r in rows))
            periods = rule.baseline_ms // rule.window_ms
            average = usd(self._baseline(rule, tenant, subject, first)) / periods
            limit = max(rule.factor * average, rule.minimum)
            resolve_limit = max(rule.factor * average, rule.resolve_at if rule.resolve_below
                                is not None else rule.minimum)
            return Reading(value, limit, value > limit and value >= rule.minimum,
                           value <= resolve_limit or value < rule.minimum, None,
                           lambda: (f"{window()} vs {rule.factor}x avg of previous "
                                    f"{format_duration(rule.baseline_ms)}", f"{value:f}"))
        if rule.metric in (ERROR_RATE, ALERT_COUNT):
            count = Decimal(sum(r["n"] for r in rows))
            if rule.metric == ALERT_COUNT:
                return Reading(count, rule.threshold, count > rule.threshold,
                               count <= rule.resolve_at, None,
                               lambda: (f"last {rule.window}", f"{count}"))
            seconds = Decimal(rule.window_ms) / 1000
            rate = count / seconds
            # compare counts, not a rounded rate: count > threshold x seconds is exact
            return Reading(rate, rule.threshold, count > rule.threshold * seconds,
                           count <= rule.resolve_at * seconds, None,
                           lambda: (window(), f"{rate.quantize(Decimal('0.001'))}"))
        # latency_p95: nearest rank over the histogram; the threshold is a bound, so the
        # comparison with it is exact
        bounds = self._bounds(rule)
        hist = [0] * (len(bounds) + 1)
        for r in rows:
            if len(r.get("h", ())) == len(hist):    # rows from before a threshold change: skipped
                for i, c in enumerate(r["h"]):
                    hist[i] += c
        n = sum(hist)
        if n == 0:
            return Reading(Decimal(0), rule.threshold, False, True, None, lambda: (window(), "0"))
        rank, seen, index = (95 * n + 99) // 100, 0, 0
        for index, c in enumerate(hist):
            seen += c
            if seen >= rank:
                break
        p95 = Decimal(bounds[index]) if index < len(bounds) else Decimal(bounds[-1] + 1)
        text = (f"{p95}" if index < len(bounds) else f">{bounds[-1]}")
        enough = n >= rule.min_samples
        return Reading(p95, rule.threshold, enough and p95 > rule.threshold,
                       not enough or p95 <= rule.resolve_at, None,
                       lambda: (window(), f"{text} (histogram bound, {n} requests)"))

    def _baseline(self, rule: Rule, tenant: str, subject: str, first: int) -> int:
        """Nano-dollars in the baseline buckets before ``first``. They lie in the past, so
        the sum is cached until the window moves or a late event lands in them (_add)."""
        key = SEP.join((rule.name, tenant, subject))
        cached = self._baselines.get(key)
        if cached is None or cached[0] != first:
            rows = self._rows(rule, tenant, subject, first - rule.baseline_ms, first - rule.step_ms)
            cached = self._baselines[key] = (first, sum(r["n"] for r in rows))
        return cached[1]

    def _bounds(self, rule: Rule) -> list[int]:
        bounds = self._latency_bounds.get(rule.name)
        if bounds is None:
            bounds = self._latency_bounds[rule.name] = latency_bounds(rule)
        return bounds

    # --- deciding ----------------------------------------------------------------------

    def _alert(self, rule: Rule, tenant: str, subject: str, state: str, episode: int,
               reading: Reading, at_ms: int) -> Alert:
        what = {SPEND: "spend (USD)", SPIKE: "spend (USD)", ERROR_RATE: "errors/s",
                LATENCY_P95: "P95 latency (ms)", ALERT_COUNT: "alerts"}[rule.metric]
        who = f"{rule.scope} {subject} of {tenant}" if subject else (
            "all tenants" if tenant == "*" else f"tenant {tenant}")
        verb = "above" if state == FIRING else "back at or under"
        limit = reading.threshold if state == FIRING or rule.tumbling else (
            rule.resolve_at if rule.metric != SPIKE else reading.threshold)
        message = (f"{rule.description + ': ' if rule.description else ''}{what} of {who} "
                   f"{reading.text} {verb} {limit} over {reading.window}")
        if state == RESOLVED and rule.tumbling:
            message = f"{rule.description + ': ' if rule.description else ''}the window of " \
                      f"{who} that fired has ended; {what} now {reading.text} over {reading.window}"
        return Alert(alert_id=alert_id(rule.name, tenant, subject, episode, state), rule=rule.name,
                     state=state, severity=rule.severity, tenant=tenant, subject=subject,
                     value=reading.text.split(" ")[0], threshold=format(reading.threshold.normalize(), "f"),
                     window=reading.window, message=message, at_ms=at_ms,
                     labels={"metric": rule.metric, "scope": rule.scope,
                             "episode": str(episode), **rule.labels})

    def decide(self, rule: Rule, tenant: str, subject: str, now_ms: int, partition: int,
               timer: bool = False) -> Decision:
        """Compare the rule's reading with the subject's state. From the stream (``timer``
        false) it may fire and resolve; from the timer only resolve, never write."""
        key = SEP.join((rule.name, tenant, subject))
        st = dict(self.states.get(key) or {"s": OK})
        out = Decision()
        resolved_by_timer = self.timer_resolved.get(key)
        if st["s"] == FIRING and resolved_by_timer and resolved_by_timer[0] == alert_id(
                rule.name, tenant, subject, st["ep"], RESOLVED):
            st = {"s": OK}
            out.writes[key] = None
        reading = self.read(rule, tenant, subject, now_ms)

        def fire(episode: int) -> None:
            out.alerts.append(self._alert(rule, tenant, subject, FIRING, episode, reading, now_ms))
            out.writes[key] = {"s": FIRING, "ep": episode, "p": partition, "at": now_ms}

        def resolve() -> None:
            out.alerts.append(self._alert(rule, tenant, subject, RESOLVED, st["ep"], reading, now_ms))
            out.writes[key] = None

        if rule.tumbling:
            if st["s"] == FIRING and reading.episode < st["ep"]:
                pass        # a late event of an earlier window: counted, decides nothing
            elif st["s"] == FIRING and (reading.episode > st["ep"] or reading.cleared):
                resolve()
                st = {"s": OK}
            if st["s"] == OK and reading.breached and not timer:
                fire(reading.episode)
        elif st["s"] == FIRING:
            if reading.cleared:
                resolve()
        elif timer:
            pass
        elif reading.breached:
            if rule.for_ms == 0:
                fire(now_ms)
            elif st["s"] == PENDING and now_ms - st["since"] >= rule.for_ms:
                fire(st["since"])
            elif st["s"] != PENDING:
                out.writes[key] = {"s": PENDING, "since": now_ms, "p": partition, "at": now_ms}
        elif st["s"] == PENDING:
            out.writes[key] = None
        if timer:
            out.writes.clear()
        return out

    # --- the three entry points ----------------------------------------------------------

    def observe_usage(self, usage: Usage, partition: int, offset: int) -> Decision:
        """Count one Usage event (once, by offset) and evaluate every usage rule for it."""
        t = usage.completed_at_ms
        now = self._watermark(partition, t)
        # timer resolutions first: a decision below may re-fire the same subject
        out = Decision(writes=self.settle_timer_resolutions(partition))
        for rule in self.rules:
            who = subject_of(rule, usage)
            if who is None:
                continue
            tenant, subject = who
            counts = True
            if rule.metric in (SPEND, SPIKE):
                counts = usage.cost_nanos > 0
                if counts:
                    self._add(rule, tenant, subject, t, partition, offset, amount=usage.cost_nanos)
            elif rule.metric == ERROR_RATE:
                counts = usage.status != "ok" and usage.error_code in rule.codes
                if counts:
                    self._add(rule, tenant, subject, t, partition, offset, amount=1)
            elif rule.metric == LATENCY_P95:
                self._add(rule, tenant, subject, t, partition, offset, amount=1,
                          latency_ms=latency_of(rule, usage))
            # An event that adds nothing cannot start an alert: evaluate only subjects it
            # counts for (even when re-delivered: the decision it led to may be unpublished)
            # and subjects with an open state (pending may fire, firing may resolve).
            if counts or SEP.join((rule.name, tenant, subject)) in self.states:
                out.merge(self.decide(rule, tenant, subject, self._at(rule, t, now), partition))
        return out

    def _watermark(self, partition: int, t_ms: int) -> int:
        """The latest event time seen on ``partition`` (in memory; restarts from the next event)."""
        now = max(t_ms, self._seen.get(partition, 0))
        self._seen[partition] = now
        return now

    @staticmethod
    def _at(rule: Rule, t_ms: int, now_ms: int) -> int:
        """When to evaluate: a tumbling window at the event's own time (a late event counts
        in, and can only decide for, its own window); a sliding window at the partition's
        latest time, so a late event never re-evaluates the past."""
        return t_ms if rule.tumbling else now_ms

    def observe_alert(self, alert: Alert, partition: int, offset: int) -> Decision:
        """Count one Alert (once, by alert id) for the alert_count rules matching its rule."""
        now = self._watermark(partition, alert.at_ms)
        out = Decision(writes=self.settle_timer_resolutions(partition))
        for rule in self.rules:
            if rule.metric != ALERT_COUNT:
                continue
            if alert.rule in rule.alert_rules and alert.state == FIRING:
                self._add(rule, "*", "", alert.at_ms, partition, offset, amount=1,
                          ident=alert.alert_id)
            out.merge(self.decide(rule, "*", "", now, partition))
        return out

    def due_resolutions(self, now_ms: int, partitions: set[int]) -> list[tuple[str, int, Alert]]:
        """For the timer: resolutions whose condition holds at ``now_ms`` for subjects on
        ``partitions`` (those this worker processes) and not yet published by the timer.
        Writes nothing; after publishing, call ``timer_published``."""
        due = []
        for key, st in list(self.states.items()):
            if st.get("s") != FIRING or st.get("p") not in partitions or key in self.timer_resolved:
                continue
            name, tenant, subject = key.split(SEP)
            rule = self.by_name.get(name)
            if rule is None:
                continue
            for alert in self.decide(rule, tenant, subject, now_ms, st["p"], timer=True).alerts:
                due.append((key, st["p"], alert))
        return due

    def timer_published(self, key: str, partition: int, alert: Alert) -> None:
        self.timer_resolved[key] = (alert.alert_id, partition)

    def settle_timer_resolutions(self, partition: int) -> dict[str, dict | None]:
        """State deletions for timer-published resolutions of ``partition``: applied by the
        next event of that partition (only then may its table rows be written)."""
        return {key: None for key, (_, p) in self.timer_resolved.items()
                if p == partition and key in self.states}

    def retain_partitions(self, partitions: set[int]) -> None:
        """After a rebalance: forget timer resolutions of partitions this worker lost (their
        new owner re-publishes them, with the same alert ids)."""
        for key, (_, p) in list(self.timer_resolved.items()):
            if p not in partitions:
                del self.timer_resolved[key]
        self._last_sweep = {p: t for p, t in self._last_sweep.items() if p in partitions}
        self._baselines.clear()         # rows of a partition that came back may have changed

    def firing(self, partitions: set[int] | None = None) -> list[dict]:
        """Open states (firing, pending) for a status view."""
        rows = []
        for key, st in list(self.states.items()):
            if partitions is not None and st.get("p") not in partitions:
                continue
            rule, tenant, subject = key.split(SEP)
            resolved = key in self.timer_resolved
            rows.append({"rule": rule, "tenant": tenant, "subject": subject,
                         "state": RESOLVED if resolved else st.get("s"), **{
                             k: v for k, v in st.items() if k != "s"}})
        return rows

    def apply(self, writes: dict[str, dict | None]) -> None:
        for key, value in writes.items():
            if value is None:
                self.states.pop(key, None)
                self.timer_resolved.pop(key, None)
            else:
                self.states[key] = value
                self.timer_resolved.pop(key, None)

    def sweep(self, partition: int, now_ms: int, interval_ms: int) -> int:
        """Drop this partition's bucket rows no rule reads any more (from the stream only)."""
        if now_ms - self._last_sweep.get(partition, 0) < interval_ms:
            return 0
        self._last_sweep[partition] = now_ms
        dropped = 0
        for key, row in list(self.buckets.items()):
            rule = self.by_name.get(key.split(SEP, 1)[0])
            if row.get("p") == partition and (rule is None or row["t"] + rule.keep_ms < now_ms):
                del self.buckets[key]
                dropped += 1
        return dropped
