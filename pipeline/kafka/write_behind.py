"""Changelog writes of a Faust table, coalesced per key and sent before every commit — the
record cache Kafka Streams puts in front of its state stores.

Faust sends one changelog record for every ``table[key] = value``. A table whose rows are
counters written for every event (the monitor's window sums: one row per alert rule per
Usage) sends the same keys over and over: most of what the worker produces. Wrapped in
``WriteBehind``, the table keeps its rows in memory exactly as before (reads see every
write at once), but the changelog gets only the latest value of each key, sent when Faust
commits offsets (every ``broker_commit_interval``, at a rebalance, at shutdown) or when
``max_pending`` keys wait.

Why nothing is lost: at the start of every commit these writes are handed to the producer,
right before Faust counts the offsets to commit (``_commit_tps``, no await between the
two), so every event those offsets cover made its writes before the flush. Before it
commits them (``_commit_offsets``) the commit waits until the broker has acknowledged each
write (Faust's own flush before a commit gives up after 0.1 s without progress, so it is
not relied on); if one is refused, that commit is skipped and the write queued again. So
an offset is never committed before the writes of the events up to it are on the broker.
A crash loses only writes of events whose offsets were not committed, and those events
are read again. (The wait must not come between the flush and the counting: events
acknowledged meanwhile would be counted with writes still queued.)

What a crash leaves is no longer a prefix of the writes: each row's value from the last
flush that reached the broker, and of the flush under way a prefix in the order of the
rows' last writes. A flush never runs between two writes with no await between them (at a
commit or a revocation it runs in another task; a full buffer flushes at the event loop's
next turn), so writes made together reach the changelog in the order they were made
unless a later write moves one of them. A table may use this when its rows stand that:
- the monitor's window rows each say which events they counted (the last offset);
- the tenancy table (pipeline/tenancy/state.py) writes an admission before its spend rows
  and keeps every change of the request in the admission, so whichever rows survive,
  reconciling re-applies what the spend rows miss.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer

log = logging.getLogger("llmpipe.write_behind")
#: How long a commit waits for the broker to acknowledge the writes (the producer's own
#: request timeout is at most 30 s); past it the commit is skipped and they go again.
ACK_TIMEOUT_S = 60.0
_commit_tps = FaustConsumer._commit_tps
_commit_offsets = FaustConsumer._commit_offsets
_tables: "weakref.WeakSet[WriteBehind]" = weakref.WeakSet()


class WriteBehind:
    """Wraps ``table`` (a Faust table) in place; returns nothing else to use."""

    def __init__(self, table: Any, max_pending: int = 10_000):
        self.table, self.max_pending = table, max_pending
        self._send = table.send_changelog          # Faust's own, bound
        self._pending: dict[tuple[int | None, Any], tuple[Any, Any, Any]] = {}
        # handed to the producer, not yet acknowledged: (future, key, entry)
        self._unacked: list[tuple[Any, tuple[int | None, Any], tuple[Any, Any, Any]]] = []
        self._flush_soon = False
        self.writes = 0                             # table writes seen
        self.sent = 0                               # changelog records sent for them
        table.send_changelog = self._buffer
        _tables.add(self)

        async def revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
            # Faust has committed what it could; what was written since (by events read
            # again by the partition's next owner) must be on the broker before that owner
            # reads the changelog, never after.
            self.flush()
            try:
                await self.acked()
            except Exception as exc:
                log.error("changelog_write_failed table=%s at=revocation error=%r",
                          table.name, exc)
        self._revoked = revoked
        table.app.on_partitions_revoked.connect(revoked)

    def _buffer(self, partition: int | None, key: Any, value: Any,
                key_serializer: Any = None, value_serializer: Any = None) -> Any:
        at = (partition, key)
        self._pending.pop(at, None)                 # sent in the order of the last writes
        self._pending[at] = (value, key_serializer, value_serializer)
        self.writes += 1
        if len(self._pending) >= self.max_pending and not self._flush_soon:
            self._flush_soon = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:        # no loop (a test): at once
                self.flush()
        # Faust reads only the partition back (Table.on_key_set, for key expiry).
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Hand every waiting write to Faust's producer; returns how many."""
        pending, self._pending, self._flush_soon = self._pending, {}, False
        sent = 0
        try:
            for at, entry in pending.items():
                value, key_serializer, value_serializer = entry
                fut = self._send(at[0], at[1], value, key_serializer, value_serializer)
                self._unacked.append((fut, at, entry))
                sent += 1
        finally:
            if sent < len(pending):     # the producer refused one: keep it and the rest
                self._pending = dict(list(pending.items())[sent:])
            self.sent += sent
        return sent

    async def acked(self) -> None:
        """Wait until the broker has acknowledged every write ``flush`` handed over. Writes
        it refused go back ahead of newer ones (unless written again since) and the first
        error is raised."""
        unacked, self._unacked = self._unacked, []
        if not unacked:
            return
        _, late = await asyncio.wait([fut for fut, _, _ in unacked], timeout=ACK_TIMEOUT_S)
        failed = [(at, entry, TimeoutError(f"no acknowledgement in {ACK_TIMEOUT_S} s")
                   if fut in late else fut.exception())
                  for fut, at, entry in unacked if fut in late or fut.exception() is not None]
        if failed:
            self._pending = {**{at: entry for at, entry, _ in failed if at not in self._pending},
                             **self._pending}
            self.sent -= len(failed)
            raise failed[0][2]


def totals() -> dict[str, tuple[int, int]]:
    """Per table name: (writes, changelog records sent) since start."""
    out: dict[str, tuple[int, int]] = {}
    for buffered in list(_tables):
        writes, sent = out.get(buffered.table.name, (0, 0))
        out[buffered.table.name] = (writes + buffered.writes, sent + buffered.sent)
    return out


def flush_all() -> int:
    return sum(buffered.flush() for buffered in list(_tables))


async def commit_tps(self: FaustConsumer, *args: Any, **kwargs: Any) -> bool:
    flush_all()              # Faust counts the offsets to commit right after, no await between
    return await _commit_tps(self, *args, **kwargs)


async def commit_offsets(self: FaustConsumer, *args: Any, **kwargs: Any) -> bool:
    for buffered in list(_tables):
        try:
            await buffered.acked()
        except Exception as exc:     # not committed now; the writes go again at the next
            log.warning("changelog_write_failed table=%s error=%r: offsets not committed "
                        "until it is written", buffered.table.name, exc)
            return False
    return await _commit_offsets(self, *args, **kwargs)


FaustConsumer._commit_tps = commit_tps
FaustConsumer._commit_offsets = commit_offsets
