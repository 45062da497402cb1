"""Integration fixtures: one embedded Kafka broker for the whole session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pipeline.embedded import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A started Tansu broker on a free loopback port, stopped at session end."""
    with EmbeddedBroker(startup_timeout=20.0) as running:
        yield running


@pytest.fixture
def topic_prefix() -> str:
    """A fresh topic prefix, so each test sees only the topics it created."""
    return f"t{uuid.uuid4().hex[:10]}."
