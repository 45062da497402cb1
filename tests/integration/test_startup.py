"""A worker started before its broker waits for it — one clear log line per attempt —
and comes up when the broker does, instead of exiting (issue 20)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from pipeline.client import GatewayClient, make_request
from pipeline.dev.stack import DevStack, Worker
from pipeline.embedded import EmbeddedBroker
from pipeline.embedded.ports import free_port

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
