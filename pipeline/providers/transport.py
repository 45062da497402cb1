"""An httpx transport that sends over aiohttp, for provider calls.

httpx's own pool (httpcore) checks every pooled connection on every request — a socket
poll per connection — so at 100 calls in flight it cost 6.7–8.3 ms of CPU per call here,
against 0.4–0.5 ms through this transport and the same httpx client on top (`llmpipe bench
http`, docs/BENCHMARKS.md). The adapters keep httpx's request/response API (and tests keep
``httpx.MockTransport``); only the wire moves. aiohttp's errors become the httpx errors the
adapters already classify: timeouts as ``httpx.TimeoutException`` (the call timed out),
everything else on the connection as ``httpx.TransportError`` (the provider failed).

A request marked with the ``STREAM_BODY`` extension gets its body handed to httpx as it
arrives: a streamed answer's events must reach the adapter while the provider is still
generating. Any other body is read whole first, as one piece, as before streaming came:
a single JSON document gains nothing from httpx's chunk-by-chunk machinery, and the hot
path should not pay for it. The same error mapping applies to reads mid-body."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx


# httpx request extension: hand this response's body over as it arrives (a stream)
STREAM_BODY = "llmpipe.stream_body"

class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (its connection pool) per transport, opened on first use in the
    running event loop; ``limits`` caps connections like httpx's would."""

    def __init__(self, limits: httpx.Limits):
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=self._limits.keepalive_expiry)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    def _request(self, method: str, url: str, headers: Any, data: bytes | None,
                 connect_s: float | None, read_s: float | None):
        return self._open().request(
            method, url, headers=headers, data=data, allow_redirects=False, compress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        with httpx_errors(request):
            resp = await self._request(request.method, str(request.url),
                                       request.headers.multi_items(), request.content or None,
                                       timeout.get("connect"), timeout.get("read"))
            # Still encoded (auto_decompress off): httpx decodes by Content-Encoding.
            if request.extensions.get(STREAM_BODY):
                return httpx.Response(resp.status, headers=resp.raw_headers,
                                      stream=AiohttpBody(resp, request), request=request)
            async with resp:
                body = await resp.read()
        return httpx.Response(resp.status, headers=resp.raw_headers, content=body,
                              request=request)

    async def post_json(self, url: str, body: bytes, headers: dict[str, str],
                        connect_s: float | None, read_s: float | None
                        ) -> tuple[int, Any, bytes, str]:
        """A plain JSON POST straight on aiohttp, without building httpx's request and
        response objects (~7% of a worker's CPU per call, issue 17). Returns
        status, raw headers, the body as received and its Content-Encoding ("" if none).
        Failures are raised as the same httpx errors (``httpx_errors``)."""
        with httpx_errors_lazy("POST", url):
            resp = await self._request("POST", url, headers, body, connect_s, read_s)
            async with resp:
                data = await resp.read()
        return resp.status, resp.raw_headers, data, resp.headers.get("Content-Encoding", "")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class AiohttpBody(httpx.AsyncByteStream):
    """An aiohttp response's body, chunk by chunk as the socket delivers it. Closing it
    hands the connection back to the pool once the body was read to the end (aiohttp
    closes it instead when it was not, so a half-read stream is never reused)."""

    def __init__(self, resp: aiohttp.ClientResponse, request: httpx.Request):
        self._resp = resp
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with httpx_errors(self._request):
            async for chunk in self._resp.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._resp.release()


@contextlib.contextmanager
def httpx_errors(request: httpx.Request) -> Iterator[None]:
    """aiohttp's failures, sending or reading, as the httpx errors the adapters classify."""
    try:
        yield
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise httpx.ReadTimeout(f"{type(exc).__name__}: {exc}", request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except aiohttp.ClientError as exc:      # disconnects, bad payloads, protocol errors
        raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc


@contextlib.contextmanager
def httpx_errors_lazy(method: str, url: str) -> Iterator[None]:
    """``httpx_errors``, the httpx request built only when there is an error to report."""
    try:
        yield
    except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
        with httpx_errors(httpx.Request(method, url)):
            raise exc
