"""A worker started before its broker, or while ClickHouse is down, waits for it — one clear
log line per attempt — and comes up when it does, instead of exiting (issue 20)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from pipeline.analytics.clickhouse import FAULT_FILE_ENV
from pipeline.client import GatewayClient, make_request
from pipeline.dev.stack import DevStack, Worker
from pipeline.embedded import EmbeddedBroker
from pipeline.embedded.ports import free_port
from tests.integration.conftest import answers, make_stack

pytestmark = pytest.mark.integration


def test_a_worker_started_before_the_broker_waits_for_it(tmp_path):
    port = free_port()
    stack = DevStack(tmp_path / "stack", kafka_port=port, topic_prefix="startup.",
                     app_id="llmpipe-startup",
                     simulator_args=["--latency-scale", "0.05", "--no-base-errors"]).start()
    try:
        stack.broker.stop()                                     # the broker goes away
        settings = stack.settings(web_port=free_port(), startup_timeout_s=120)
        log_path = tmp_path / "worker.log"
        process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"],
                                   env=stack.worker_env(settings), stdout=open(log_path, "ab"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker("worker-1", process, settings.web_port, log_path,
                        ("intake", "dispatch", "ledger", "monitor"))
        stack.workers.append(worker)
        deadline = time.monotonic() + 30
        while "waiting_for what=kafka" not in log_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.3)
        assert "waiting_for what=kafka" in log_path.read_text()
        assert process.poll() is None, "the worker exited instead of waiting"

        stack.broker = EmbeddedBroker(port, tmp_path / "broker2.log").start()   # back
        stack.wait_web(worker, timeout=90)
        assert "reachable what=kafka" in log_path.read_text()

        async def one():
            async with GatewayClient(stack.bootstrap, stack.topics) as gw:
                return await gw.request(make_request("acme", "Up at last?",
                                                     model="gpt-4o-mini", max_tokens=20),
                                        timeout=60)
        assert asyncio.run(one()).status == "ok"
    finally:
        stack.stop()


def spawn_worker(stack: DevStack, log_path, **overrides) -> Worker:
    """A worker process not waited for (it is meant to be stuck waiting at start-up)."""
    settings = stack.settings(web_port=free_port(), **overrides)
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"],
                               env=stack.worker_env(settings), stdout=open(log_path, "ab"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    worker = Worker("worker-1", process, settings.web_port, log_path, tuple(settings.agents))
    stack.workers.append(worker)
    return worker


def test_a_worker_started_while_clickhouse_is_down_waits_then_bills_every_request(
        broker, tmp_path_factory, monkeypatch):
    """ClickHouse refuses connections (the chaos switch) when the worker starts: it logs
    that it waits, stays up, and requests published meanwhile wait on the topic. Once
    ClickHouse is back each is answered and has exactly one usage row."""
    fault = tmp_path_factory.mktemp("chdown") / "clickhouse-down"
    fault.touch()
    monkeypatch.setenv(FAULT_FILE_ENV, str(fault))          # the worker inherits the switch
    stack = make_stack(broker, tmp_path_factory, "chdown",
                       ["--latency-scale", "0.05", "--no-base-errors", "--seed", "24"])
    try:
        log_path = stack.data_dir / "worker.log"
        worker = spawn_worker(stack, log_path, startup_timeout_s=120)
        deadline = time.monotonic() + 60
        while "waiting_for what=clickhouse" not in log_path.read_text() \
                and time.monotonic() < deadline:
            assert worker.alive(), log_path.read_text()[-2000:]
            time.sleep(0.3)
        assert "Connection refused (fault injected" in log_path.read_text()
        requests = [make_request(f"chdown-{i % 3}", f"Ledger down {i}?", model="gpt-4o-mini",
                                 max_tokens=16) for i in range(12)]

        async def publish_then_bring_clickhouse_back():
            async with GatewayClient(stack.bootstrap, stack.topics) as gw:
                for r in requests:
                    gw.expect(r)
                    await gw.send(r)
                await asyncio.sleep(2)
                assert worker.alive(), "the worker exited instead of waiting"
                fault.unlink()                              # ClickHouse is back
                return await answers(gw, stack, requests, timeout=120)
        responses = asyncio.run(publish_then_bring_clickhouse_back())
        assert all(r.status == "ok" for r in responses.values())
        assert "reachable what=clickhouse" in log_path.read_text()
        ids = [r.request_id for r in requests]
        assert worker.wait_for_usage(ids) == {i: 1 for i in ids}
    finally:
        stack.stop()
