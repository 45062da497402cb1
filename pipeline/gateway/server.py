"""``llmpipe gateway``: one gateway instance under uvicorn.

The instance id (``--instance``, ``LLMPIPE_GATEWAY_ID``, default the host name) names the
instance's reply topics, so give each replica its own stable id (a StatefulSet pod name,
say): a restarted instance takes up its own topics again rather than leaving new ones."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

import uvicorn

from pipeline.gateway.app import Gateway
from pipeline.gateway.keys import KeyRing
from pipeline.gateway.replies import Replies, create_reply_topics
from pipeline.heap import settle_heap
from pipeline.kafka.topics import load_topic_specs, prefixed
from pipeline.runtime import build_runtime
from pipeline.settings import Settings
from pipeline.tenancy.directory import TenantDirectory

log = logging.getLogger("llmpipe.gateway")

WAIT_GRACE_S = 5.0      # past the pipeline's own deadline, before the caller gets a 504


def build_gateway(settings: Settings, instance: str) -> Gateway:
    runtime = build_runtime(settings)
    topics = settings.topics
    keys = KeyRing()
    directory = TenantDirectory(settings.kafka_bootstrap, topics.tenants, runtime.codec,
                                on_change=keys.update)
    reply_topics = topics.gateway_replies(instance)
    return Gateway(
        instance=instance, bootstrap=settings.kafka_bootstrap, requests_topic=topics.requests,
        reply_topics=reply_topics, codec=runtime.codec, catalog=runtime.catalog,
        bounds=runtime.bounds, directory=directory, keys=keys,
        replies=Replies(settings.kafka_bootstrap, reply_topics, runtime.codec,
                        fetch_max_wait_ms=settings.fetch_max_wait_ms),
        wait_s=runtime.deployments.calls.deadline_s + WAIT_GRACE_S, cancels_topic=topics.cancels,
        tenants_ready_timeout_s=settings.tenants_ready_timeout_s)


async def serve(settings: Settings, instance: str, host: str, port: int) -> None:
    """Create the instance's reply topics, then serve until SIGINT/SIGTERM. Prints
    ``gateway listening on http://HOST:PORT`` once it answers (port 0: a free one)."""
    specs = {s.name: s for s in prefixed(load_topic_specs(), settings.topics.prefix)}
    gateway = build_gateway(settings, instance)
    settle_heap(settings.gc_young)
    await create_reply_topics(settings.kafka_bootstrap, gateway.reply_topics,
                              specs[settings.topics.chunks])
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(gateway.app(), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, loop="auto")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        bound_host, bound_port = sock.getsockname()[:2]
        print(f"gateway listening on http://{bound_host}:{bound_port}", flush=True)
    await task


def main(settings: Settings, instance: str, host: str, port: int) -> int:
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(serve(settings, instance, host, port))
    except OSError as exc:
        print(f"llmpipe gateway: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    return 0
