"""Integration fixtures: one embedded Kafka broker for the whole session."""

from __future__ import annotations

import contextlib
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


# --- the pipeline on the embedded stack --------------------------------------------------

from pipeline.dev.stack import DevStack  # noqa: E402


def make_stack(broker, tmp_path_factory, name: str, simulator_args: list[str]) -> DevStack:
    uid = uuid.uuid4().hex[:8]
    return DevStack(tmp_path_factory.mktemp(name), topic_prefix=f"{name}{uid}.",
                    app_id=f"llmpipe-{name}-{uid}", simulator_args=simulator_args).start(broker=broker)


@contextlib.contextmanager
def worker_stack(broker, tmp_path_factory, name: str, seed: int, latency_scale: str = "0.05",
                 **worker) -> Iterator[DevStack]:
    """A stack of its own (topic prefix, chDB path) with a fast, error-free simulator and one
    worker started with ``worker`` settings; stopped on the way out."""
    stack = make_stack(broker, tmp_path_factory, name, ["--latency-scale", latency_scale,
                                                        "--no-base-errors", "--seed", str(seed)])
    try:
        stack.start_worker(**worker)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def pipeline_stack(broker, tmp_path_factory):
    """A worker (intake + dispatch + ledger) on its own topic prefix and chDB path, with a
    fast, error-free provider simulator."""
    with worker_stack(broker, tmp_path_factory, "e2e", seed=11) as stack:
        yield stack


async def answers(gw, stack: DevStack, requests: list, timeout: float) -> dict:
    """Each request's Response (request id -> Response), waiting up to ``timeout`` for each;
    if one never comes, fail with where every unanswered request stopped on the topics."""
    from pipeline.client import ResponseTimeout
    results = {}
    for r in requests:
        try:
            results[r.request_id] = await gw.wait(r, timeout)
        except ResponseTimeout as exc:
            unanswered = [q.request_id for q in requests if q.request_id not in results]
            raise AssertionError(f"{exc}; where the unanswered requests stopped: "
                                 f"{stack.trail(unanswered)}; logs in {stack.data_dir}") from None
    return results
