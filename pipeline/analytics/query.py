"""How the analyst queries are built: the period filter (epoch ms, raw table or a rollup),
the ``--by`` dimensions, exact money out of ClickHouse and list prices from the catalog.
The questions themselves are pipeline/analytics/queries.py; re-pricing is reprice.py."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal, Sequence

from pipeline.analytics.clickhouse import ClickHouse
from pipeline.catalog import TOKENS_PER_MTOK, Catalog

PERCENTILES = (0.5, 0.95, 0.99)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NANO = Decimal(1).scaleb(-9)

Source = Literal["raw", "rollup"]

#: ``--by`` dimensions: name -> (SQL over usage, SQL over a rollup, or None if it has none).
#: Teams and end users are named within their tenant ("acme/search").
DIMENSIONS: dict[str, tuple[str, str | None]] = {
    "tenant": ("tenant", "tenant"),
    "team": ("concat(tenant, '/', team)", "concat(tenant, '/', team)"),
    "user": ("concat(tenant, '/', end_user)", None),
    "model": ("served_model", "served_model"),
    "provider": ("provider", "provider"),
    "deployment": ("deployment", "deployment"),
    "rule": ("route_rule", "route_rule"),
    "day": ("toString(toDate(created_at))", "toString(toDate({time}))"),
}


def to_epoch_ms(moment: datetime) -> int:
    """Exact epoch ms of a timezone-aware datetime (naive ones are refused: ambiguous)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} is naive; pass a timezone-aware datetime")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def exact_decimal(value: Any) -> Decimal:
    """A money sum from ClickHouse: Decimal(38, 9) arrives as a Decimal; never via float."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    raise TypeError(f"expected an exact decimal from ClickHouse, got {type(value).__name__}")


def list_price_usd(catalog: Catalog, model: str, uncached_prompt_tokens: int,
                   cached_tokens: int, completion_tokens: int) -> Decimal:
    """Exact USD of summed tokens at ``model``'s list prices (no batch discount).

    Pricing summed tokens equals summing per-request costs whenever every price has at most
    three decimals per MTok (then each token is a whole number of nano-dollars); finer
    prices can differ from per-request rounding by under one nano-dollar per request.
    """
    m = catalog.model(model)
    return ((uncached_prompt_tokens * m.input_per_mtok + cached_tokens * m.cached_input_per_mtok
             + completion_tokens * m.output_per_mtok) / TOKENS_PER_MTOK).quantize(
        _NANO)


class Query:
    """Table, time filter and measures for one question over raw usage or a rollup."""

    def __init__(self, client: ClickHouse, source: Source, since: datetime | None,
                 until: datetime | None, tenant: str | None):
        self.client = client
        self.source = source
        self.params: dict[str, Any] = {}
        clauses = ["1"]
        if source == "raw":
            self.table, self.time, self.requests = "usage FINAL", "created_at", "count()"
            for name, moment, op in (("since", since, ">="), ("until", until, "<")):
                if moment is not None:
                    clauses.append(f"created_at {op} "
                                   f"fromUnixTimestamp64Milli(%({name}ms_text)s, 'UTC')")
                    self.params[f"{name}ms_text"] = to_epoch_ms(moment)
        elif source == "rollup":
            self.requests = "sum(requests)"
            if all(_whole_day(m) for m in (since, until)):
                self.table, self.time = "usage_daily", "day"
                for name, moment, op in (("since", since, ">="), ("until", until, "<")):
                    if moment is not None:
                        clauses.append(f"day {op} toDate(%({name})s)")
                        self.params[name] = _utc_date(moment)
            else:
                self.table, self.time = "usage_minute", "minute"
                for name, moment, op in (("since", since, ">="), ("until", until, "<")):
                    if moment is not None:
                        if not _whole_minute(moment):
                            raise ValueError(f"{name}={moment.isoformat()}: the rollup source "
                                             "needs whole minutes (or use source='raw')")
                        clauses.append(f"minute {op} toDateTime(%({name}_s)s, 'UTC')")
                        self.params[f"{name}_s"] = to_epoch_ms(moment) // 1000
        else:
            raise ValueError(f"source must be 'raw' or 'rollup', not {source!r}")
        if tenant is not None:
            clauses.append("tenant = %(tenant)s")
            self.params["tenant"] = tenant
        self.where = " AND ".join(clauses)

    def dimension(self, by: str | None) -> str:
        if by not in DIMENSIONS:
            raise ValueError(f"unknown dimension {by!r}; expected one of {sorted(DIMENSIONS)}")
        raw, rollup = DIMENSIONS[by]
        if self.source == "raw":
            return raw
        if rollup is None:
            raise ValueError(f"the rollups have no {by!r} dimension; use source='raw'")
        return rollup.format(time=self.time)

    def run(self, sql: str) -> Sequence[Sequence[Any]]:
        return self.client.query(sql, self.params).result_rows


def _whole_day(moment: datetime | None) -> bool:
    if moment is None:
        return True
    to_epoch_ms(moment)  # refuses naive datetimes
    return to_epoch_ms(moment) % 86_400_000 == 0


def _whole_minute(moment: datetime) -> bool:
    return to_epoch_ms(moment) % 60_000 == 0


def _utc_date(moment: datetime) -> date:
    return moment.astimezone(timezone.utc).date()


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[00:00, next 00:00) UTC of ``day``: a convenient period for one day."""
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start, start + timedelta(days=1)
