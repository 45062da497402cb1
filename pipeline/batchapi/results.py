"""Turn an ended provider job into the pipeline's outputs, item by item:

- succeeded: one Response + one Usage, built as for a live call (pipeline/outputs/outcomes.py) but
  priced at the catalog's batch rate (``batch_discount``) and marked with the job
  (``Usage.batch_id``, ``batch_size``);
- expired, canceled, missing from the results, or failed with an error another call may
  fix: a RoutedRequest back on llm.routed for the same deployment, priority ``standard``
  (so it is not offloaded again), a fresh deadline and a reason;
- failed with an error the request itself causes (invalid_request): a terminal error
  Response + Usage naming the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.batchapi.jobs import SUCCEEDED, ItemResult
from pipeline.catalog import Catalog
from pipeline.clock import now_ms
from pipeline.providers.deployments import Deployments
from pipeline.outputs import outcomes
from pipeline.dispatch import NO_FAILOVER
from pipeline.errors import RETRYABLE
from pipeline.events.models import AttemptRecord, BatchJob, RoutedRequest
from pipeline.outputs import Out
from pipeline.settings import Topics

RETRY_RULE = "batch_retry"
LIVE_PRIORITY = "standard"


@dataclass(frozen=True)
class Counts:
    succeeded: int = 0
    retried: int = 0
    failed: int = 0


class ResultBuilder:
    def __init__(self, catalog: Catalog, deployments: Deployments, topics: Topics,
                 clock: Callable[[], int] = now_ms):
        self.catalog, self.deployments, self.topics, self.clock = catalog, deployments, topics, clock

    def outputs(self, job: BatchJob, results: dict[int, ItemResult],
                missing_reason: str = "") -> tuple[list[Out], Counts]:
        """Outputs for every item of ``job``; an item absent from ``results`` goes live with
        ``missing_reason`` (e.g. the job failed or timed out as a whole)."""
        outs: list[Out] = []
        ok = retried = failed = 0
        provider_ms = max(0, self.clock() - job.submitted_at_ms)
        for index, routed in enumerate(job.items):
            result = results.get(index)
            if result is not None and result.kind == SUCCEEDED and result.completion is not None:
                outs += self._succeeded(job, routed, result, provider_ms)
                ok += 1
            elif result is not None and result.code in NO_FAILOVER:
                outs += self._terminal(job, routed, result, provider_ms)
                failed += 1
            else:
                if result is None:
                    code, why = "batch_missing", missing_reason or "no result for the item"
                else:
                    code, why = result.code or result.kind, result.message or result.kind
                outs.append(self._retry_live(job, routed, code, why))
                retried += 1
        return outs, Counts(ok, retried, failed)

    def _succeeded(self, job: BatchJob, routed: RoutedRequest, result: ItemResult,
                   provider_ms: int) -> list[Out]:
        assert result.completion is not None
        return outcomes.answered(routed, result.completion, catalog=self.catalog, at=self.clock(),
                                 attempts=1, provider_ms=provider_ms,
                                 routed_model=self._first_model(routed), topics=self.topics,
                                 batch_job=(job.job_id, len(job.items)))

    def _terminal(self, job: BatchJob, routed: RoutedRequest, result: ItemResult,
                  provider_ms: int) -> list[Out]:
        tried = routed.tried + [AttemptRecord(routed.route.deployment, result.code, 1)]
        names = ", ".join(f"{t.deployment} ({t.error_code})" for t in tried)
        return outcomes.routed_failed(
            routed, result.code, f"{result.message} (batch job {job.provider_job_id}); tried {names}",
            result.code in RETRYABLE, at=self.clock(), tried=tried, provider_ms=provider_ms,
            routed_model=self._first_model(routed), topics=self.topics,
            batch_job=(job.job_id, len(job.items)))

    def _first_model(self, routed: RoutedRequest) -> str:
        def model_of(dep_id: str) -> str | None:
            dep = self.deployments.by_id.get(dep_id)
            return dep.model if dep else None
        return outcomes.first_model(routed, model_of)

    def _retry_live(self, job: BatchJob, routed: RoutedRequest, code: str, why: str) -> Out:
        now = self.clock()
        request = routed.request
        live = request.replace(hints=request.hints.replace(priority=LIVE_PRIORITY))
        route = routed.route.replace(
            rule=RETRY_RULE, reason=f"batch job {job.provider_job_id}: {code} ({why}); "
                                    f"retried on the live path")
        retried = routed.replace(
            request=live, route=route, received_at_ms=now, routed_at_ms=now,
            tried=routed.tried + [AttemptRecord(routed.route.deployment, code, 1)])
        return Out(self.topics.routed, routed.route.deployment, retried)
