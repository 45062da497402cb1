"""SIGTERM within a grace: the worker stops taking records, finishes what it holds and exits 0.

Faust's own stop already does the right thing when it can: it stops fetching, waits until
every record it handed out is acknowledged (outputs on the broker, rows in ClickHouse:
pipeline/agents/flow.py, batcher.py and ledger.py finish their work as soon as the flow
pauses), commits, and exits. What it lacks is a bound: a provider call that hangs, or
ClickHouse away, keeps it waiting forever. So once ``grace_s`` has passed since the signal,
this worker commits the offsets already acknowledged, flushes the producer and exits 0
anyway. Nothing is lost and nothing is answered twice: a record still in flight was never
answered (it is acknowledged only after its outputs are on the broker), so after a restart
it is done once, by whichever worker then owns its partition."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from faust.worker import Worker

log = logging.getLogger("llmpipe.worker")


class GracefulWorker(Worker):
    def __init__(self, app: Any, grace_s: float, **kwargs: Any):
        super().__init__(app, **kwargs)
        self.grace_s = grace_s

    # mode.Worker has no public hook at signal time; both SIGTERM and SIGINT come here.
    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        first = not self._signal_stop_time
        super()._schedule_shutdown(signum)
        if first:
            log.info("shutdown_started signal=%s grace_s=%g", signum.name, self.grace_s)
            self.loop.call_later(self.grace_s, lambda: asyncio.ensure_future(self._grace_over()))

    async def _grace_over(self) -> None:
        consumer = self.app.consumer
        in_flight = len(getattr(consumer, "_unacked_messages", ()))
        log.warning("shutdown_grace_exceeded grace_s=%g unacknowledged=%d: committing what is "
                    "acknowledged and exiting; the rest is redelivered to the next owner",
                    self.grace_s, in_flight)
        for what, step in (("commit", consumer.commit), ("producer_flush", self.app.producer.flush)):
            try:
                await asyncio.wait_for(step(), 5.0)
            except Exception as exc:            # exiting anyway: say what did not happen
                log.error("shutdown_%s_failed error=%r", what, exc)
        logging.shutdown()
        os._exit(0)
