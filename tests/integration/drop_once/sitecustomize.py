"""Test-only, loaded by a worker started with this directory on PYTHONPATH: Faust drops the
first delivery of each ``topic:offset`` in LLMPIPE_TEST_DROP (topic names without the
prefix, e.g. ``llm.requests:2,llm.usage:0``) on every partition, the way it drops one
around a rebalance: the record reaches the consumer's callback and goes no further, and
Faust's read offset moves past it. See pipeline/kafka/redelivery.py."""

import asyncio
import os

_wanted = [item.rsplit(":", 1) for item in os.environ.get("LLMPIPE_TEST_DROP", "").split(",") if item]
if _wanted:
    from faust.transport.consumer import Consumer

    _init = Consumer.__init__
    _dropped: set[tuple[str, int, int]] = set()

    def _to_drop(message) -> bool:
        key = (message.topic, message.partition, message.offset)
        if key in _dropped:
            return False
        hit = any(message.topic.endswith(topic) and message.offset == int(offset)
                  for topic, offset in _wanted)
        if hit:
            _dropped.add(key)
            print(f"test_drop topic={message.topic} partition={message.partition} "
                  f"offset={message.offset}", flush=True)
        return hit

    def _init_dropping(self, *args, **kwargs):
        # The conductor's own callback, wrapped at its source: whatever wraps it later (as
        # redelivery.py does) sees the record first, as it sees one Faust drops.
        _init(self, *args, **kwargs)
        callback = self.callback
        self.callback = lambda message: asyncio.sleep(0) if _to_drop(message) else callback(message)

    Consumer.__init__ = _init_dropping
