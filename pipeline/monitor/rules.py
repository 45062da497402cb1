"""Alert rules of the cost monitor (alert_rules.yaml), loaded once and validated at start-up:
spend per tumbling window, spend-rate spike against a trailing baseline, error rates, P95
latency, and counts of other Alerts (breaker openings). Errors name the file and the key."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, Section, config_path, load_yaml
from pipeline.monitor.windows import Tumbling, format_duration, parse_duration

# metric -> what it measures
SPEND, SPIKE, ERROR_RATE, LATENCY_P95, ALERT_COUNT = (
    "spend", "spend_spike", "error_rate", "latency_p95", "alert_count")
METRICS = (SPEND, SPIKE, ERROR_RATE, LATENCY_P95, ALERT_COUNT)
USAGE_SCOPES = ("tenant", "team", "model", "deployment")
SEVERITIES = ("info", "warning", "critical")
LATENCIES = ("pipeline", "provider", "total")
FIRING, RESOLVED, PENDING, OK = "firing", "resolved", "pending", "ok"
# Latency histogram bounds (ms); a rule's threshold is added, so "P95 > threshold" is exact.
LATENCY_BOUNDS_MS = (10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000,
                     10000, 20000, 30000, 60000, 120000)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    scope: str
    threshold: Decimal
    severity: str = "warning"
    window: str = "1h"                  # as written: "1h", "month", "20s"
    tumbling: Tumbling | None = None    # spend: back-to-back windows, resolved when one ends
    window_ms: int = 0                  # sliding metrics: how far back the value looks
    step_ms: int = 0                    # sliding metrics: bucket length (divides window_ms)
    for_ms: int = 0                     # sliding metrics: how long the breach must last
    resolve_below: Decimal | None = None  # sliding metrics: resolve at or under this (hysteresis)
    baseline_ms: int = 0                # spend_spike: trailing baseline before the window
    factor: Decimal = Decimal(0)        # spend_spike: fire above factor x baseline average
    minimum: Decimal = Decimal(0)       # spend_spike: and at least this much (USD)
    codes: tuple[str, ...] = ()         # error_rate: error codes counted
    latency: str = "pipeline"           # latency_p95: which latency of the Usage
    min_samples: int = 1                # latency_p95: fewer requests than this never fire
    alert_rules: tuple[str, ...] = ()   # alert_count: Alert.rule values counted
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return "alerts" if self.metric == ALERT_COUNT else "usage"

    @property
    def keep_ms(self) -> int:
        """How long a bucket row is still read after its window started."""
        if self.tumbling:
            return self.tumbling.max_length_ms
        return self.window_ms + self.baseline_ms + self.step_ms

    @property
    def resolve_at(self) -> Decimal:
        return self.threshold if self.resolve_below is None else self.resolve_below


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    timer_interval_s: float = 5.0
    sweep_interval_s: float = 60.0
    path: str = ""

    def for_source(self, source: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.source == source)

    def get(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def _duration(s: Section, name: str, default: Any = ...) -> int:
    value = s.raw(name, default)
    if value == 0:
        return 0
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise ConfigError(s.path, s.where(name), str(exc)) from None


def _choice(s: Section, name: str, options: Iterable[str], default: Any = ...) -> str:
    value = s.raw(name, default)
    options = tuple(options)
    if value not in options:
        raise ConfigError(s.path, s.where(name), f"one of {', '.join(options)}", value)
    return value


def _rule(s: Section) -> Rule:
    allowed = {"name", "metric", "scope", "window", "step", "threshold", "severity", "for",
               "resolve", "baseline", "factor", "minimum", "codes", "latency", "min_samples",
               "rules", "description", "labels"}
    unknown = sorted(set(s.data) - allowed)
    if unknown:
        raise ConfigError(s.path, s.where(unknown[0]), f"one of the keys {', '.join(sorted(allowed))}")
    name = s.str("name")
    if not _NAME.match(name):
        raise ConfigError(s.path, s.where("name"), "lower_snake_case", name)
    metric = _choice(s, "metric", METRICS)
    scope = _choice(s, "scope", ("global",) if metric == ALERT_COUNT else USAGE_SCOPES)
    labels = s.raw("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError(s.path, s.where("labels"), "a mapping of strings", labels)
    common = dict(name=name, metric=metric, scope=scope, severity=_choice(s, "severity", SEVERITIES, "warning"),
                  threshold=s.decimal("threshold", 0 if metric == SPIKE else ...),
                  window=str(s.raw("window")),
                  description=str(s.raw("description", "")), labels=dict(labels))
    if metric == SPEND:
        try:
            tumbling = Tumbling.parse(str(s.raw("window")))
        except ValueError as exc:
            raise ConfigError(s.path, s.where("window"), f"month, week or {exc}") from None
        resolve = _choice(s, "resolve", ("window_end",), "window_end")
        for extra in ("for", "step", "baseline"):
            if s.has(extra):
                raise ConfigError(s.path, s.where(extra), "no value: spend rules sum a tumbling "
                                  f"window and resolve at its end ({resolve})")
        return Rule(**common, tumbling=tumbling)

    window_ms = _duration(s, "window")
    step_ms = _duration(s, "step", format_duration(max(1000, window_ms // 10)))
    if step_ms <= 0 or window_ms % step_ms:
        raise ConfigError(s.path, s.where("step"), f"a duration that divides the window "
                          f"({s.raw('window')})", s.raw("step", None))
    resolve = s.raw("resolve", None)
    resolve_below = None
    if resolve is not None:
        r = s.section("resolve")
        resolve_below = r.decimal("below")
        if resolve_below > common["threshold"]:
            raise ConfigError(s.path, r.where("below"), "a value <= threshold", resolve)
    rule = dict(common, window_ms=window_ms, step_ms=step_ms, for_ms=_duration(s, "for", 0),
                resolve_below=resolve_below)
    if metric == SPIKE:
        baseline_ms = _duration(s, "baseline")
        if baseline_ms % window_ms:
            raise ConfigError(s.path, s.where("baseline"), "a multiple of the window", s.raw("baseline"))
        factor = s.decimal("factor")
        if factor <= 0:
            raise ConfigError(s.path, s.where("factor"), "a decimal > 0", s.raw("factor"))
        return Rule(**rule, baseline_ms=baseline_ms, factor=factor,
                    minimum=s.decimal("minimum", 0))
    if metric == ERROR_RATE:
        return Rule(**rule, codes=tuple(s.str_list("codes")))
    if metric == LATENCY_P95:
        return Rule(**rule, latency=_choice(s, "latency", LATENCIES, "pipeline"),
                    min_samples=s.int("min_samples", 1, minimum=1))
    return Rule(**rule, alert_rules=tuple(s.str_list("rules")))


def load_rules(path: Path | None = None) -> RuleSet:
    """alert_rules.yaml -> RuleSet; a ConfigError names the file and the key."""
    path = path or config_path("alert_rules.yaml")
    root = Section(path, "", load_yaml(path))
    ev = root.section("evaluation") if root.has("evaluation") else Section(path, "evaluation", {})
    items = root.raw("rules")
    if not isinstance(items, list):
        raise ConfigError(path, "rules", "a list of rules", items)
    rules, seen = [], set()
    for i, item in enumerate(items):
        rule = _rule(Section(path, f"rules[{i}]", item))
        if rule.name in seen:
            raise ConfigError(path, f"rules[{i}].name", "a name used once", rule.name)
        seen.add(rule.name)
        rules.append(rule)
    for i, rule in enumerate(rules):
        loop = seen.intersection(rule.alert_rules)
        if loop:     # the monitor reads llm.alerts: counting its own alerts would feed back
            raise ConfigError(path, f"rules[{i}].rules", "names of alerts from other sources "
                              "(breaker_open, budget_hard, ...), not rules of this file",
                              sorted(loop)[0])
    timer = ev.number("timer_interval_s", 5.0)
    sweep = ev.number("sweep_interval_s", 60.0)
    if timer <= 0 or sweep <= 0:
        raise ConfigError(path, "evaluation", "positive timer_interval_s and sweep_interval_s")
    return RuleSet(tuple(rules), timer, sweep, str(path))
