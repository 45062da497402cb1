"""Window arithmetic for the cost monitor: durations as written in alert_rules.yaml, and
tumbling windows aligned to the epoch (fixed lengths) or to the UTC calendar (week, month),
so every worker and every replay puts an event time in the same window."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

SECOND_MS = 1000
_UNITS = {"ms": 1, "s": SECOND_MS, "m": 60 * SECOND_MS, "h": 3600 * SECOND_MS,
          "d": 86400 * SECOND_MS}
_NAMED = {"minute": "1m", "hour": "1h", "day": "1d"}
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
WEEK, MONTH = "week", "month"
_MONDAY_OFFSET_MS = 4 * 86400 * SECOND_MS        # 1970-01-01 was a Thursday


def parse_duration(text: str) -> int:
    """``"90s"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"hour"``, ``"day"`` -> milliseconds (> 0)."""
    text = _NAMED.get(text, text)
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"a duration like 30s, 5m, 1h, 1d (got {text!r})")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_duration(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % _UNITS[unit] == 0:
            return f"{ms // _UNITS[unit]}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class Tumbling:
    """Back-to-back windows: a fixed length aligned to the epoch, or a UTC calendar week
    (from Monday) or month."""
    length_ms: int = 0          # 0 for calendar windows
    calendar: str = ""          # "" | week | month

    @classmethod
    def parse(cls, text: str) -> "Tumbling":
        if text == MONTH:
            return cls(calendar=MONTH)
        if text == WEEK:
            return cls(calendar=WEEK)
        return cls(length_ms=parse_duration(text))

    def start(self, t_ms: int) -> int:
        if self.calendar == MONTH:
            d = datetime.fromtimestamp(t_ms / 1000, timezone.utc)
            return int(datetime(d.year, d.month, 1, tzinfo=timezone.utc).timestamp() * 1000)
        if self.calendar == WEEK:
            week = 7 * 86400 * SECOND_MS
            return (t_ms - _MONDAY_OFFSET_MS) // week * week + _MONDAY_OFFSET_MS
        return t_ms // self.length_ms * self.length_ms

    def end(self, start_ms: int) -> int:
        if self.calendar == MONTH:
            d = datetime.fromtimestamp(start_ms / 1000, timezone.utc)
            year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
            return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp() * 1000)
        if self.calendar == WEEK:
            return start_ms + 7 * 86400 * SECOND_MS
        return start_ms + self.length_ms

    @property
    def max_length_ms(self) -> int:
        return {MONTH: 31 * 86400 * SECOND_MS, WEEK: 7 * 86400 * SECOND_MS}.get(
            self.calendar, self.length_ms)

    def label(self, start_ms: int) -> str:
        d = datetime.fromtimestamp(start_ms / 1000, timezone.utc)
        if self.calendar == MONTH:
            return f"month {d:%Y-%m}"
        if self.calendar == WEEK:
            return f"week from {d:%Y-%m-%d}"
        return f"{format_duration(self.length_ms)} from {d:%Y-%m-%dT%H:%M:%SZ}"


def iso(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
