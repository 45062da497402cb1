"""Faust hard-codes its consumer's fetch_max_wait_ms to 1500 ms. Brokers that do not wake
a waiting fetch when data arrives (the embedded Tansu broker holds it for the full wait)
then add ~0.75 s per hop on average. This sets the wait from settings instead
(LLMPIPE_FETCH_MAX_WAIT_MS): aiokafka reads the attribute when the consumer starts."""

from __future__ import annotations

from faust.transport.drivers import aiokafka as faust_aiokafka

_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
_fetch_max_wait_ms = 1500


def set_fetch_max_wait_ms(value: int) -> None:
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = value


def _create_worker_consumer(self, transport):
    consumer = _original(self, transport)
    consumer._fetch_max_wait_ms = _fetch_max_wait_ms
    return consumer


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
