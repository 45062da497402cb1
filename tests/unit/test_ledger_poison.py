"""A row ClickHouse refuses never holds back the rows around it: the batch is split until the
refused rows stand alone, those are dead-lettered with the reason and the rest stored; a
caller's date cannot explode the partitions; a long outage raises one alert (chDB)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import pytest

from pipeline.agents.ledger import SinkConsumer
from pipeline.analytics.clickhouse import ClickHouse, ClickHouseError
from pipeline.analytics.rows import DEAD_LETTERS_SINK, usage_row
from pipeline.analytics.writer import InsertRetry, LedgerFlushError, LedgerWriter, refused_rows
from pipeline.analytics.migrate import apply_migrations
from pipeline.events.models import DeadLetter
from pipeline.resilience.retry import RetryPolicy
from tests.unit.test_ledger_chdb import MIGRATIONS, FakeClock, FakeEvent, _decode, make_usage

NOW = int(time.time() * 1000)
MONTH_MS = 31 * 86_400_000


@pytest.fixture
def ledger(chdb_client: ClickHouse) -> ClickHouse:
    apply_migrations(chdb_client, MIGRATIONS)
    return chdb_client


class Poisoned:
    """The real client, but an INSERT holding a row of ``poison`` request ids is refused the
    way ClickHouse refuses data (a TYPE_MISMATCH); ``down`` fails every INSERT like an
    unreachable server."""

    def __init__(self, inner: ClickHouse, poison: set[str]):
        self.inner, self.poison, self.down = inner, poison, False
        self.inserts: list[int] = []

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.query(*args, **kwargs)

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str],
               settings: dict[str, Any] | None = None) -> int:
        if self.down:
            raise ClickHouseError("insert into usage failed: Connection refused")
        self.inserts.append(len(rows))
        if any(r[0] in self.poison for r in rows):
            raise ClickHouseError("insert into usage failed: Code: 53. DB::Exception: Type "
                                  "mismatch in VALUES section", 53)
        return self.inner.insert(table, rows, column_names, settings)


def test_which_errors_blame_the_rows():
    assert refused_rows(ClickHouseError("Code: 53. Type mismatch", 53))
    assert refused_rows(ClickHouseError("Code: 252. Too many partitions for single INSERT block "
                                        "(more than 100)", 252))
    assert not refused_rows(ClickHouseError("Code: 252. Too many parts (300). Merges are "
                                            "processing significantly slower", 252))
    assert not refused_rows(ClickHouseError("Connection refused"))
    assert not refused_rows(ClickHouseError("Code: 60. Table usage does not exist", 60))
    assert refused_rows(ClickHouseError("bad value", data_error=True))
    assert refused_rows(OverflowError("int too big to convert"))


def count(client: ClickHouse, table: str = "usage") -> int:
    return client.query(f"SELECT count() FROM {table}").result_rows[0][0]


async def test_a_refused_row_is_set_aside_and_its_neighbours_stored(ledger):
    client = Poisoned(ledger, {"bad-3", "bad-7"})
    writer = LedgerWriter(client, max_rows=16, clock=FakeClock())  # type: ignore[arg-type]
    for offset in range(16):
        rid = f"bad-{offset}" if offset in (3, 7) else f"ok-{offset}"
        writer.add(make_usage(rid), 0, offset)
    assert await writer.flush() == [(0, 15)]
    refused = writer.take_refused()
    assert [(r.partition, r.offset) for r in refused] == [(0, 3), (0, 7)]
    assert "Type mismatch" in refused[0].reason
    assert count(ledger) == 14 and writer.pending == 0 and writer.take_refused() == []


async def test_a_refused_row_in_an_insert_of_several_partitions_holds_back_none_of_them(ledger):
    """Every partition's rows go in one INSERT; when ClickHouse refuses it for a row, each
    partition's batch is tried alone and the guilty one split: the others land whole."""
    client = Poisoned(ledger, {"bad-1-2"})
    writer = LedgerWriter(client, max_rows=64, clock=FakeClock())  # type: ignore[arg-type]
    for partition in range(3):
        for offset in range(4):
            rid = f"bad-{partition}-{offset}" if (partition, offset) == (1, 2) else f"ok-{partition}-{offset}"
            writer.add(make_usage(rid), partition, offset)
    assert await writer.flush() == [(0, 3), (1, 3), (2, 3)]
    assert [(r.partition, r.offset) for r in writer.take_refused()] == [(1, 2)]
    assert count(ledger) == 11 and writer.pending == 0
    assert client.inserts[:4] == [12, 4, 4, 4]     # the group, then each partition alone


async def test_a_hundred_and_fifty_months_in_one_batch_are_all_stored(ledger):
    """Dead letters are partitioned by month of ``at``: a block of 150 months is refused
    whole by ClickHouse ("too many partitions"); split, every row lands. (Months ahead:
    older rows would fall to the table's 90-day TTL.)"""
    writer = LedgerWriter(ledger, max_rows=200, clock=FakeClock(), sink=DEAD_LETTERS_SINK,
                          token_prefix="dead_letters:llm.dead-letter")
    for i in range(150):
        writer.add(DeadLetter(source_topic="llm.requests", source_partition=0, source_offset=i,
                              reason_code="undecodable", reason="x", agent="intake",
                              at_ms=NOW + i * MONTH_MS), 0, i)
    assert await writer.flush() == [(0, 149)]
    assert writer.take_refused() == [] and count(ledger, "dead_letters") == 150


def test_a_callers_date_is_billed_near_completion_and_kept_aside():
    for claimed in (-2**63, -10**15, 10**15, 2**62, NOW - 40 * 86_400_000):
        row = usage_row(make_usage("r", created_at_ms=claimed, completed_at_ms=NOW))
        assert row[4] == NOW and row[-1] == claimed
    row = usage_row(make_usage("r", created_at_ms=NOW - 1000, completed_at_ms=NOW))
    assert row[4] == NOW - 1000 and row[-1] == 0


async def test_usage_of_150_caller_months_lands_in_one_insert(ledger):
    writer = LedgerWriter(ledger, max_rows=200, clock=FakeClock())
    for i in range(150):
        writer.add(make_usage(f"m{i}", created_at_ms=NOW - i * MONTH_MS, completed_at_ms=NOW), 0, i)
    assert await writer.flush() == [(0, 149)] and writer.inserts == 1
    assert count(ledger) == 150
    months = ledger.query("SELECT uniqExact(toYYYYMM(created_at)) FROM usage").result_rows[0][0]
    assert months <= 3


async def test_the_sink_dead_letters_a_refused_row_before_acking_it(ledger):
    client = Poisoned(ledger, {"bad"})
    writer = LedgerWriter(client, max_rows=4, clock=FakeClock())  # type: ignore[arg-type]
    acks: list[tuple[int, int]] = []
    order: list[str] = []

    async def reject(event: Any, code: str, reason: str) -> None:
        order.append(f"dead-letter {event.message.offset} {code} acked={len(acks)}")

    sink = SinkConsumer("usage", writer, _decode, InsertRetry(), reject)
    for offset, rid in enumerate(["a", "bad", "c", "d"]):
        await sink.handle(FakeEvent(0, offset, make_usage(rid), acks))
    await sink.drain()
    assert order == ["dead-letter 1 store_refused acked=0"]
    assert acks == [(0, 0), (0, 1), (0, 2), (0, 3)] and count(ledger) == 3
    assert sink.state()["rejected"] == 1


async def test_a_long_outage_raises_one_alert_and_its_end_another(ledger):
    client = Poisoned(ledger, set())
    clock = FakeClock()
    writer = LedgerWriter(client, max_rows=1, clock=clock)  # type: ignore[arg-type]
    calls: list[tuple[str, bool]] = []

    async def on_stall(sink: str, stalled: bool, outage_s: float, error: str) -> None:
        calls.append((sink, stalled))

    async def never(event: Any, code: str, reason: str) -> None:
        raise AssertionError("nothing is refused here")

    retry = InsertRetry(RetryPolicy(1.0, 8.0, jitter=0.0), clock=clock)
    sink = SinkConsumer("usage", writer, _decode, retry, never, stall_s=30.0, on_stall=on_stall)
    acks: list[tuple[int, int]] = []
    client.down = True
    await sink.handle(FakeEvent(0, 0, make_usage("r"), acks))
    for _ in range(12):                         # ~60 s of failing retries
        clock.now += retry.wait_s() + 0.01
        await sink.flush()
    assert calls == [("usage", True)] and acks == []
    client.down = False
    clock.now += retry.wait_s() + 0.01
    assert await sink.flush()
    assert calls == [("usage", True), ("usage", False)] and acks == [(0, 0)]
    assert count(ledger) == 1


async def test_a_transient_failure_is_not_blamed_on_rows(ledger):
    client = Poisoned(ledger, set())
    client.down = True
    writer = LedgerWriter(client, max_rows=8, clock=FakeClock())  # type: ignore[arg-type]
    for offset in range(8):
        writer.add(make_usage(f"t{offset}"), 0, offset)
    with pytest.raises(LedgerFlushError):
        await writer.flush()
    assert writer.take_refused() == [] and writer.pending == 8
    client.down = False
    assert await writer.flush() == [(0, 7)] and count(ledger) == 8
