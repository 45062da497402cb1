"""`llmpipe dead-letter replay` puts the records it selects back on their source topic,
where they take their normal path; filters and --dry-run leave the others alone."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from pipeline.client import GatewayClient, make_request
from pipeline.events.codec import Codec
from pipeline.events.models import DeadLetter
from pipeline.kafka import clients
from tests.integration.conftest import worker_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    with worker_stack(broker, tmp_path_factory, "deadletter", seed=21) as stack:
        yield stack


def letter(stack, request, reason: str) -> DeadLetter:
    """A request as an earlier (since fixed) fault dead-lettered it."""
    value = Codec().encode(request, stack.topics.requests)
    return DeadLetter(source_topic=stack.topics.requests, source_partition=0, source_offset=7,
                      reason_code=reason, reason="a fault fixed since", agent="intake",
                      at_ms=int(time.time() * 1000), key=request.tenant.encode(), value=value,
                      request_id=request.request_id, tenant=request.tenant)


def cli(stack, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "dead-letter", *args],
                          env=stack.worker_env(stack.settings()), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_replay_sends_the_chosen_records_back_and_they_are_answered(stack):
    fixed = make_request("acme", "Replay me, please.", model="gpt-4o-mini", max_tokens=20)
    other = make_request("acme", "Leave me be.", model="gpt-4o-mini", max_tokens=20)

    async def publish():
        producer = clients.producer(stack.bootstrap)
        await producer.start()
        try:
            for r, reason in ((fixed, "bug_1234"), (other, "still_broken")):
                await producer.send_and_wait(stack.topics.dead_letter, key=r.tenant.encode(),
                                             value=Codec().encode(letter(stack, r, reason),
                                                                  stack.topics.dead_letter))
        finally:
            await producer.stop()
    asyncio.run(publish())

    listed = cli(stack, "list", "--reason", "bug_1234")
    assert "1 match" in listed and "bug_1234" in listed and "still_broken" not in listed
    dry = cli(stack, "replay", "--reason", "bug_1234", "--dry-run")
    assert "dry run: nothing published" in dry

    async def replayed_and_answered():
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            gw.expect(fixed)                     # listening before the request is back
            out = await asyncio.to_thread(cli, stack, "replay", "--reason", "bug_1234")
            assert "replayed 1 records" in out
            return await gw.wait(fixed, timeout=60)
    assert asyncio.run(replayed_and_answered()).status == "ok"
    worker = stack.workers[0]
    assert worker.wait_for_usage([fixed.request_id]) == {fixed.request_id: 1}
    assert worker.usage_counts([other.request_id]).get(other.request_id, 0) == 0
