"""The simulator's Batch APIs over its job store (batchstore.py): OpenAI ``/v1/files``
(multipart upload, ``purpose=batch``) + ``/v1/batches`` (create, retrieve, cancel), and
Anthropic ``/v1/messages/batches`` (create, retrieve, results, cancel).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from aiohttp import web

from pipeline.simulator.anthropic import anthropic_error
from pipeline.simulator.anthropic_request import parse_messages_request
from pipeline.simulator.batchstore import (CANCELED, ERRORED, EXPIRED, SUCCEEDED, BatchStore, Item,
                                           SimBatch, batch_control, iso_time)
from pipeline.simulator.core import InvalidRequest, Simulator, bearer_key, key_fingerprint
from pipeline.simulator.openai import key_refusal, openai_error
from pipeline.simulator.openai_request import parse_chat_request

log = logging.getLogger("pipeline.simulator")

CHAT_ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

# ----------------------------------------------------------------------------- OpenAI

class OpenAIBatches:
    def __init__(self, store: BatchStore):
        self.store = store

    async def upload(self, request: web.Request) -> web.Response:
        refused = key_refusal(self.store.sim, bearer_key(request))
        if refused is not None:
            return refused
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
        refused = key_refusal(self.store.sim, bearer_key(request))
        if refused is not None:
            return refused
        file_id = request.match_info["file_id"]
        if file_id not in self.store.files:
            return openai_error(404, f"No such File object: {file_id}", "invalid_request_error")
        return web.json_response(self._file(file_id))

    async def file_content(self, request: web.Request) -> web.Response:
        refused = key_refusal(self.store.sim, bearer_key(request))
        if refused is not None:
            return refused
        file_id = request.match_info["file_id"]
        if file_id not in self.store.files:
            return openai_error(404, f"No such File object: {file_id}", "invalid_request_error")
        return web.Response(body=self.store.files[file_id][1], content_type="application/octet-stream")

    async def create(self, request: web.Request) -> web.Response:
        api_key = bearer_key(request)
        refused = key_refusal(self.store.sim, api_key)
        if refused is not None:
            return refused
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
        refused = key_refusal(self.store.sim, bearer_key(request))
        if refused is not None:
            return refused
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
        api_key = request.headers.get("x-api-key", "").strip()
        if not api_key:
            return anthropic_error(401, "authentication_error", "x-api-key header is required")
        if not self.store.sim.config.accepts_key(api_key):
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
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
                "request_counts": counts, "ended_at": iso_time(b.ended_at_wall),
                "created_at": iso_time(b.created_wall), "expires_at": iso_time(b.created_wall + 86400),
                "archived_at": None, "cancel_initiated_at": iso_time(b.cancelled_wall),
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
