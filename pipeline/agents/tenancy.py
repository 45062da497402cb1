"""Faust wiring of the per-tenant state: one table on the tenant's partitions (admissions,
spend, canaries), the live tenant-policy directory, and the settle agent that reads the
tenant's Usage events (same partition as its requests) to settle budget reservations and
judge canaries. Runs in every worker that runs intake: reserve and settle must meet."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
import logging

import faust

from pipeline.agents.flow import process
from pipeline.kafka.write_behind import WriteBehind
from pipeline.outputs import Emitter
from pipeline.clock import now_ms
from pipeline.events.codec import DecodeError
from pipeline.events.models import Usage
from pipeline.outputs import Origin, Out
from pipeline.runtime import Runtime
from pipeline.catalog import NANOS_PER_USD
from pipeline.metrics import gauge, register_collector
from pipeline.tenancy.budgets import ALL_TEAMS, SEP, period_start
from pipeline.tenancy.directory import TenantDirectory
from pipeline.tenancy.state import TenantState, load_tenancy

log = logging.getLogger("llmpipe.tenancy")


class Tenancy:
    """The worker's tenant state and policy directory, started once by whichever agent
    needs them first."""

    def __init__(self, app: faust.App, runtime: Runtime, partitions: int):
        s = runtime.settings

        # One table, so admissions and spend rows of a partition share one changelog
        # partition. Its writes are coalesced (a request's admission and its tenant's sheet
        # are rewritten at admit and at settle): what a crash may leave of them, and why
        # TenantState stays exact with it, is in pipeline/kafka/write_behind.py and state.py.
        self.table = app.Table("tenancy", partitions=partitions, help="tenant state",
                               schema=faust.Schema(key_serializer="json", value_serializer="json"))
        WriteBehind(self.table)
        self.state = TenantState(self.table, load_tenancy())

        @app.on_partitions_assigned.connect
        async def on_assigned(sender, assigned, **kwargs) -> None:
            self.state.forget_partitions()

        @self.table.on_recover
        async def on_recovered() -> None:
            # The changelog has been read back: what was indexed meanwhile (a gauge scrape
            # during recovery) may miss rows; index again from the rows as they are now.
            self.state.forget_partitions()

        self.directory = TenantDirectory(s.kafka_bootstrap, s.topics.tenants, runtime.codec)
        self.ready_timeout_s = s.tenants_ready_timeout_s
        self._started = False
        self._lock = asyncio.Lock()

    async def ready(self) -> None:
        async with self._lock:
            if self._started:
                return
            await self.directory.start()
            if not await self.directory.wait_ready(self.ready_timeout_s):
                log.warning("tenant_directory_not_ready timeout_s=%s: starting with the policies "
                            "read so far; the rest apply as they arrive", self.ready_timeout_s)
            self._started = True

    async def stop(self) -> None:
        if self._started:
            await self.directory.stop()
            self._started = False


def budget_state(tenancy: Tenancy, at_ms: int):
    """Spend of the current periods held by this worker (its tenants' partitions) and the
    limits of the budgets that apply, as gauges. Teams are labels only when a budget names
    them, so callers cannot grow the series with team names of their own."""
    spent = gauge("llmpipe_budget_spent_usd")
    limits = gauge("llmpipe_budget_limit_usd")
    policies: dict[str, list] = {}
    for tenant, team, period, start, spend in tenancy.state.spend.periods():
        if tenant not in policies:
            policy = tenancy.directory.get(tenant)
            policies[tenant] = list(policy.budgets) if policy else []
        budgets = [b for b in policies[tenant]
                   if b.period == period and (b.team or ALL_TEAMS) == team]
        if start != period_start(period, at_ms) or not (team == ALL_TEAMS or budgets):
            continue
        labels = [tenant, team, period]
        spent.add_metric(labels + ["settled"], spend.settled_nanos / NANOS_PER_USD)
        spent.add_metric(labels + ["reserved"], spend.reserved_nanos / NANOS_PER_USD)
        for b in budgets:
            for level, limit in (("soft", b.soft_usd), ("hard", b.hard_usd)):
                if limit is not None:
                    limits.add_metric(labels + [level], float(limit))
    yield from (spent, limits)


def register_views(app: faust.App, tenancy: Tenancy) -> None:
    register_collector(lambda: budget_state(tenancy, now_ms()))

    @app.page("/llmpipe/tenancy/spend/")
    async def spend(web, request):
        """GET ?tenant=T[&detail=1] -> the tenant's spend rows held by this worker (its
        partitions): settled and reserved nano-dollars per team and period; with detail,
        each admission (request id -> state, reservation, billed cost)."""
        tenant = request.query.get("tenant", "")
        rows = []
        for owner, team, period, start, spent in tenancy.state.spend.periods():
            if owner == tenant:
                rows.append({"team": team, "period": period, "start": start, **asdict(spent)})
        body = {"tenant": tenant, "rows": rows, "policy": bool(tenancy.directory.get(tenant))}
        if request.query.get("detail"):
            body["admissions"] = {key.split(SEP, 1)[1]: raw
                                  for key, raw in list(tenancy.state.admissions.rows.items())
                                  if key.split(SEP, 1)[0] == tenant}
        return web.json(body)


def register_settle(app: faust.App, runtime: Runtime, tenancy: Tenancy, source: faust.TopicT,
                    emitter: Emitter) -> None:
    s = runtime.settings

    async def step(value: bytes | None, origin: Origin) -> list[Out]:
        try:
            usage = runtime.codec.decode(value, Usage)
        except DecodeError as exc:      # the ledger agent dead-letters the same bytes
            log.warning("settle_skipped_undecodable partition=%s offset=%s reason=%s",
                        origin.partition, origin.offset, exc.code)
            return []
        alerts = tenancy.state.settle(usage, origin.partition, now_ms(),
                                      tenancy.directory.get(usage.tenant))
        return [Out(s.topics.alerts, a.tenant, a) for a in alerts]

    @app.agent(source, name="settle")
    async def settle_agent(stream):
        await tenancy.ready()
        try:
            await process(stream, step, emitter, agent="settle",
                          dead_letter_topic=s.topics.dead_letter, concurrency=s.intake_concurrency)
        finally:
            await tenancy.stop()
