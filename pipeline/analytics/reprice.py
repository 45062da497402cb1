"""Re-price a period of the ledger under another price table (read-only "what if").

Each usage row keeps its tokens and the price version it was billed under, so history can be
priced again: ``reprice`` sums the period's tokens per served model (``usage FINAL``, so a
re-delivered request counts once) and prices them with the given catalog at list price
(no batch discount: the ledger does not record which rows a Batch API discounted). Nothing
is written. Old and new totals are exact Decimals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.analytics.clickhouse import ClickHouse
from pipeline.analytics.query import Query, exact_decimal, list_price_usd
from pipeline.catalog import Catalog


@dataclass(frozen=True)
class RepriceLine:
    """One served model: what its rows were billed and what the new prices make them."""

    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    old_price_versions: str       # comma-separated versions the rows were billed under
    old_cost_usd: Decimal
    new_cost_usd: Decimal         # = old when the new catalog does not know the model
    priced: bool                  # False: model unknown to the new catalog (kept at old cost)

    @property
    def difference_usd(self) -> Decimal:
        return self.new_cost_usd - self.old_cost_usd


@dataclass(frozen=True)
class Repricing:
    price_version: str            # the new catalog's version
    lines: tuple[RepriceLine, ...]

    @property
    def old_cost_usd(self) -> Decimal:
        return sum((line.old_cost_usd for line in self.lines), Decimal("0E-9"))

    @property
    def new_cost_usd(self) -> Decimal:
        return sum((line.new_cost_usd for line in self.lines), Decimal("0E-9"))

    @property
    def difference_usd(self) -> Decimal:
        return self.new_cost_usd - self.old_cost_usd


def reprice(client: ClickHouse, catalog: Catalog, *, since: datetime | None = None,
            until: datetime | None = None, tenant: str | None = None) -> Repricing:
    """Old vs new cost per served model for ``since <= created_at < until``."""
    q = Query(client, "raw", since, until, tenant)
    rows = q.run(f"""
        SELECT served_model, count(), sum(prompt_tokens), sum(completion_tokens),
               sum(cached_tokens), sum(least(cached_tokens, prompt_tokens)),
               arrayStringConcat(arraySort(groupUniqArray(price_version)), ','),
               sum(cost_usd)
        FROM {q.table} WHERE {q.where}
        GROUP BY served_model ORDER BY served_model""")
    lines: list[RepriceLine] = []
    for model, n, prompt, completion, cached, billable_cached, versions, old in rows:
        old_usd: Decimal = exact_decimal(old)
        known: Any = catalog.resolve(str(model)) if model else None
        new_usd = (list_price_usd(catalog, str(model), int(prompt) - int(billable_cached),
                                  int(billable_cached), int(completion))
                   if known is not None else old_usd)
        lines.append(RepriceLine(str(model), int(n), int(prompt), int(completion), int(cached),
                                 str(versions), old_usd, new_usd, known is not None))
    return Repricing(catalog.price_version, tuple(lines))
