"""The alert webhook sink against an httpx MockTransport: Slack-compatible JSON, one POST
per alert, bounded retries with backoff (Retry-After honoured), no retry on a rejection,
and the URL's token never in a reason or a log line."""

from __future__ import annotations

import json
import logging
import random

import httpx
import pytest

from pipeline.alerts.webhook import (WebhookConfig, WebhookSink, load_webhook_config, redact_url,
                                     slack_payload, webhook_url)
from pipeline.config import ConfigError
from pipeline.events.models import Alert
from pipeline.resilience.retry import RetryPolicy
from pipeline.secrets import Secret

TOKEN = "T000/B000/XXXXsecretXXXXtoken"
URL = f"https://hooks.example.test/services/{TOKEN}"


def alert(state: str = "firing", severity: str = "warning", aid: str = "a-1") -> Alert:
    return Alert(alert_id=aid, rule="tenant_hourly_spend", state=state, severity=severity,
                 tenant="acme", value="11.000000000", threshold="10", window="1h from 2025-11-23T00:00:00Z",
                 message="spend (USD) of tenant acme 11.000000000 above 10", at_ms=1_763_856_002_000,
                 labels={"metric": "spend", "episode": "1763856000000"})


class Recorder:
    def __init__(self, statuses: list[int | Exception], headers: dict | None = None):
        self.statuses, self.headers, self.bodies = list(statuses), headers or {}, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(status, Exception):
            raise status
        return httpx.Response(status, headers=self.headers, text="ok")


def sink_with(recorder: Recorder, max_attempts: int = 5,
              **config) -> tuple[WebhookSink, list[float]]:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    client = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    cfg = WebhookConfig(retry=RetryPolicy(0.5, 4.0, 0.0, max_attempts=max_attempts), **config)
    return WebhookSink(Secret(URL), client, cfg, rng=random.Random(1), sleep=sleep), slept


def test_payload_is_slack_compatible_and_carries_the_alert_fields():
    body = slack_payload(alert())
    assert body["text"].startswith(":warning: [WARNING] tenant_hourly_spend firing (tenant acme)")
    att = body["attachments"][0]
    fields = {f["title"]: f["value"] for f in att["fields"]}
    assert fields["value"] == "11.000000000" and fields["threshold"] == "10"
    assert fields["alert_id"] == "a-1" and fields["label.episode"] == "1763856000000"
    assert att["color"] == "#ffae42" and att["ts"] == 1_763_856_002
    resolved = slack_payload(alert("resolved"))
    assert resolved["text"].startswith(":white_check_mark: tenant_hourly_spend resolved")
    assert resolved["attachments"][0]["color"] == "#2eb886"
    json.dumps(body)          # plain JSON


async def test_one_post_per_alert_and_a_redelivered_alert_is_not_posted_again():
    rec = Recorder([200])
    sink, slept = sink_with(rec)
    assert (await sink.deliver(alert())).ok
    assert (await sink.deliver(alert("resolved", aid="a-2"))).ok
    again = await sink.deliver(alert())
    assert again.ok and again.skipped == "already posted"
    assert [b["attachments"][0]["fields"][1]["value"] for b in rec.bodies] == ["firing", "resolved"]
    assert slept == []


async def test_retries_with_backoff_then_succeeds_honouring_retry_after():
    rec = Recorder([503, httpx.ConnectError("boom"), 429, 200], headers={"retry-after": "3"})
    sink, slept = sink_with(rec)
    result = await sink.deliver(alert())
    assert result.ok and result.attempts == 4 and len(rec.bodies) == 4
    assert slept == [3.0, 1.0, 3.0]     # Retry-After of the 503, backoff 2^1 x 0.5, Retry-After


async def test_gives_up_after_max_attempts_with_a_reason_without_the_token(caplog):
    caplog.set_level(logging.DEBUG)
    rec = Recorder([httpx.ConnectError(f"cannot reach {URL}")])
    sink, slept = sink_with(rec, max_attempts=3)
    result = await sink.deliver(alert())
    assert not result.ok and result.attempts == 3 and len(rec.bodies) == 3
    assert slept == [0.5, 1.0]
    assert result.reason == ("webhook failed after 3 attempts: ConnectError posting to "
                             "https://hooks.example.test/…")
    assert TOKEN not in caplog.text and TOKEN not in result.reason
    assert "hooks.example.test" in caplog.text


async def test_a_rejection_is_not_retried():
    rec = Recorder([404])
    sink, slept = sink_with(rec)
    result = await sink.deliver(alert())
    assert not result.ok and result.attempts == 1 and slept == []
    assert result.reason == "webhook rejected the alert: HTTP 404 from https://hooks.example.test/…"
    # a failed alert is not remembered as posted: a re-delivery tries again
    assert not (await sink.deliver(alert())).ok and len(rec.bodies) == 2


async def test_min_severity_filters():
    rec = Recorder([200])
    sink, _ = sink_with(rec, min_severity="critical")
    assert (await sink.deliver(alert(severity="warning"))).skipped == "below min_severity"
    assert (await sink.deliver(alert(severity="critical", aid="c"))).attempts == 1
    assert len(rec.bodies) == 1


def test_url_comes_from_the_environment_and_is_validated():
    cfg = WebhookConfig()
    assert webhook_url(cfg, {}) is None
    url = webhook_url(cfg, {"LLMPIPE_ALERT_WEBHOOK_URL": URL})
    assert TOKEN not in repr(url) and TOKEN not in f"{url}"
    assert redact_url(url) == "https://hooks.example.test/…"
    with pytest.raises(ValueError) as info:
        webhook_url(cfg, {"LLMPIPE_ALERT_WEBHOOK_URL": f"hooks.example.test/{TOKEN}"})
    assert TOKEN not in str(info.value)


def test_webhook_block_of_the_rules_file(tmp_path):
    assert load_webhook_config().url_env == "LLMPIPE_ALERT_WEBHOOK_URL"
    path = tmp_path / "alert_rules.yaml"
    path.write_text("rules: []\nwebhook: {max_attempts: 2, backoff_base_s: 0.1, min_severity: warning}\n")
    cfg = load_webhook_config(path)
    assert cfg.retry.max_attempts == 2 and cfg.retry.base_s == 0.1 and cfg.min_severity == "warning"
    path.write_text("rules: []\nwebhook: {min_severity: loud}\n")
    with pytest.raises(ConfigError) as info:
        load_webhook_config(path)
    assert info.value.key == "webhook.min_severity"


async def test_httpx_request_log_line_shows_the_redacted_url(caplog):
    caplog.set_level(logging.INFO, logger="httpx")
    rec = Recorder([200])
    sink, _ = sink_with(rec)
    try:
        assert (await sink.deliver(alert())).ok
    finally:
        sink.close_logging()
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert lines and all(TOKEN not in line for line in lines)
    assert any("https://hooks.example.test/…" in line for line in lines)


async def test_agent_step_dead_letters_undeliverable_and_undecodable_alerts():
    from pipeline.agents.monitor import post_alert
    from pipeline.events.codec import Codec
    from pipeline.events.models import DeadLetter
    from pipeline.outputs import Origin

    codec = Codec()
    origin = Origin("llm.alerts", 2, 41, b"acme", None)
    raw = codec.encode(alert(aid="0b224a2c-31c3-5e9f-9d6b-b379b4d06b24"), "llm.alerts")
    ok_sink, _ = sink_with(Recorder([200]))
    assert await post_alert(ok_sink, codec, "llm.dead-letter", raw, origin) == []
    bad_sink, _ = sink_with(Recorder([500]), max_attempts=2)
    (out,) = await post_alert(bad_sink, codec, "llm.dead-letter", raw, origin)
    letter = out.event
    assert out.topic == "llm.dead-letter" and isinstance(letter, DeadLetter)
    assert (letter.reason_code, letter.agent, letter.tenant) == ("webhook_failed", "alerts_webhook", "acme")
    assert letter.reason == "webhook failed after 2 attempts: HTTP 500 from https://hooks.example.test/…"
    assert letter.value == raw and (letter.source_partition, letter.source_offset) == (2, 41)
    (junk,) = await post_alert(ok_sink, codec, "llm.dead-letter", b"\x00junk", origin)
    assert junk.event.reason_code and junk.event.value == b"\x00junk"


async def test_what_was_posted_outlives_the_sink_and_each_post_carries_its_idempotency_key():
    posted: dict = {}                       # a worker passes its Faust table (changelog)
    rec = Recorder([200])
    client = httpx.AsyncClient(transport=httpx.MockTransport(rec))
    first = WebhookSink(Secret(URL), client, WebhookConfig(), posted=posted, clock=lambda: 7)
    assert (await first.deliver(alert())).ok and posted == {"a-1": 7}
    restarted = WebhookSink(Secret(URL), client, WebhookConfig(), posted=posted)
    assert (await restarted.deliver(alert())).skipped == "already posted"
    assert len(rec.bodies) == 1
    seen = []
    client2 = httpx.AsyncClient(transport=httpx.MockTransport(
        lambda r: seen.append(r.headers.get("idempotency-key")) or httpx.Response(200)))
    await WebhookSink(Secret(URL), client2, WebhookConfig()).deliver(alert(aid="a-9"))
    assert seen == ["a-9"]


async def test_the_remembered_ids_are_capped_oldest_first():
    posted: dict = {}
    rec = Recorder([200])
    client = httpx.AsyncClient(transport=httpx.MockTransport(rec))
    sink = WebhookSink(Secret(URL), client, WebhookConfig(remember=2), posted=posted)
    for aid in ("a-1", "a-2", "a-3"):
        assert (await sink.deliver(alert(aid=aid))).ok
    assert set(posted) == {"a-2", "a-3"}
