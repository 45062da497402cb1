"""Reports as text for a person, or CSV/JSON for a program: tables of aligned columns,
money as ``$1,234.567890`` (display only; the data stays exact), decimals and datetimes
as plain strings."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Sequence

_MICRO_USD = Decimal("0.000001")

def format_usd(amount: Decimal) -> str:
    """``$1,234.567890``: six decimals, rounded half up, for display only."""
    value = amount.quantize(_MICRO_USD, rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.6f}"


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")  # "0.000000000", not "0E-9"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def count_text(n: int) -> str:
    return f"{n:,}"


def ms_text(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def section(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  " + "  ".join([first, *rest]).rstrip()

    return ["", title, "  " + "-" * (sum(widths) + 2 * (len(widths) - 1)), line(header),
            *[line(r) for r in rows]]


#: Computed row properties shown next to the dataclass fields when a row has them.
_DERIVED = ("saved_usd", "difference_usd", "cut")


def row_dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Dataclass rows as ordered dicts (fields, then derived money); the ``key`` column is
    left out when it is None in every row (an ungrouped report). Other None values stay
    (a latency row's TTFT when nothing streamed: ``-`` in a table, null in JSON), so the
    columns of a report do not depend on its data."""
    dicts = []
    for row in rows:
        d = asdict(row)
        d.update({name: getattr(row, name) for name in _DERIVED if hasattr(row, name)})
        dicts.append(d)
    if dicts and "key" in dicts[0] and all(d["key"] is None for d in dicts):
        for d in dicts:
            del d["key"]
    return dicts


def render_rows(rows: Sequence[Any], fmt: str = "table", title: str = "") -> str:
    """``table`` (aligned, money as $ to 6 decimals), ``csv`` or ``json`` (exact decimals)."""
    dicts = row_dicts(rows)
    if fmt == "json":
        return json.dumps(plain(dicts), indent=2) + "\n"
    header = list(dicts[0]) if dicts else []
    if fmt == "csv":
        import csv
        import io
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for d in dicts:
            writer.writerow([plain(v) for v in d.values()])
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"format must be table, csv or json, not {fmt!r}")
    if not dicts:
        return (title + "\n" if title else "") + "  (no rows)\n"
    body = [[_cell(k, v) for k, v in d.items()] for d in dicts]
    lines = section(title, header, body)[1:] if title else section("", header, body)[3:]
    return "\n".join(lines) + "\n"


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return format_usd(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return count_text(value)
    if isinstance(value, float):
        if name in ("share", "rate"):
            return f"{value * 100:.2f}%"
        return ms_text(value)
    return str(value) if value != "" else "(none)"
