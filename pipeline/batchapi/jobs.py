"""The Batch API job book: which provider jobs this worker polls, when each is next due
(exponential backoff from submit, capped), and what to do with what the provider says.
Pure: no I/O; time comes from an injected epoch-ms clock, so tests move it by hand.

A job's durable state is its latest BatchJob record on llm.batch-jobs (highest
``revision``). The book is rebuilt from those records on start; a job whose results were
emitted (``state: emitted``) is remembered as finished, so a stale record read later never
brings it back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

from pipeline.batchapi.config import PollSettings
from pipeline.events.ids import request_key
from pipeline.events.models import BatchJob, RoutedRequest
from pipeline.providers.base import Completion

SUBMITTED, EMITTED = "submitted", "emitted"

# Item outcomes of a provider job
SUCCEEDED, ERRORED, EXPIRED, CANCELED = "succeeded", "errored", "expired", "canceled"


class Action(Enum):
    POLL_LATER = "poll_later"    # still running (or the status call failed): check again later
    FETCH = "fetch"              # the job ended: fetch its per-item results
    GIVE_UP = "give_up"          # failed as a whole, or not ended within max_wait: go live


@dataclass(frozen=True)
class JobStatus:
    """A provider's answer to "how is job X", normalised."""
    raw: str                     # the provider's own status word
    ended: bool = False          # results can be fetched (some items may have failed/expired)
    failed: bool = False         # the job as a whole failed (e.g. OpenAI validation): no results
    done: int = 0                # items finished so far, if the provider says
    total: int = 0


@dataclass(frozen=True)
class ItemResult:
    """One item of an ended job."""
    kind: str                            # succeeded | errored | expired | canceled
    completion: Completion | None = None
    code: str = ""                       # errored: the project's error code
    message: str = ""
    retryable: bool = True


@dataclass
class Tracked:
    job: BatchJob
    partition: int
    polls: int = 0
    next_poll_at_ms: int = 0
    last_status: str = ""
    progress: tuple[int, int] = (0, 0)
    give_up_reason: str = ""


@dataclass
class JobBook:
    poll: PollSettings
    max_wait_s: float
    clock: Callable[[], int]                       # epoch ms
    jobs: dict[str, Tracked] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)   # job id -> revision emitted
    # request id -> job id, for every job seen (running or emitted): submit skips these
    requests: dict[str, str] = field(default_factory=dict)

    # --- records in ----------------------------------------------------------------

    def apply(self, job: BatchJob, partition: int) -> bool:
        """Take a record of the job topic (or one just written). Returns whether the book
        changed: an older revision than known, or any record of a finished job, is ignored."""
        if job.job_id in self.finished and job.revision <= self.finished[job.job_id]:
            return False
        self._remember(job)
        if job.state == EMITTED:
            self.finished[job.job_id] = job.revision
            self.jobs.pop(job.job_id, None)
            return True
        known = self.jobs.get(job.job_id)
        if known is not None and known.job.revision >= job.revision:
            return False
        if known is not None:
            known.job = job
            return True
        # First sight (submit, or restore after a restart): check on the job at once if it
        # has been out for longer than the first poll delay, else when that delay is up.
        first = job.submitted_at_ms + int(self.poll.delay(0) * 1000)
        self.jobs[job.job_id] = Tracked(job, partition, next_poll_at_ms=max(first, 0))
        return True

    def _remember(self, job: BatchJob) -> None:
        for key in job.request_ids or [request_key(r.request.tenant, r.request.request_id)
                                       for r in job.items]:
            self.requests[key] = job.job_id

    def note(self, job: BatchJob) -> None:
        """A job polled elsewhere (its partition is not ours): remember only which requests
        it holds, so submit does not put them in a second job."""
        self._remember(job)

    def known(self, routed: RoutedRequest) -> str | None:
        """The job already holding this request, if any this worker has seen."""
        return self.requests.get(request_key(routed.request.tenant, routed.request.request_id))

    def forget(self, job_id: str) -> None:
        """A tombstone: the job is gone from the topic."""
        self.jobs.pop(job_id, None)

    def retain(self, partitions: set[int]) -> list[str]:
        """Keep only jobs on ``partitions`` (those this worker owns); returns the dropped."""
        gone = [j for j, t in self.jobs.items() if t.partition not in partitions]
        for job_id in gone:
            del self.jobs[job_id]
        return gone

    # --- polling -------------------------------------------------------------------

    def due(self) -> list[Tracked]:
        now = self.clock()
        return sorted((t for t in self.jobs.values() if t.next_poll_at_ms <= now),
                      key=lambda t: t.next_poll_at_ms)

    def next_due_ms(self) -> int | None:
        return min((t.next_poll_at_ms for t in self.jobs.values()), default=None)

    def observed(self, job_id: str, status: JobStatus | None, error: str = "") -> Action:
        """What the provider said about ``job_id`` (None: the status call failed, ``error``
        says why). Decides the next step and, for POLL_LATER, when."""
        tracked = self.jobs[job_id]
        now = self.clock()
        tracked.polls += 1
        if status is not None:
            tracked.last_status = status.raw
            tracked.progress = (status.done, status.total)
            if status.failed:
                tracked.give_up_reason = f"batch job {status.raw}"
                return Action.GIVE_UP
            if status.ended:
                return Action.FETCH
        else:
            tracked.last_status = f"unknown ({error})" if error else "unknown"
        waited_s = (now - tracked.job.submitted_at_ms) / 1000
        if waited_s >= self.max_wait_s:
            tracked.give_up_reason = (f"batch job not ended after {waited_s:.0f}s "
                                      f"(max_wait_s {self.max_wait_s:g})")
            return Action.GIVE_UP
        delay_ms = int(self.poll.delay(tracked.polls) * 1000)
        deadline = tracked.job.submitted_at_ms + int(self.max_wait_s * 1000)
        tracked.next_poll_at_ms = min(now + delay_ms, max(deadline, now))
        return Action.POLL_LATER

    def finish(self, job: BatchJob) -> None:
        """The job's results are out and its ``emitted`` record written."""
        self.finished[job.job_id] = job.revision
        self._remember(job)
        self.jobs.pop(job.job_id, None)

    def snapshot(self) -> list[dict]:
        return [{"job_id": t.job.job_id, "deployment": t.job.deployment,
                 "provider_job_id": t.job.provider_job_id, "items": len(t.job.items),
                 "status": t.last_status, "polls": t.polls, "done": t.progress[0],
                 "total": t.progress[1] or len(t.job.items), "next_poll_at_ms": t.next_poll_at_ms}
                for t in sorted(self.jobs.values(), key=lambda t: t.job.submitted_at_ms)]
