"""`llmpipe dead-letter list|replay`: look at the dead-letter topic and, after the cause is
fixed, put records back where they came from.

A dead letter (schema ``DeadLetter``) keeps the original record's topic, partition, offset,
key and value beside the reason. ``replay`` publishes the original key and value again to
the original topic, so the record takes its normal path: a request is admitted by intake
(its id is checked like any other, so a request that did get an answer is a duplicate and
is not billed again), a usage row goes to the ledger (which keeps one row per request). A
record that fails again is dead-lettered again, with today's reason. Filters select what
to replay (reason code, agent, source topic, tenant, time); ``--dry-run`` only counts.
Records without a value (tombstones) are never replayed."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

from pipeline.analytics.report import parse_moment
from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import DeadLetter
from pipeline.kafka import clients
from pipeline.settings import Settings


@dataclass(frozen=True)
class Filter:
    reasons: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    source_topics: frozenset[str] = frozenset()
    tenant: str | None = None
    since_ms: int = 0
    until_ms: int | None = None

    def keeps(self, d: DeadLetter) -> bool:
        return ((not self.reasons or d.reason_code in self.reasons)
                and (not self.agents or d.agent in self.agents)
                and (not self.source_topics or d.source_topic in self.source_topics)
                and (self.tenant is None or d.tenant == self.tenant)
                and d.at_ms >= self.since_ms
                and (self.until_ms is None or d.at_ms < self.until_ms))


async def read_dead_letters(bootstrap: str, topic: str, codec: Codec,
                            timeout_s: float = 60.0) -> tuple[list[DeadLetter], int]:
    """Every dead letter on ``topic`` (and how many records could not be read as one)."""
    letters, unreadable = [], 0
    for record in await clients.read_to_end(bootstrap, topic, timeout_s):
        try:
            letters.append(codec.decode(record.value, DeadLetter))
        except DecodeError:
            unreadable += 1
    return letters, unreadable


async def replay(bootstrap: str, letters: list[DeadLetter]) -> int:
    """Publish each letter's original key and value to its original topic; how many."""
    producer = clients.producer(bootstrap, client_id="llmpipe-dead-letter-replay")
    await producer.start()
    try:
        sent = [await producer.send(d.source_topic, key=d.key, value=d.value) for d in letters]
        for future in sent:
            await future
    finally:
        await producer.stop()
    return len(letters)


def _ms(text: str | None) -> int | None:
    try:
        moment = parse_moment(text or None)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return None if moment is None else int(moment.timestamp() * 1000)


def command(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    wanted = Filter(frozenset(args.reason or ()), frozenset(args.agent or ()),
                    frozenset(args.source_topic or ()), args.tenant, _ms(args.since) or 0,
                    _ms(args.until))
    letters, unreadable = asyncio.run(read_dead_letters(bootstrap, settings.topics.dead_letter,
                                                        Codec()))
    chosen = [d for d in letters if wanted.keeps(d)]
    empty = [d for d in chosen if d.value is None]
    chosen = [d for d in chosen if d.value is not None][:args.limit or None]
    by = Counter((d.reason_code, d.agent, d.source_topic) for d in chosen)
    print(f"{settings.topics.dead_letter}: {len(letters)} dead letters"
          + (f" ({unreadable} unreadable)" if unreadable else "")
          + f", {len(chosen)} match" + (f" ({len(empty)} without a value left out)" if empty else ""))
    for (reason, agent, source), n in by.most_common():
        print(f"  {n:>6}  {reason:<28} agent {agent:<16} from {source}")
    if args.action == "list":
        for d in chosen[:args.show]:
            print(f"  {datetime.fromtimestamp(d.at_ms / 1000, timezone.utc):%Y-%m-%d %H:%M:%S} "
                  f"{d.source_topic}[{d.source_partition}]@{d.source_offset} "
                  f"{d.reason_code}: {d.reason[:120]}")
        return 0
    if args.dry_run or not chosen:
        print("dry run: nothing published" if args.dry_run else "nothing to replay")
        return 0
    print(f"replayed {asyncio.run(replay(bootstrap, chosen))} records to their source topics")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    dl = sub.add_parser("dead-letter", help="list dead letters, or replay them after a fix")
    dsub = dl.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--reason", action="append", help="reason code (repeatable)")
    common.add_argument("--agent", action="append", help="agent that dead-lettered it")
    common.add_argument("--source-topic", action="append", help="the record's original topic")
    common.add_argument("--tenant")
    common.add_argument("--since", help="dead-lettered at or after (ISO time)")
    common.add_argument("--until", help="dead-lettered before (ISO time)")
    common.add_argument("--limit", type=int, help="at most this many")
    common.add_argument("--bootstrap")
    ls = dsub.add_parser("list", parents=[common], help="count (and show) the matching ones")
    ls.add_argument("--show", type=int, default=20, help="records to print")
    rp = dsub.add_parser("replay", parents=[common],
                         help="publish the matching records again to their source topics")
    rp.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    dl.set_defaults(func=command)
