"""Faust's livelock check of every assigned partition, yielding now and then instead of
before each (pipeline/kafka/faust_tuning.py)."""

from __future__ import annotations

from types import SimpleNamespace

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from pipeline.kafka import faust_tuning


def consumer_of(tps, should_stop=False):
    checked: list = []
    fake = SimpleNamespace(assignment=lambda: list(tps), should_stop=should_stop,
                           verify_event_path=lambda now, tp: checked.append(tp))
    return fake, checked


def run(coro) -> int:
    """Run ``coro`` to its end by hand; how many times it gave the loop back."""
    yields = 0
    try:
        while True:
            coro.send(None)
            yields += 1
    except StopIteration:
        return yields


def test_every_partition_is_checked_with_a_yield_per_so_many():
    assert FaustConsumer.verify_all_partitions_active is faust_tuning.verify_all_partitions_active
    tps = [TP("llm.requests", p) for p in range(200)]
    consumer, checked = consumer_of(tps)
    assert run(faust_tuning.verify_all_partitions_active(consumer)) == \
        (len(tps) - 1) // faust_tuning._CHECKS_PER_YIELD           # Faust's own: 200
    assert checked == tps


def test_a_stopping_consumer_checks_nothing():
    consumer, checked = consumer_of([TP("llm.requests", 0)], should_stop=True)
    run(faust_tuning.verify_all_partitions_active(consumer))
    assert checked == []
