"""What a processing step asks the agent layer to publish."""

from __future__ import annotations

from dataclasses import dataclass


from pipeline.clock import now_ms
from pipeline.events.models import DeadLetter, Event
from pipeline.events.text import scrub

AVRO, JSON = "avro", "json"


@dataclass(frozen=True)
class Origin:
    """Where an input came from."""
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None


@dataclass(frozen=True)
class Out:
    topic: str
    key: str | bytes | None
    event: Event
    fmt: str = AVRO
    partition: int | None = None     # None: the producer's partitioner picks by key


def dead_letter(topic: str, origin: Origin, value: bytes | None, agent: str, code: str, reason: str,
                request_id: str | None = None, tenant: str | None = None) -> Out:
    """A DeadLetter for an input, keeping its raw key and value and where it came from."""
    return Out(topic, origin.key, DeadLetter(
        source_topic=origin.topic, source_partition=origin.partition, source_offset=origin.offset,
        reason_code=code, reason=scrub(reason[:2000]), agent=agent, at_ms=now_ms(),
        key=origin.key, value=value, request_id=request_id and scrub(request_id[:200]),
        tenant=tenant and scrub(tenant[:1024])))
