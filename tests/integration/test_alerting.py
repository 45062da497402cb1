"""Cost-overrun alerting on the embedded stack: a tenant driven past its "hourly" spend
threshold (the window shortened to seconds by a test config directory) yields exactly one
firing Alert on llm.alerts, then one resolution once the window has passed with no new
usage; a loopback webhook receiver gets the same two, as Slack-compatible JSON."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.client import GatewayClient, make_request
from pipeline.dev.stack import DevStack, write_config_dir

WINDOW_S = 10                    # the rule's tumbling window ("1h" in production)
THRESHOLD = Decimal("0.0008")    # USD: a few gpt-4.1 answers
DAILY = Decimal("0.0015")        # the second rule: crossed across a worker restart
TOKEN = f"XXsecret{uuid.uuid4().hex}"

RULES = f"""\
evaluation: {{timer_interval_s: 0.5, sweep_interval_s: 5}}
webhook: {{max_attempts: 3, backoff_base_s: 0.2, backoff_cap_s: 1, timeout_s: 5}}
rules:
  - name: tenant_hourly_spend
    description: hourly spend (window shortened for the test)
    metric: spend
    scope: tenant
    window: {WINDOW_S}s
    threshold: {THRESHOLD}
    severity: warning
    labels: {{runbook: "https://runbooks.example/spend"}}
  - name: tenant_daily_spend_test
    metric: spend
    scope: tenant
    window: day
    threshold: {DAILY}
    severity: warning
"""


class Receiver:
    """A loopback HTTP server recording every JSON body POSTed to it."""

    def __init__(self):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                bodies.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{TOKEN}"

    def for_tenant(self, tenant: str) -> list[dict]:
        out = []
        for _, body in list(self.bodies):
            fields = {f["title"]: f["value"] for f in body["attachments"][0]["fields"]}
            if fields.get("tenant") == tenant:
                out.append(fields)
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory, receiver):
    base = tmp_path_factory.mktemp("alerting")
    config = write_config_dir(base / "config")
    (config / "alert_rules.yaml").write_text(RULES)
    uid = uuid.uuid4().hex[:8]
    s = DevStack(base / "stack", topic_prefix=f"alert{uid}.", app_id=f"llmpipe-alert-{uid}",
                 simulator_args=["--latency-scale", "0.05", "--no-base-errors", "--seed", "3"],
                 config_dir=config).start(broker=broker)
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMPIPE_ALERT_WEBHOOK_URL", receiver.url)
    try:
        s.start_worker(agents=("intake", "dispatch", "monitor"))
        yield s
    finally:
        mp.undo()
        s.stop()


def wait_for(what: str, probe, timeout: float, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)


def test_spend_over_threshold_fires_once_and_resolves_after_the_window(stack, receiver):
    tenant = f"spend-{uuid.uuid4().hex[:6]}"
    rule = ("tenant_hourly_spend",)
    window_ms = WINDOW_S * 1000

    async def drive() -> tuple[list, int]:
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            # warm up the path (first call pays connection set-up) with another tenant
            await gw.request(make_request(f"warm-{tenant}", "hi", max_tokens=8), timeout=60)
            # start just after a window boundary, so every answer lands in one window
            now = time.time() * 1000
            await asyncio.sleep((window_ms - now % window_ms + 150) / 1000)
            start = int(time.time() * 1000) // window_ms * window_ms
            responses, spent = [], 0
            while spent <= THRESHOLD * 10**9 and len(responses) < 20:
                r = await gw.request(make_request(tenant, f"list three colours #{len(responses)}",
                                                  model="gpt-4.1", max_tokens=64), timeout=30)
                assert r.status == "ok", r
                responses.append(r)
                spent += r.cost_nanos
            return responses, start

    responses, window_start = asyncio.run(drive())
    spent = sum(r.cost_nanos for r in responses)
    assert len(responses) >= 2, "one answer already crossed the threshold: raise it"
    assert Decimal(spent) / 10**9 > THRESHOLD
    assert max(r.completed_at_ms for r in responses) < window_start + window_ms, \
        "the answers straddled two windows (machine too slow?)"

    def tenant_alerts():
        return [a for a in stack.alerts(window_start, rules=rule) if a.tenant == tenant]

    (fired,) = wait_for("firing alert", tenant_alerts, timeout=15)
    assert fired.state == "firing" and fired.severity == "warning"
    assert Decimal(fired.value) == Decimal(spent) / 10**9          # exact, from nano-dollars
    assert fired.threshold == str(THRESHOLD)
    assert fired.labels["runbook"] == "https://runbooks.example/spend"
    assert fired.labels["episode"] == str(window_start)

    # no new usage: the timer resolves it once the window has passed
    alerts = wait_for("resolution", lambda: (lambda a: a if len(a) >= 2 else None)(tenant_alerts()),
                      timeout=WINDOW_S + 10)
    assert [a.state for a in alerts] == ["firing", "resolved"]
    resolved = alerts[1]
    assert resolved.at_ms >= window_start + window_ms
    assert resolved.labels["episode"] == str(window_start)

    posted = wait_for("two webhook posts", lambda: (lambda p: p if len(p) >= 2 else None)(
        receiver.for_tenant(tenant)), timeout=10)
    time.sleep(1.0)        # a third (duplicate) post would arrive within the timer period
    posted = receiver.for_tenant(tenant)
    assert [(p["alert_id"], p["state"]) for p in posted] == [
        (fired.alert_id, "firing"), (resolved.alert_id, "resolved")]
    assert posted[0]["value"] == fired.value and posted[0]["threshold"] == fired.threshold
    assert all(path == f"/hooks/{TOKEN}" for path, _ in receiver.bodies)

    # still exactly one firing and one resolution; the URL's token is in no log line
    assert [a.state for a in tenant_alerts()] == ["firing", "resolved"]
    worker = stack.workers[0]
    log = worker.log_path.read_text(errors="replace")
    assert TOKEN not in log
    assert "alert_webhook_on url=http://127.0.0.1" in log


def test_an_alert_posted_before_a_restart_is_not_posted_again(stack, receiver):
    """The webhook's record of what it posted is a Faust table on the alert's partition:
    after the worker restarts, a re-delivered copy of an alert it posted (as a monitor
    re-delivered after a crash publishes) is skipped, and a new one still goes out."""
    from aiokafka import AIOKafkaProducer

    from pipeline.events.codec import Codec
    from pipeline.events.models import Alert

    tenant = f"restart-{uuid.uuid4().hex[:6]}"

    def an_alert(aid: str) -> Alert:
        return Alert(alert_id=aid, rule="tenant_hourly_spend", state="firing",
                     severity="warning", tenant=tenant, value="1", threshold="0.5",
                     window="test", message=f"test alert {aid}", at_ms=int(time.time() * 1000))

    async def publish(alert: Alert) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(stack.topics.alerts, Codec().encode(
                alert, stack.topics.alerts), key=tenant.encode())
        finally:
            await producer.stop()

    first = an_alert(str(uuid.uuid4()))
    asyncio.run(publish(first))
    wait_for("the first post", lambda: receiver.for_tenant(tenant), timeout=20)
    agents = stack.workers[0].agents
    stack.stop_worker(stack.workers[0])
    stack.start_worker(agents=agents)
    marker = an_alert(str(uuid.uuid4()))
    asyncio.run(publish(first))                 # a re-delivered copy of the posted alert
    asyncio.run(publish(marker))                # and a new one, behind it on the partition
    wait_for("the marker's post", lambda: len(receiver.for_tenant(tenant)) >= 2, timeout=60)
    time.sleep(1.0)
    assert [p["alert_id"] for p in receiver.for_tenant(tenant)] == [first.alert_id,
                                                                     marker.alert_id]


def test_spend_counted_before_a_restart_still_counts_after_it(stack, receiver):
    """The monitor's window rows reach their changelog coalesced, at Faust's commits
    (pipeline/kafka/write_behind.py). Spend counted before a worker restart must be in the
    window after it: the daily alert fires once, its value exactly everything spent."""
    tenant = f"carry-{uuid.uuid4().hex[:6]}"
    rule = ("tenant_daily_spend_test",)
    since = int(time.time() * 1000) // 86_400_000 * 86_400_000

    async def spend(until: Decimal, spent: int) -> int:
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            n = 0
            while spent <= until * 10**9:
                r = await gw.request(make_request(tenant, f"name two rivers #{spent}-{n}",
                                                  model="gpt-4.1", max_tokens=64), timeout=30)
                assert r.status == "ok", r
                spent, n = spent + r.cost_nanos, n + 1
            return spent

    before = asyncio.run(spend(DAILY / 2, 0))
    assert Decimal(before) / 10**9 < DAILY, "one answer crossed the threshold: raise it"
    agents = stack.workers[0].agents
    stack.stop_worker(stack.workers[0])
    stack.start_worker(agents=agents)
    spent = asyncio.run(spend(DAILY, before))

    def fired():
        return [a for a in stack.alerts(since, rules=rule) if a.tenant == tenant]

    (alert,) = wait_for("the daily alert", fired, timeout=30)
    assert alert.state == "firing"
    assert Decimal(alert.value) == Decimal(spent) / 10**9      # the spend before the restart too
    time.sleep(1.0)
    assert len(fired()) == 1
