"""SDK behaviour a caller notices: a clear, bounded timeout when nobody answers."""

from __future__ import annotations

import time

import pytest

from pipeline.client import GatewayClient, ResponseTimeout, make_request
from pipeline.kafka.topics import apply_topics, load_topic_specs, prefixed
from pipeline.settings import Topics


async def test_request_without_a_worker_times_out_clearly(broker, topic_prefix):
    await apply_topics(broker.bootstrap, prefixed(load_topic_specs(), topic_prefix))
    async with GatewayClient(broker.bootstrap, Topics(topic_prefix)) as gw:
        req = make_request("acme", "anyone there?")
        started = time.monotonic()
        with pytest.raises(ResponseTimeout) as info:
            await gw.request(req, timeout=1.0)
        assert time.monotonic() - started < 5
    assert req.request_id in str(info.value) and "1.0s" in str(info.value)
