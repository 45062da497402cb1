"""The simulator's batch jobs, shape-neutral: uploaded files, jobs and their items, and
how a job ends. A job ends ``completion_delay_s`` after it was created (checked when it is
next looked at). Its items are then answered one by one through the same core as live
calls (``Simulator.plan``: model profiles, usage, injected faults) and rendered in the live
shape, so a batch answer is a live answer in a batch envelope. ``/_sim/batches`` (GET, PUT)
sets the delay and makes chosen items fail or expire, or whole OpenAI jobs fail validation:
``{"completion_delay_s": 0.5, "fail_custom_ids": ["item-1"], "expire_custom_ids": [],
"fail_jobs": false}``. The wire shapes over it live in batches.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from aiohttp import web

from pipeline.simulator.anthropic import AnthropicShape, message_body
from pipeline.simulator.core import ChatRequest, Outcome, Simulator
from pipeline.simulator.openai import OpenAIShape, completion_body

log = logging.getLogger("pipeline.simulator")

DEFAULT_DELAY_S = 2.0
SUCCEEDED, ERRORED, EXPIRED, CANCELED = "succeeded", "errored", "expired", "canceled"


@dataclass
class BatchSettings:
    completion_delay_s: float = DEFAULT_DELAY_S
    fail_custom_ids: set[str] = field(default_factory=set)
    expire_custom_ids: set[str] = field(default_factory=set)
    fail_jobs: bool = False          # OpenAI: jobs fail validation (status failed, no results)

    def to_json(self) -> dict[str, Any]:
        return {"completion_delay_s": self.completion_delay_s,
                "fail_custom_ids": sorted(self.fail_custom_ids),
                "expire_custom_ids": sorted(self.expire_custom_ids), "fail_jobs": self.fail_jobs}


@dataclass
class Item:
    custom_id: str
    chat: ChatRequest | None
    invalid: str = ""                # why the item's body was rejected (answered as a 400)


@dataclass
class ItemOutcome:
    custom_id: str
    kind: str                        # succeeded | errored | expired | canceled
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class SimBatch:
    id: str
    shape: str                       # openai | anthropic
    items: list[Item]
    fingerprint: str
    api_key: str | None
    created_at: float                # simulator clock
    created_wall: float
    input_file_id: str = ""
    failed: str = ""                 # OpenAI: validation error (status failed)
    cancelled_at: float | None = None   # simulator clock
    cancelled_wall: float | None = None
    outcomes: list[ItemOutcome] | None = None
    output_file_id: str = ""
    error_file_id: str = ""
    ended_at_wall: float | None = None


class BatchStore:
    """Files and batch jobs of one simulator."""

    def __init__(self, sim: Simulator, clock: Callable[[], float] = time.monotonic):
        self.sim, self.clock = sim, clock
        self.settings = BatchSettings()
        self.files: dict[str, tuple[str, bytes]] = {}     # id -> (filename, content)
        self.batches: dict[str, SimBatch] = {}
        self._ids = itertools.count(1)
        self.openai = OpenAIShape(sim)
        self.anthropic = AnthropicShape(sim)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}{self.sim.config.seed:04d}"

    # -- life of a job

    def settle(self, batch: SimBatch) -> None:
        """End ``batch`` if its time has come (or it was cancelled): answer every item."""
        if batch.outcomes is not None or batch.failed:
            return
        cancelled = batch.cancelled_at is not None
        if not cancelled and self.clock() - batch.created_at < self.settings.completion_delay_s:
            return
        batch.outcomes = [self._answer(batch, item, cancelled) for item in batch.items]
        batch.ended_at_wall = time.time()
        if batch.shape == "openai":
            ok = [o for o in batch.outcomes if o.kind == SUCCEEDED]
            bad = [o for o in batch.outcomes if o.kind != SUCCEEDED]
            if ok:
                batch.output_file_id = self._store_file(f"{batch.id}_output.jsonl",
                                                        [self._openai_row(o) for o in ok])
            if bad:
                batch.error_file_id = self._store_file(f"{batch.id}_error.jsonl",
                                                       [self._openai_row(o) for o in bad])
        log.info("sim.batch_ended id=%s shape=%s items=%d %s", batch.id, batch.shape,
                 len(batch.items), " ".join(f"{k}={sum(o.kind == k for o in batch.outcomes)}"
                                            for k in (SUCCEEDED, ERRORED, EXPIRED, CANCELED)))

    def _answer(self, batch: SimBatch, item: Item, cancelled: bool) -> ItemOutcome:
        s = self.settings
        if cancelled:
            return ItemOutcome(item.custom_id, CANCELED)
        if item.custom_id in s.expire_custom_ids:
            return ItemOutcome(item.custom_id, EXPIRED)
        if item.chat is None:
            return self._error(batch, item.custom_id, 400, "invalid_request_error", item.invalid)
        if item.custom_id in s.fail_custom_ids:
            return self._error(batch, item.custom_id, 500, "api_error",
                               "Internal server error (injected for this batch item)")
        if self.sim.config.profile(item.chat.model) is None:
            return self._error(batch, item.custom_id, 404, "not_found_error",
                               f"model: {item.chat.model}")
        plan = self.sim.plan(item.chat, batch.fingerprint)
        shape = self.openai if batch.shape == "openai" else self.anthropic
        if plan.outcome is Outcome.COMPLETION:
            body = completion_body(plan) if batch.shape == "openai" else message_body(plan)
            return ItemOutcome(item.custom_id, SUCCEEDED, 200, body)
        if plan.outcome is Outcome.MALFORMED:
            return self._error(batch, item.custom_id, 500, "api_error", "Internal server error")
        resp = (shape.render(plan, {}, False, batch.api_key) if batch.shape == "openai"
                else shape.render(plan, {}))
        return ItemOutcome(item.custom_id, ERRORED, resp.status, json.loads(resp.body))

    def _error(self, batch: SimBatch, cid: str, status: int, kind: str, message: str) -> ItemOutcome:
        if batch.shape == "openai":
            kind = "server_error" if status >= 500 else "invalid_request_error"
            body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        else:
            body = {"type": "error", "error": {"type": kind, "message": message}}
        return ItemOutcome(cid, ERRORED, status, body)

    def _openai_row(self, o: ItemOutcome) -> dict[str, Any]:
        row: dict[str, Any] = {"id": f"batch_req_{o.custom_id}", "custom_id": o.custom_id,
                               "response": None, "error": None}
        if o.kind in (SUCCEEDED, ERRORED):
            row["response"] = {"status_code": o.status, "request_id": f"req_{o.custom_id}",
                               "body": o.body}
        elif o.kind == EXPIRED:
            row["error"] = {"code": "batch_expired", "message": "This request could not be "
                            "executed before the completion window expired."}
        else:
            row["error"] = {"code": "batch_cancelled", "message": "This request was not "
                            "executed because the batch was cancelled."}
        return row

    def _store_file(self, name: str, rows: list[dict[str, Any]]) -> str:
        file_id = self.new_id("file-")
        content = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows).encode()
        self.files[file_id] = (name, content)
        return file_id

    def snapshot(self) -> dict[str, Any]:
        jobs = []
        for b in self.batches.values():
            self.settle(b)
            jobs.append({"id": b.id, "shape": b.shape, "items": len(b.items),
                         "ended": b.outcomes is not None or bool(b.failed),
                         "failed": b.failed, "cancelled": b.cancelled_at is not None})
        return {"settings": self.settings.to_json(), "jobs": jobs,
                "items": sum(len(b.items) for b in self.batches.values())}


def iso_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------- control plane

def batch_control(store: BatchStore) -> list[web.RouteDef]:
    async def get(request: web.Request) -> web.Response:
        return web.json_response(store.snapshot())

    async def put(request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
            if not isinstance(data, dict):
                raise ValueError("a JSON object is required")
            unknown = set(data) - {"completion_delay_s", "fail_custom_ids", "expire_custom_ids",
                                   "fail_jobs"}
            if unknown:
                raise ValueError(f"unknown field(s) {sorted(unknown)}")
            delay = float(data.get("completion_delay_s", store.settings.completion_delay_s))
            if delay < 0:
                raise ValueError("completion_delay_s must be >= 0")
            fail = data.get("fail_custom_ids", sorted(store.settings.fail_custom_ids))
            expire = data.get("expire_custom_ids", sorted(store.settings.expire_custom_ids))
            for name, ids in (("fail_custom_ids", fail), ("expire_custom_ids", expire)):
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    raise ValueError(f"{name} must be a list of strings")
            fail_jobs = data.get("fail_jobs", store.settings.fail_jobs)
            if not isinstance(fail_jobs, bool):
                raise ValueError("fail_jobs must be true or false")
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": f"PUT /_sim/batches: {exc}"}, status=400)
        store.settings = BatchSettings(delay, set(fail), set(expire), fail_jobs)
        log.info("sim.batch_settings %s", store.settings.to_json())
        return web.json_response(store.snapshot())

    return [web.get("/_sim/batches", get), web.put("/_sim/batches", put)]
