"""Dispatch in intake: a Batch of one bound for llm.batches (a priority without a window,
or a request that found its deployment quiet: pipeline/batching/alone.py) is dispatched
by intake itself when this worker owns the deployment's llm.batches partition —
the very worker whose dispatch agent would read that Batch. One Kafka hop fewer (~15 ms at
concurrency 1 on the embedded broker, a record out and in fewer), with the same owner per
deployment, so the deployment's guards (breaker, limits, their carried state) are the ones
dispatch uses.

What stays as it was (docs/ARCHITECTURE.md "Dispatch in intake"):
- at-least-once: the request is acknowledged only once its Response and Usage are on the
  broker; a crash before that re-delivers it and the hop is done again (billed once: the
  ledger and settle take a request's first Usage);
- a hop whose outputs went out is not done again: it is recorded in the ``dispatched``
  table on the deployment's partition once they are on the broker, and looked up before a
  call, whichever of intake or dispatch has the request (pipeline/dispatch/hops.py);
- limits exact by ownership: only the owner of the deployment's llm.batches partition
  dispatches it, here or in its dispatch agent.

What changes, and bounds it: intake's slots are held while the provider answers. At most
``intake_dispatch_max`` calls are held at once; past that, and for a deployment this
worker does not own, the Batch takes the llm.batches hop as before. Which priorities may
be dispatched here is ``dispatch_in_intake`` in pipeline/config/batching.yaml."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import faust
from aiokafka.partitioner import DefaultPartitioner

from pipeline.events.models import Batch
from pipeline.metrics import INTAKE_DISPATCHES
from pipeline.outputs import Origin, Out

_PARTITIONER = DefaultPartitioner()

#: (batch, its llm.batches partition, the request's origin) -> the batch's outputs
DispatchHere = Callable[[Batch, int, Origin], Awaitable[list[Out]]]
#: (batch, its llm.batches partition): the batch's outputs are on the broker
Finished = Callable[[Batch, int], None]


def batches_partition(deployment: str, partitions: int) -> int:
    """The llm.batches partition the producer picks for a Batch keyed by ``deployment``
    (the emitter sends string keys UTF-8 encoded, Faust's producer partitions by murmur2)."""
    every = list(range(partitions))
    return _PARTITIONER(deployment.encode(), every, every)


class InlineDispatch:
    def __init__(self, app: faust.App, batches_topic: str, partitions: int | None,
                 priorities: frozenset[str], max_in_flight: int):
        self.topic, self.partitions = batches_topic, partitions
        self.priorities, self.max_in_flight = priorities, max_in_flight
        self.dispatch: DispatchHere | None = None     # both set by register_dispatch
        self.finished: Finished | None = None
        self.in_flight = 0
        self._owned: set[int] = set()
        self._partition: dict[str, int] = {}
        self._done: dict[tuple[int, int], list[tuple[Batch, int]]] = {}

        @app.on_partitions_revoked.connect
        async def disown(sender, revoked, **kwargs) -> None:
            self._owned.clear()

        @app.on_partitions_assigned.connect
        async def own(sender, assigned, **kwargs) -> None:
            self._owned = {tp.partition for tp in assigned if tp.topic == batches_topic}

    @property
    def enabled(self) -> bool:
        return bool(self.priorities) and self.max_in_flight > 0 and bool(self.partitions)

    def partition_of(self, deployment: str) -> int:
        """``batches_partition``, remembered."""
        p = self._partition.get(deployment)
        if p is None:
            assert self.partitions
            p = self._partition[deployment] = batches_partition(deployment, self.partitions)
        return p

    def _here(self, out: Out) -> int | None:
        """The llm.batches partition of ``out`` if intake should dispatch it now."""
        batch = out.event
        if (out.topic != self.topic or not isinstance(batch, Batch) or out.partition is not None
                or batch.priority not in self.priorities or self.dispatch is None):
            return None
        p = self.partition_of(batch.deployment)
        here = p in self._owned and self.in_flight < self.max_in_flight
        INTAKE_DISPATCHES.labels(batch.priority, "intake" if here else "hop").inc()
        return p if here else None

    async def run(self, outs: list[Out], origin: Origin) -> list[Out]:
        """``outs`` of intake with each Batch this worker may dispatch replaced by that
        Batch's outputs."""
        if not self.enabled:
            return outs
        result: list[Out] = []
        for out in outs:
            p = self._here(out)
            if p is None:
                result.append(out)
                continue
            assert self.dispatch is not None
            self.in_flight += 1
            try:
                result += await self.dispatch(out.event, p, origin)
            finally:
                self.in_flight -= 1
            self._done.setdefault((origin.partition, origin.offset), []).append((out.event, p))
        return result

    def published(self, origin: Origin) -> None:
        """``origin``'s outputs are on the broker: its hops dispatched here are finished."""
        for batch, p in self._done.pop((origin.partition, origin.offset), ()):
            if self.finished is not None:
                self.finished(batch, p)
