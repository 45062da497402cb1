"""The gateway's Prometheus metrics: an ASGI middleware that counts every HTTP request by
endpoint and status code and times it to the end of its response (a stream included),
and the GET /metrics page (pipeline/metrics.py)."""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from starlette.requests import Request as HttpRequest
from starlette.responses import Response as HttpResponse

from pipeline import metrics

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings",
             "/v1/models": "models", "/healthz": "health", "/metrics": "metrics"}

Scope = dict[str, Any]
Message = dict[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                Awaitable[None]]


def endpoint_of(path: str) -> str:
    """A bounded label for a path (unknown paths are "other", never the path itself)."""
    if path.startswith("/v1/models/"):
        return "models"
    return ENDPOINTS.get(path, "other")


class Metered:
    def __init__(self, app: ASGI):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint, status, started = endpoint_of(scope["path"]), 500, time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            metrics.GATEWAY_REQUESTS.labels(endpoint, str(status)).inc()
            metrics.GATEWAY_SECONDS.labels(endpoint).observe(time.perf_counter() - started)


async def metrics_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})
