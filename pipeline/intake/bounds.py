"""The bounds intake holds every request to (pipeline/config/intake.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConfigError, Section, config_path, load_yaml


@dataclass(frozen=True)
class RequestBounds:
    max_request_bytes: int = 900_000
    max_age_ms: int = 86_400_000
    max_ahead_ms: int = 300_000
    max_messages: int = 1024
    max_stop_sequences: int = 16
    max_stop_length: int = 256
    max_name_length: int = 128
    max_metadata_entries: int = 64
    max_metadata_bytes: int = 16_384
    max_choices: int = 8
    max_tools: int = 128
    max_parts: int = 64
    max_embedding_inputs: int = 2048


def load_bounds(path: Path | None = None, *, max_message_bytes: int | None = None) -> RequestBounds:
    """``max_message_bytes``: the broker's limit; requests must stay well under it."""
    path = path or config_path("intake.yaml")
    s = Section(path, "", load_yaml(path))
    known = {"max_request_bytes", "created_at", "max_messages", "max_stop_sequences",
             "max_stop_length", "max_name_length", "max_metadata_entries", "max_metadata_bytes",
             "max_choices", "max_tools", "max_parts", "max_embedding_inputs"}
    unknown = set(s.data) - known
    if unknown:
        raise ConfigError(path, sorted(unknown)[0], f"one of {sorted(known)}")
    created = s.section("created_at")
    bounds = RequestBounds(
        max_request_bytes=s.int("max_request_bytes", minimum=1024),
        max_age_ms=created.int("max_age_s", minimum=1) * 1000,
        max_ahead_ms=created.int("max_ahead_s", minimum=0) * 1000,
        max_messages=s.int("max_messages", minimum=1),
        max_stop_sequences=s.int("max_stop_sequences", minimum=0),
        max_stop_length=s.int("max_stop_length", minimum=1),
        max_name_length=s.int("max_name_length", minimum=1),
        max_metadata_entries=s.int("max_metadata_entries", minimum=0),
        max_metadata_bytes=s.int("max_metadata_bytes", minimum=0),
        max_choices=s.int("max_choices", RequestBounds.max_choices, minimum=1),
        max_tools=s.int("max_tools", RequestBounds.max_tools, minimum=0),
        max_parts=s.int("max_parts", RequestBounds.max_parts, minimum=1),
        max_embedding_inputs=s.int("max_embedding_inputs", RequestBounds.max_embedding_inputs,
                                   minimum=1))
    if max_message_bytes is not None and bounds.max_request_bytes > max_message_bytes * 0.9:
        raise ConfigError(path, "max_request_bytes",
                          f"at most 90% of the broker's message size ({max_message_bytes:,} "
                          "bytes), leaving room for routing data", bounds.max_request_bytes)
    return bounds
