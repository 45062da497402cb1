"""What a processing step asks the agent layer to publish."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.events.models import Event

AVRO, JSON = "avro", "json"


@dataclass(frozen=True)
class Out:
    topic: str
    key: str | bytes | None
    event: Event
    fmt: str = AVRO
