"""Webhook sink of llm.alerts: one Slack-compatible JSON POST per alert firing or
resolution, retried with bounded exponential backoff; a delivery that still fails is
returned as a reason for the dead-letter topic. The URL usually embeds a token (Slack's
hooks.slack.com/services/T/B/XXXX), so it is held as a Secret and only its scheme and
host ever appear in a log line, an error or a dead letter."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Awaitable, Callable, MutableMapping
from urllib.parse import urlsplit

import httpx

from pipeline.clock import now_ms
from pipeline.config import ConfigError, Section, config_path, load_yaml
from pipeline.events.models import Alert
from pipeline.resilience.retry import RetryPolicy, retry_after
from pipeline.secrets import Secret

log = logging.getLogger("llmpipe.alerts.webhook")

SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}
COLORS = {("firing", "critical"): "#d50200", ("firing", "warning"): "#ffae42",
          ("firing", "info"): "#439fe0"}
RESOLVED_COLOR = "#2eb886"
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class WebhookConfig:
    url_env: str = "LLMPIPE_ALERT_WEBHOOK_URL"
    timeout_s: float = 5.0
    retry: RetryPolicy = RetryPolicy(0.5, 8.0, 0.2, max_attempts=5)
    min_severity: str = "info"
    remember: int = 10000          # alert ids already delivered (a re-delivery is not re-posted)


def load_webhook_config(path: Path | None = None) -> WebhookConfig:
    """The ``webhook`` block of alert_rules.yaml (every key optional)."""
    path = path or config_path("alert_rules.yaml")
    root = Section(path, "", load_yaml(path))
    if not root.has("webhook"):
        return WebhookConfig()
    s = root.section("webhook")
    d = WebhookConfig()
    min_severity = s.raw("min_severity", d.min_severity)
    if min_severity not in SEVERITY_ORDER:
        raise ConfigError(path, "webhook.min_severity", "one of info, warning, critical", min_severity)
    timeout_s, base, cap = (s.number("timeout_s", d.timeout_s), s.number("backoff_base_s", d.retry.base_s),
                            s.number("backoff_cap_s", d.retry.cap_s))
    if timeout_s <= 0 or base <= 0 or cap < base:
        raise ConfigError(path, "webhook", "timeout_s > 0 and 0 < backoff_base_s <= backoff_cap_s")
    return WebhookConfig(url_env=s.str("url_env", d.url_env), timeout_s=timeout_s,
                         retry=RetryPolicy(base, cap, s.number("jitter", d.retry.jitter),
                                           s.int("max_attempts", d.retry.max_attempts, minimum=1)),
                         min_severity=min_severity,
                         remember=s.int("remember", d.remember, minimum=0))


def webhook_url(config: WebhookConfig, env: dict[str, str]) -> Secret | None:
    """The URL from the environment variable the config names, or None (sink off)."""
    value = env.get(config.url_env, "").strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # do not echo the value: it may be the secret itself
        raise ValueError(f"{config.url_env} is not an http(s) URL")
    return Secret(value)


def redact_url(url: Secret | str) -> str:
    """``https://hooks.slack.com/…``: scheme and host only, never path or query."""
    raw = url.reveal() if isinstance(url, Secret) else url
    parts = urlsplit(raw)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"


def slack_payload(alert: Alert) -> dict:
    """Slack incoming-webhook JSON: ``text`` (shown in notifications) and one attachment
    with the alert's fields. Other receivers read the same fields by name."""
    firing = alert.state == "firing"
    icon = {"critical": ":rotating_light:", "warning": ":warning:"}.get(alert.severity, ":information_source:")
    head = (f"{icon} [{alert.severity.upper()}] {alert.rule} firing" if firing
            else f":white_check_mark: {alert.rule} resolved")
    who = "all tenants" if alert.tenant == "*" else f"tenant {alert.tenant}"
    if alert.subject:
        who += f" / {alert.subject}"
    fields = [("rule", alert.rule), ("state", alert.state), ("severity", alert.severity),
              ("tenant", alert.tenant), ("subject", alert.subject), ("value", alert.value),
              ("threshold", alert.threshold), ("window", alert.window),
              ("alert_id", alert.alert_id)]
    fields += [(f"label.{k}", v) for k, v in sorted(alert.labels.items())]
    at = datetime.fromtimestamp(alert.at_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "text": f"{head} ({who}): {alert.value} vs threshold {alert.threshold}",
        "attachments": [{
            "color": COLORS.get((alert.state, alert.severity), "#439fe0") if firing else RESOLVED_COLOR,
            "title": f"{alert.rule} {alert.state} ({who})",
            "text": alert.message,
            "fields": [{"title": k, "value": v, "short": len(v) < 40} for k, v in fields if v],
            "footer": f"llmpipe alert at {at}",
            "ts": alert.at_ms // 1000,
        }],
    }


@dataclass(frozen=True)
class Delivery:
    ok: bool
    attempts: int
    reason: str = ""          # why it failed (never contains the URL)
    skipped: str = ""         # why nothing was posted (below min severity, already posted)


class RedactUrl(logging.Filter):
    """httpx logs every request's full URL at INFO ("HTTP Request: POST https://…"): put
    the redacted form in its place in the record's arguments."""

    def __init__(self, url: Secret):
        super().__init__()
        self._raw, self._shown = url.reveal(), redact_url(url)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(self._raw in str(a) for a in record.args):
            record.args = tuple(self._shown if self._raw in str(a) else a for a in record.args)
        if isinstance(record.msg, str) and self._raw in record.msg:
            record.msg = record.msg.replace(self._raw, self._shown)
        return True


class WebhookSink:
    """Posts alerts to one webhook. ``sleep`` and ``rng`` are injected so tests of the
    retry schedule never wait."""

    def __init__(self, url: Secret, client: httpx.AsyncClient, config: WebhookConfig = WebhookConfig(),
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 posted: MutableMapping[str, int] | None = None,
                 clock: Callable[[], int] = now_ms):
        """``posted``: alert id -> when it was posted; a worker passes a Faust table on the
        alert's partition, so what was posted survives a restart or a rebalance and a
        re-delivered alert is not posted twice (a dict otherwise)."""
        self.url, self.client, self.config = url, client, config
        self.rng, self.sleep, self.clock = rng or random.Random(), sleep, clock
        self._posted: MutableMapping[str, int] = posted if posted is not None else {}
        self._order: OrderedDict[str, None] = OrderedDict()   # ids this process posted
        self._redact = RedactUrl(url)
        logging.getLogger("httpx").addFilter(self._redact)

    def close_logging(self) -> None:
        logging.getLogger("httpx").removeFilter(self._redact)

    def _remember(self, alert_id: str) -> None:
        if self.config.remember <= 0:
            return
        self._posted[alert_id] = self.clock()
        self._order[alert_id] = None
        while len(self._order) > self.config.remember:
            self._posted.pop(self._order.popitem(last=False)[0], None)

    async def deliver(self, alert: Alert) -> Delivery:
        if SEVERITY_ORDER.get(alert.severity, 0) < SEVERITY_ORDER[self.config.min_severity]:
            return Delivery(True, 0, skipped="below min_severity")
        if alert.alert_id in self._posted:
            return Delivery(True, 0, skipped="already posted")
        payload = slack_payload(alert)
        reason, attempt, policy = "", 0, self.config.retry
        while True:
            attempt += 1
            wait_for = None
            try:
                # the same key on every attempt and re-delivery: a receiver that honours
                # it drops the one duplicate a crash right after a POST can cause
                resp = await self.client.post(self.url.reveal(), json=payload,
                                              headers={"Idempotency-Key": alert.alert_id},
                                              timeout=self.config.timeout_s)
            except httpx.HTTPError as exc:
                # the exception text can carry the URL: keep only its type
                reason = f"{type(exc).__name__} posting to {redact_url(self.url)}"
            else:
                if resp.status_code < 300:
                    self._remember(alert.alert_id)
                    log.info("alert_posted alert_id=%s rule=%s state=%s tenant=%s attempts=%d url=%s",
                             alert.alert_id, alert.rule, alert.state, alert.tenant, attempt,
                             redact_url(self.url))
                    return Delivery(True, attempt)
                reason = f"HTTP {resp.status_code} from {redact_url(self.url)}"
                if resp.status_code not in RETRYABLE_STATUS:
                    return Delivery(False, attempt, f"webhook rejected the alert: {reason}")
                wait_for = retry_after(resp.headers.get("retry-after"))
            nxt = policy.after(attempt, self.rng, retry_after_s=wait_for)
            if not nxt.retry:
                return Delivery(False, attempt, f"webhook failed after {attempt} attempts: {reason}")
            log.warning("alert_post_retry alert_id=%s attempt=%d reason=%r retry_in=%.2fs",
                        alert.alert_id, attempt, reason, nxt.delay_s)
            await self.sleep(nxt.delay_s)
