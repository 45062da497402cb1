"""The simulator's Batch APIs: OpenAI ``/v1/files`` (multipart upload, ``purpose=batch``)
+ ``/v1/batches`` (create, retrieve, cancel), and Anthropic ``/v1/messages/batches``
(create, retrieve, results, cancel).

A job ends ``completion_delay_s`` after it was created (checked when it is next looked at).
Its items are then answered one by one through the same core as live calls
(``Simulator.plan``: model profiles, usage, injected faults) and rendered in the live
shape, so a batch answer is a live answer in a batch envelope. ``/_sim/batches`` (GET, PUT)
sets the delay and makes chosen items fail or expire, or whole OpenAI jobs fail validation:
``{"completion_delay_s": 0.5, "fail_custom_ids": ["item-1"], "expire_custom_ids": [],
"fail_jobs": false}``.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from aiohttp import web

from pipeline.simulator.anthropic import (AnthropicShape, anthropic_error, message_body,
                                          parse_messages_request)
from pipeline.simulator.core import (ChatRequest, InvalidRequest, Outcome, Simulator, bearer_key,
                                     key_fingerprint)
from pipeline.simulator.openai import (OpenAIShape, completion_body, missing_key, openai_error,
                                       parse_chat_request)

log = logging.getLogger("pipeline.simulator")

CHAT_ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
DEFAULT_DELAY_S = 2.0
ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
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
        resp = (shape._render(plan, {}, False, batch.api_key) if batch.shape == "openai"
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


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------- OpenAI

class OpenAIBatches:
    def __init__(self, store: BatchStore):
        self.store = store

    async def upload(self, request: web.Request) -> web.Response:
        if bearer_key(request) is None:
            return missing_key()
        try:
            form = await request.post()
        except ValueError:
            form = {}
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch":
            return openai_error(400, f"'{purpose}' is not one of the supported purposes "
                                "(this simulator: 'batch')", "invalid_request_error", param="purpose")
        if not isinstance(upload, web.FileField):
            return openai_error(400, "file: a multipart file field is required",
                                "invalid_request_error", param="file")
        content = upload.file.read()
        file_id = self.store.new_id("file-")
        self.store.files[file_id] = (upload.filename or "input.jsonl", content)
        return web.json_response(self._file(file_id))

    def _file(self, file_id: str) -> dict[str, Any]:
        name, content = self.store.files[file_id]
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": name, "purpose": "batch"}

    async def file_info(self, request: web.Request) -> web.Response:
        if bearer_key(request) is None:
            return missing_key()
        file_id = request.match_info["file_id"]
        if file_id not in self.store.files:
            return openai_error(404, f"No such File object: {file_id}", "invalid_request_error")
        return web.json_response(self._file(file_id))

    async def file_content(self, request: web.Request) -> web.Response:
        if bearer_key(request) is None:
            return missing_key()
        file_id = request.match_info["file_id"]
        if file_id not in self.store.files:
            return openai_error(404, f"No such File object: {file_id}", "invalid_request_error")
        return web.Response(body=self.store.files[file_id][1], content_type="application/octet-stream")

    async def create(self, request: web.Request) -> web.Response:
        api_key = bearer_key(request)
        if api_key is None:
            return missing_key()
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return openai_error(400, "We could not parse the JSON body of your request.",
                                "invalid_request_error")
        file_id = body.get("input_file_id")
        if body.get("endpoint") != CHAT_ENDPOINT:
            return openai_error(400, f"endpoint: this simulator supports only {CHAT_ENDPOINT}",
                                "invalid_request_error", param="endpoint")
        if body.get("completion_window") != WINDOW:
            return openai_error(400, f"completion_window: only '{WINDOW}' is supported",
                                "invalid_request_error", param="completion_window")
        if file_id not in self.store.files:
            return openai_error(404, f"No such File object: {file_id}", "invalid_request_error",
                                param="input_file_id")
        items, failed = self._parse(self.store.files[file_id][1])
        if self.store.settings.fail_jobs and not failed:
            failed = "validation failed (injected by /_sim/batches fail_jobs)"
        batch = SimBatch(self.store.new_id("batch_"), "openai", items, key_fingerprint(api_key),
                         api_key, self.store.clock(), time.time(), input_file_id=file_id,
                         failed=failed)
        self.store.batches[batch.id] = batch
        log.info("sim.batch_created id=%s shape=openai items=%d failed=%s", batch.id, len(items),
                 bool(failed))
        return web.json_response(self._object(batch, body.get("metadata")))

    @staticmethod
    def _parse(content: bytes) -> tuple[list[Item], str]:
        items: list[Item] = []
        seen: set[str] = set()
        for n, line in enumerate(content.decode(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                return [], f"line {n}: not valid JSON"
            cid = row.get("custom_id") if isinstance(row, dict) else None
            if not isinstance(cid, str) or not cid:
                return [], f"line {n}: custom_id is required"
            if cid in seen:
                return [], f"line {n}: duplicate custom_id {cid!r}"
            seen.add(cid)
            if row.get("method") != "POST" or row.get("url") != CHAT_ENDPOINT:
                return [], f"line {n}: method must be POST and url {CHAT_ENDPOINT}"
            try:
                if not isinstance(row.get("body"), dict):
                    raise InvalidRequest("body: an object is required")
                chat, _ = parse_chat_request(row["body"])
                items.append(Item(cid, chat))
            except InvalidRequest as exc:
                items.append(Item(cid, None, exc.message))
        if not items:
            return [], "the input file has no requests"
        return items, ""

    def _status(self, b: SimBatch) -> str:
        self.store.settle(b)
        if b.failed:
            return "failed"
        if b.outcomes is None:
            return "cancelling" if b.cancelled_at is not None else "in_progress"
        if b.cancelled_at is not None:
            return "cancelled"
        if any(o.kind == EXPIRED for o in b.outcomes):
            return "expired"
        return "completed"

    def _object(self, b: SimBatch, metadata: Any = None) -> dict[str, Any]:
        status = self._status(b)
        done = b.outcomes or []
        ok = sum(o.kind == SUCCEEDED for o in done)
        created = int(b.created_wall)
        ended = int(b.ended_at_wall) if b.ended_at_wall else None
        return {
            "id": b.id, "object": "batch", "endpoint": CHAT_ENDPOINT,
            "errors": {"object": "list", "data": [{"code": "invalid_input", "message": b.failed,
                                                   "param": None, "line": None}]} if b.failed else None,
            "input_file_id": b.input_file_id, "completion_window": WINDOW, "status": status,
            "output_file_id": b.output_file_id or None, "error_file_id": b.error_file_id or None,
            "created_at": created, "in_progress_at": None if b.failed else created,
            "expires_at": created + 86400, "finalizing_at": ended,
            "completed_at": ended if status == "completed" else None,
            "failed_at": created if b.failed else None,
            "expired_at": ended if status == "expired" else None,
            "cancelling_at": int(b.cancelled_wall) if b.cancelled_wall else None,
            "cancelled_at": ended if status == "cancelled" else None,
            "request_counts": {"total": len(b.items), "completed": ok,
                               "failed": len(done) - ok},
            "metadata": metadata if isinstance(metadata, dict) else {}}

    def _find(self, request: web.Request) -> SimBatch | web.Response:
        if bearer_key(request) is None:
            return missing_key()
        batch = self.store.batches.get(request.match_info["batch_id"])
        if batch is None or batch.shape != "openai":
            return openai_error(404, f"No batch found with id '{request.match_info['batch_id']}'.",
                                "invalid_request_error")
        return batch

    async def retrieve(self, request: web.Request) -> web.Response:
        found = self._find(request)
        return found if isinstance(found, web.Response) else web.json_response(self._object(found))

    async def cancel(self, request: web.Request) -> web.Response:
        found = self._find(request)
        if isinstance(found, web.Response):
            return found
        self.store.settle(found)
        if found.outcomes is None and not found.failed:
            found.cancelled_at, found.cancelled_wall = self.store.clock(), time.time()
        return web.json_response(self._object(found))


# --------------------------------------------------------------------------- Anthropic

class AnthropicBatches:
    def __init__(self, store: BatchStore):
        self.store = store

    def _auth(self, request: web.Request) -> web.Response | None:
        if not request.headers.get("x-api-key", "").strip():
            return anthropic_error(401, "authentication_error", "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            return anthropic_error(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    async def create(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return anthropic_error(400, "invalid_request_error", "requests: at least one request is required")
        items, seen = [], set()
        for i, entry in enumerate(requests):
            cid = entry.get("custom_id") if isinstance(entry, dict) else None
            if not isinstance(cid, str) or not ANTHROPIC_CUSTOM_ID.match(cid):
                return anthropic_error(400, "invalid_request_error",
                                       f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if cid in seen:
                return anthropic_error(400, "invalid_request_error",
                                       f"requests.{i}.custom_id: duplicate custom_id {cid!r}")
            seen.add(cid)
            params = entry.get("params")
            try:
                if not isinstance(params, dict):
                    raise InvalidRequest("params: an object is required")
                items.append(Item(cid, parse_messages_request(params)))
            except InvalidRequest as exc:
                items.append(Item(cid, None, exc.message))
        api_key = request.headers.get("x-api-key", "").strip()
        batch = SimBatch(self.store.new_id("msgbatch_"), "anthropic", items,
                         key_fingerprint(api_key), api_key, self.store.clock(), time.time())
        self.store.batches[batch.id] = batch
        log.info("sim.batch_created id=%s shape=anthropic items=%d", batch.id, len(items))
        return web.json_response(self._object(batch, request))

    def _object(self, b: SimBatch, request: web.Request) -> dict[str, Any]:
        self.store.settle(b)
        done = b.outcomes or []
        counts = {k: sum(o.kind == k for o in done) for k in (SUCCEEDED, ERRORED, CANCELED, EXPIRED)}
        counts["processing"] = len(b.items) - len(done)
        if b.outcomes is not None:
            status = "ended"
        else:
            status = "canceling" if b.cancelled_at is not None else "in_progress"
        results_url = None
        if status == "ended":
            results_url = str(request.url.with_path(f"/v1/messages/batches/{b.id}/results")
                              .with_query(None))
        return {"id": b.id, "type": "message_batch", "processing_status": status,
                "request_counts": counts, "ended_at": _iso(b.ended_at_wall),
                "created_at": _iso(b.created_wall), "expires_at": _iso(b.created_wall + 86400),
                "archived_at": None, "cancel_initiated_at": _iso(b.cancelled_wall),
                "results_url": results_url}

    def _find(self, request: web.Request) -> SimBatch | web.Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        batch = self.store.batches.get(request.match_info["batch_id"])
        if batch is None or batch.shape != "anthropic":
            return anthropic_error(404, "not_found_error",
                                   f"message batch {request.match_info['batch_id']} not found")
        return batch

    async def retrieve(self, request: web.Request) -> web.Response:
        found = self._find(request)
        return found if isinstance(found, web.Response) else web.json_response(
            self._object(found, request))

    async def results(self, request: web.Request) -> web.Response:
        found = self._find(request)
        if isinstance(found, web.Response):
            return found
        self.store.settle(found)
        if found.outcomes is None:
            return anthropic_error(400, "invalid_request_error",
                                   f"message batch {found.id} has not ended yet")
        lines = []
        for o in found.outcomes:
            if o.kind == SUCCEEDED:
                result: dict[str, Any] = {"type": SUCCEEDED, "message": o.body}
            elif o.kind == ERRORED:
                result = {"type": ERRORED, "error": o.body}
            else:
                result = {"type": o.kind}
            lines.append(json.dumps({"custom_id": o.custom_id, "result": result},
                                    separators=(",", ":")))
        return web.Response(body=("\n".join(lines) + "\n").encode(),
                            content_type="application/x-jsonl")

    async def cancel(self, request: web.Request) -> web.Response:
        found = self._find(request)
        if isinstance(found, web.Response):
            return found
        self.store.settle(found)
        if found.outcomes is None:
            found.cancelled_at, found.cancelled_wall = self.store.clock(), time.time()
        return web.json_response(self._object(found, request))


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


def batch_routes(sim: Simulator, store: BatchStore | None = None) -> list[web.RouteDef]:
    store = store or BatchStore(sim)
    oa, an = OpenAIBatches(store), AnthropicBatches(store)
    return [web.post("/v1/files", oa.upload),
            web.get("/v1/files/{file_id}", oa.file_info),
            web.get("/v1/files/{file_id}/content", oa.file_content),
            web.post("/v1/batches", oa.create),
            web.get("/v1/batches/{batch_id}", oa.retrieve),
            web.post("/v1/batches/{batch_id}/cancel", oa.cancel),
            web.post("/v1/messages/batches", an.create),
            web.get("/v1/messages/batches/{batch_id}", an.retrieve),
            web.get("/v1/messages/batches/{batch_id}/results", an.results),
            web.post("/v1/messages/batches/{batch_id}/cancel", an.cancel),
            *batch_control(store)]
