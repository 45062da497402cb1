"""Provider Batch API clients: OpenAI (``/files`` JSONL upload + ``/batches``) and Anthropic
(``/messages/batches``). Each item's request body is exactly what the deployment's live
adapter would POST, and each item's result is read by the same adapter, so batch answers
carry the same usage semantics and error codes as live ones.

Items are named ``item-<index>`` (custom_id), index into the job's item list: request ids
need not satisfy the providers' custom_id rules, and a job never holds one request twice.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from pipeline import errors
from pipeline.batchapi.jobs import CANCELED, ERRORED, EXPIRED, SUCCEEDED, ItemResult, JobStatus
from pipeline.providers.deployments import CallLimits, Deployment
from pipeline.errors import GatewayError
from pipeline.events.models import RoutedRequest
from pipeline.providers import make_adapter
from pipeline.providers.http import HTTPAdapter
from pipeline.secrets import Secret

log = logging.getLogger("llmpipe.batchapi")

CHAT_ENDPOINT = "/v1/chat/completions"


def custom_id(index: int) -> str:
    return f"item-{index}"


def item_index(cid: Any) -> int | None:
    if isinstance(cid, str) and cid.startswith("item-") and cid[5:].isdigit():
        return int(cid[5:])
    return None


class Created:
    """What a provider answered to a create: its job id (and OpenAI's input file id)."""

    def __init__(self, provider_job_id: str, input_file_id: str = "", status: str = ""):
        self.provider_job_id, self.input_file_id, self.status = provider_job_id, input_file_id, status


class BatchClient:
    """One deployment's Batch API. Subclasses speak a provider's shape."""

    def __init__(self, deployment: Deployment, key: Secret, limits: CallLimits,
                 timeout_s: float = 60.0, completion_window: str = "24h",
                 transport: httpx.AsyncBaseTransport | None = None):
        self.deployment = deployment
        self.completion_window = completion_window
        self.adapter: HTTPAdapter = make_adapter(deployment, key, limits, transport)  # type: ignore
        self._http = httpx.AsyncClient(base_url=deployment.base_url, transport=transport,
                                       timeout=httpx.Timeout(timeout_s, connect=limits.connect_timeout_s))

    async def create(self, job_id: str, items: list[RoutedRequest]) -> Created:
        raise NotImplementedError

    async def status(self, provider_job_id: str) -> JobStatus:
        raise NotImplementedError

    async def results(self, provider_job_id: str) -> dict[int, ItemResult]:
        raise NotImplementedError

    async def cancel(self, provider_job_id: str) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self._http.aclose()
        await self.adapter.aclose()

    # -- shared

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One HTTP call; transport failures and non-2xx answers raise GatewayError with the
        live adapter's classification (the key is never in the message)."""
        headers = {**self.adapter.auth_headers(), **kwargs.pop("headers", {})}
        try:
            resp = await self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise GatewayError(f"{self.deployment.id}: batch API {type(exc).__name__}",
                               errors.TIMEOUT) from None
        except httpx.HTTPError as exc:
            raise GatewayError(f"{self.deployment.id}: batch API connection failed "
                               f"({type(exc).__name__})", errors.PROVIDER_ERROR) from None
        if not 200 <= resp.status_code < 300:
            raise self.adapter.error(resp)
        return resp

    async def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        resp = await self._call(method, url, **kwargs)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise GatewayError(f"{self.deployment.id}: batch API answered a non-object body",
                               errors.PROVIDER_ERROR)
        return data

    def _item_error(self, status: int, body: Any) -> ItemResult:
        """A failed item, classified as the live adapter classifies the same HTTP answer."""
        fake = httpx.Response(status, json=body if isinstance(body, dict) else {},
                              request=httpx.Request("POST", self.deployment.base_url))
        err = self.adapter.error(fake)
        return ItemResult(ERRORED, code=err.code, message=err.message, retryable=err.retryable)

    def _completion(self, body: Any) -> ItemResult:
        try:
            if not isinstance(body, dict):
                raise TypeError("not an object")
            return ItemResult(SUCCEEDED, completion=self.adapter.completion(body, 0))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return ItemResult(ERRORED, code=errors.PROVIDER_ERROR,
                              message=f"{self.deployment.id}: malformed batch result "
                                      f"({type(exc).__name__})")


def _jsonl(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            log.warning("batch_result_line_unreadable chars=%d", len(line))
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- OpenAI

OPENAI_RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
OPENAI_ENDED = frozenset({"completed", "expired", "cancelled"})


class OpenAIBatchClient(BatchClient):
    async def create(self, job_id: str, items: list[RoutedRequest]) -> Created:
        lines = [json.dumps({"custom_id": custom_id(i), "method": "POST", "url": CHAT_ENDPOINT,
                             "body": self.adapter.payload(routed)}, separators=(",", ":"))
                 for i, routed in enumerate(items)]
        content = ("\n".join(lines) + "\n").encode()
        upload = await self._json("POST", "/files", data={"purpose": "batch"},
                                  files={"file": (f"llmpipe-{job_id}.jsonl", content,
                                                  "application/jsonl")})
        file_id = str(upload.get("id") or "")
        if not file_id:
            raise GatewayError(f"{self.deployment.id}: file upload answered no id",
                               errors.PROVIDER_ERROR)
        batch = await self._json("POST", "/batches", json={
            "input_file_id": file_id, "endpoint": CHAT_ENDPOINT,
            "completion_window": self.completion_window,
            "metadata": {"llmpipe_job_id": job_id, "deployment": self.deployment.id}})
        batch_id = str(batch.get("id") or "")
        if not batch_id:
            raise GatewayError(f"{self.deployment.id}: batch create answered no id",
                               errors.PROVIDER_ERROR)
        return Created(batch_id, file_id, str(batch.get("status") or ""))

    async def status(self, provider_job_id: str) -> JobStatus:
        data = await self._json("GET", f"/batches/{provider_job_id}")
        raw = str(data.get("status") or "")
        counts = data.get("request_counts") or {}
        done = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
        total = int(counts.get("total") or 0)
        if raw in OPENAI_ENDED:
            return JobStatus(raw, ended=True, done=done, total=total)
        if raw == "failed":
            detail = ((data.get("errors") or {}).get("data") or [{}])[0]
            message = detail.get("message") if isinstance(detail, dict) else None
            return JobStatus(f"failed: {message}" if message else "failed", failed=True)
        if raw not in OPENAI_RUNNING:
            log.warning("batch_status_unknown deployment=%s status=%r", self.deployment.id, raw)
        return JobStatus(raw, done=done, total=total)

    async def results(self, provider_job_id: str) -> dict[int, ItemResult]:
        data = await self._json("GET", f"/batches/{provider_job_id}")
        out: dict[int, ItemResult] = {}
        for file_field in ("error_file_id", "output_file_id"):   # an output wins over an error
            file_id = data.get(file_field)
            if not file_id:
                continue
            resp = await self._call("GET", f"/files/{file_id}/content")
            for row in _jsonl(resp.text):
                index = item_index(row.get("custom_id"))
                if index is not None:
                    out[index] = self._row(row)
        return out

    def _row(self, row: dict[str, Any]) -> ItemResult:
        response = row.get("response")
        error = row.get("error")
        if isinstance(response, dict):
            status = int(response.get("status_code") or 0)
            if status == 200:
                return self._completion(response.get("body"))
            return self._item_error(status or 500, response.get("body"))
        if isinstance(error, dict):
            code = str(error.get("code") or "")
            message = str(error.get("message") or code)
            if code == "batch_expired":
                return ItemResult(EXPIRED, code="batch_expired", message=message)
            if code == "batch_cancelled":
                return ItemResult(CANCELED, code="batch_cancelled", message=message)
            return ItemResult(ERRORED, code=errors.PROVIDER_ERROR, message=message[:300])
        return ItemResult(ERRORED, code=errors.PROVIDER_ERROR, message="batch result without response")

    async def cancel(self, provider_job_id: str) -> None:
        await self._json("POST", f"/batches/{provider_job_id}/cancel")


# ------------------------------------------------------------------------ Anthropic

ANTHROPIC_TYPE_STATUS = {"invalid_request_error": 400, "authentication_error": 401,
                         "permission_error": 403, "not_found_error": 404,
                         "request_too_large": 413, "rate_limit_error": 429,
                         "api_error": 500, "overloaded_error": 529}


class AnthropicBatchClient(BatchClient):
    async def create(self, job_id: str, items: list[RoutedRequest]) -> Created:
        body = {"requests": [{"custom_id": custom_id(i), "params": self.adapter.payload(routed)}
                             for i, routed in enumerate(items)]}
        data = await self._json("POST", "/messages/batches", json=body)
        batch_id = str(data.get("id") or "")
        if not batch_id:
            raise GatewayError(f"{self.deployment.id}: message batch create answered no id",
                               errors.PROVIDER_ERROR)
        return Created(batch_id, "", str(data.get("processing_status") or ""))

    async def status(self, provider_job_id: str) -> JobStatus:
        data = await self._json("GET", f"/messages/batches/{provider_job_id}")
        raw = str(data.get("processing_status") or "")
        counts = data.get("request_counts") or {}
        done = sum(int(counts.get(k) or 0) for k in ("succeeded", "errored", "canceled", "expired"))
        total = done + int(counts.get("processing") or 0)
        return JobStatus(raw, ended=raw == "ended", done=done, total=total)

    async def results(self, provider_job_id: str) -> dict[int, ItemResult]:
        data = await self._json("GET", f"/messages/batches/{provider_job_id}")
        url = data.get("results_url") or f"/messages/batches/{provider_job_id}/results"
        resp = await self._call("GET", url)
        out: dict[int, ItemResult] = {}
        for row in _jsonl(resp.text):
            index = item_index(row.get("custom_id"))
            if index is not None:
                out[index] = self._row(row.get("result"))
        return out

    def _row(self, result: Any) -> ItemResult:
        kind = result.get("type") if isinstance(result, dict) else None
        if kind == "succeeded":
            return self._completion(result.get("message"))
        if kind == "errored":
            body = result.get("error") if isinstance(result.get("error"), dict) else {}
            inner = body.get("error") if isinstance(body.get("error"), dict) else {}
            status = ANTHROPIC_TYPE_STATUS.get(str(inner.get("type") or ""), 500)
            return self._item_error(status, body)
        if kind == "expired":
            return ItemResult(EXPIRED, code="batch_expired", message="the batch expired first")
        if kind == "canceled":
            return ItemResult(CANCELED, code="batch_cancelled", message="the batch was canceled")
        return ItemResult(ERRORED, code=errors.PROVIDER_ERROR, message=f"unknown result type {kind!r}")

    async def cancel(self, provider_job_id: str) -> None:
        await self._json("POST", f"/messages/batches/{provider_job_id}/cancel")


CLIENT_CLASSES: dict[str, type[BatchClient]] = {"openai": OpenAIBatchClient,
                                                "anthropic": AnthropicBatchClient}
