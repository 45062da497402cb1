"""The cost monitor's pure parts: alert_rules.yaml validation, windows, and the
de-duplication state machine (fire once, stay quiet while true, resolve once, re-fire),
driven by Usage and Alert events with explicit times. State lives in plain dicts; the
worker keeps the same rows in Faust tables."""

from __future__ import annotations

import textwrap
from decimal import Decimal

import pytest
from hypothesis import given, settings, strategies as st

from pipeline.config import ConfigError
from pipeline.events.codec import Codec
from pipeline.events.models import Alert, Usage
from pipeline.monitor.evaluate import SEP, Monitor, alert_id
from pipeline.monitor.rules import FIRING, RESOLVED, load_rules
from pipeline.monitor.windows import Tumbling, parse_duration

HOUR = 3_600_000
T0 = 1_763_856_000_000            # 2025-11-23T00:00:00Z, an hour boundary
USD = 10**9                       # nano-dollars


def rules_file(tmp_path, body: str, evaluation: str = "") -> object:
    path = tmp_path / "alert_rules.yaml"
    path.write_text((textwrap.dedent(evaluation) if evaluation else "") + "rules:\n"
                    + textwrap.indent(textwrap.dedent(body), "  "))
    return path


def monitor_for(tmp_path, body: str) -> Monitor:
    return Monitor(load_rules(rules_file(tmp_path, body)).rules, {}, {})


def usage(t_ms: int, cost_nanos: int = 0, tenant: str = "acme", status: str = "ok",
          error_code: str = "", pipeline_ms: int = 100, team: str = "", deployment: str = "dep-a",
          request_id: str | None = None) -> Usage:
    return Usage(request_id=request_id or f"r-{t_ms}-{cost_nanos}", tenant=tenant,
                 created_at_ms=t_ms - pipeline_ms, completed_at_ms=t_ms, status=status,
                 error_code=error_code, team=team, deployment=deployment, served_model="gpt-4.1",
                 cost_nanos=cost_nanos, pipeline_ms=pipeline_ms)


class Feed:
    """Feeds one partition's events in offset order and applies decisions as the agent
    does (publish, then write)."""

    def __init__(self, monitor: Monitor, partition: int = 0):
        self.monitor, self.partition, self.offset = monitor, partition, 0
        self.published: list[Alert] = []

    def usage(self, u: Usage, offset: int | None = None) -> list[Alert]:
        if offset is None:
            offset, self.offset = self.offset, self.offset + 1
        d = self.monitor.observe_usage(u, self.partition, offset)
        self.published += d.alerts
        self.monitor.apply(d.writes)
        return d.alerts

    def alert(self, a: Alert) -> list[Alert]:
        offset, self.offset = self.offset, self.offset + 1
        d = self.monitor.observe_alert(a, self.partition, offset)
        self.published += d.alerts
        self.monitor.apply(d.writes)
        return d.alerts

    def timer(self, now_ms: int, partitions: set[int] | None = None) -> list[Alert]:
        due = self.monitor.due_resolutions(now_ms, partitions or {self.partition})
        for key, p, a in due:
            self.monitor.timer_published(key, p, a)
        self.published += [a for _, _, a in due]
        return [a for _, _, a in due]


HOURLY = """\
- name: tenant_hourly_spend
  metric: spend
  scope: tenant
  window: 1h
  threshold: 10
  severity: warning
"""


# --- config ---------------------------------------------------------------------------

def test_packaged_rules_load_and_cover_domain_examples():
    rs = load_rules()
    metrics = {r.metric for r in rs.rules}
    assert metrics == {"spend", "spend_spike", "error_rate", "latency_p95", "alert_count"}
    windows = {r.window for r in rs.rules if r.metric == "spend"}
    assert {"1h", "day", "month"} <= windows
    by_name = {r.name: r for r in rs.rules}
    assert by_name["tenant_monthly_spend"].threshold == Decimal(10000)
    assert by_name["tenant_429_rate"].codes == ("rate_limited",)
    assert by_name["breaker_openings"].alert_rules == ("breaker_open",)
    assert by_name["tenant_5xx_rate"].for_ms == 120_000


@pytest.mark.parametrize("body, key", [
    ("- {name: x, metric: spend, scope: tenant, window: 1h}\n", "rules[0].threshold"),
    ("- {name: x, metric: spend, scope: galaxy, window: 1h, threshold: 1}\n", "rules[0].scope"),
    ("- {name: x, metric: spend, scope: tenant, window: 1y, threshold: 1}\n", "rules[0].window"),
    ("- {name: x, metric: spend, scope: tenant, window: 1h, threshold: -1}\n", "rules[0].threshold"),
    ("- {name: x, metric: spend, scope: tenant, window: 1h, threshold: 1, for: 5m}\n", "rules[0].for"),
    ("- {name: X-y, metric: spend, scope: tenant, window: 1h, threshold: 1}\n", "rules[0].name"),
    ("- {name: x, metric: spend, scope: tenant, window: 1h, threshold: 1, colour: red}\n",
     "rules[0].colour"),
    ("- {name: x, metric: error_rate, scope: tenant, window: 1m, step: 7s, threshold: 1, codes: []}\n",
     "rules[0].step"),
    ("- {name: x, metric: latency_p95, scope: model, window: 1m, threshold: 500, latency: gpu}\n",
     "rules[0].latency"),
    ("- {name: x, metric: spend_spike, scope: tenant, window: 5m, baseline: 7m, factor: 3}\n",
     "rules[0].baseline"),
    ("- {name: x, metric: error_rate, scope: tenant, window: 1m, threshold: 1, codes: [a],\n"
     "   resolve: {below: 2}}\n", "rules[0].resolve.below"),
    ("- {name: x, metric: spend, scope: tenant, window: 1h, threshold: 1}\n"
     "- {name: x, metric: spend, scope: tenant, window: 1d, threshold: 1}\n", "rules[1].name"),
    ("- {name: x, metric: spend, scope: tenant, window: 1h, threshold: 1}\n"
     "- {name: y, metric: alert_count, scope: global, window: 5m, threshold: 0, rules: [x]}\n",
     "rules[1].rules"),
])
def test_bad_rules_name_file_and_key(tmp_path, body, key):
    with pytest.raises(ConfigError) as info:
        load_rules(rules_file(tmp_path, body))
    assert info.value.key == key
    assert "alert_rules.yaml" in str(info.value)


def test_windows_are_configurable_in_seconds(tmp_path):
    rs = load_rules(rules_file(tmp_path, HOURLY.replace("1h", "20s"),
                               "evaluation: {timer_interval_s: 0.5}\n"))
    assert rs.rules[0].tumbling == Tumbling(length_ms=20_000)
    assert rs.timer_interval_s == 0.5
    assert parse_duration("hour") == HOUR and parse_duration("90s") == 90_000


def test_calendar_windows_are_utc_months_and_monday_weeks():
    month = Tumbling.parse("month")
    start = month.start(T0 + 5 * HOUR)              # 2025-11-23 -> 2025-11-01
    assert month.label(start) == "month 2025-11"
    assert month.end(start) - start == 30 * 24 * HOUR
    week = Tumbling.parse("week")
    assert week.label(week.start(T0)) == "week from 2025-11-17"   # a Monday
    assert Tumbling.parse("1h").start(T0 + HOUR + 5) == T0 + HOUR


# --- spend: fire once, stay quiet, resolve at the window end, re-fire -------------------

def test_spend_fires_once_stays_quiet_and_resolves_when_the_window_passes(tmp_path):
    feed = Feed(monitor_for(tmp_path, HOURLY))
    assert feed.usage(usage(T0 + 1000, 6 * USD)) == []               # $6 <= $10
    fired = feed.usage(usage(T0 + 2000, 5 * USD))                    # $11 > $10
    assert [(a.rule, a.state, a.value, a.threshold, a.tenant) for a in fired] == [
        ("tenant_hourly_spend", FIRING, "11.000000000", "10", "acme")]
    assert fired[0].window == "1h from 2025-11-23T00:00:00Z"
    assert feed.usage(usage(T0 + 3000, 7 * USD)) == []               # still true: no repeat
    assert feed.timer(T0 + HOUR - 1) == []                           # window not over
    resolved = feed.timer(T0 + HOUR + 10)                            # no new usage needed
    assert [(a.state, a.value, a.threshold) for a in resolved] == [(RESOLVED, "0.000000000", "10")]
    assert "has ended" in resolved[0].message
    assert resolved[0].labels["episode"] == str(T0)
    assert feed.timer(T0 + HOUR + 20) == []                          # resolved once
    # the next window: the state row is settled by the next event; crossing again re-fires
    assert feed.usage(usage(T0 + HOUR + 1000, 4 * USD)) == []
    assert feed.monitor.states == {}
    refired = feed.usage(usage(T0 + HOUR + 2000, 7 * USD))
    assert [(a.state, a.value) for a in refired] == [(FIRING, "11.000000000")]
    assert refired[0].alert_id != fired[0].alert_id
    assert [a.state for a in feed.published] == [FIRING, RESOLVED, FIRING]


def test_spend_resolves_from_the_stream_when_usage_of_the_next_window_arrives_first(tmp_path):
    feed = Feed(monitor_for(tmp_path, HOURLY))
    feed.usage(usage(T0 + 1000, 11 * USD))
    out = feed.usage(usage(T0 + HOUR + 5, 12 * USD))                 # resolves W0, fires W1
    assert [(a.state, a.labels["episode"]) for a in out] == [(RESOLVED, str(T0)),
                                                             (FIRING, str(T0 + HOUR))]
    assert feed.timer(T0 + HOUR + 10) == []                          # W1 still over


def test_money_is_exact_in_nano_dollars(tmp_path):
    feed = Feed(monitor_for(tmp_path, HOURLY))
    for i in range(10):                                # 10 x $1.000000001 = $10.00000001 > $10
        feed.usage(usage(T0 + i, USD + 1))
    assert [a.value for a in feed.published] == ["10.000000010"]
    feed2 = Feed(monitor_for(tmp_path, HOURLY))
    for i in range(10):                                # exactly $10: not above
        feed2.usage(usage(T0 + i, USD))
    assert feed2.published == []


def test_redelivered_usage_is_not_counted_twice(tmp_path):
    feed = Feed(monitor_for(tmp_path, HOURLY))
    feed.usage(usage(T0 + 1, 6 * USD), offset=10)
    feed.usage(usage(T0 + 1, 6 * USD), offset=10)      # re-delivered after a crash
    assert feed.published == []
    key = SEP.join(("tenant_hourly_spend", "acme", "", str(T0)))
    assert feed.monitor.buckets[key]["n"] == 6 * USD


def test_a_late_event_of_an_earlier_window_neither_resolves_nor_refires(tmp_path):
    feed = Feed(monitor_for(tmp_path, HOURLY))
    feed.usage(usage(T0 + HOUR + 1, 11 * USD))                        # fires W1
    assert feed.usage(usage(T0 + 5, 20 * USD)) == []                   # late, W0
    assert [a.state for a in feed.published] == [FIRING]


def test_replayed_decisions_reuse_alert_ids(tmp_path):
    # a crash after publishing but before the state write replays the same decision
    m1, m2 = monitor_for(tmp_path, HOURLY), monitor_for(tmp_path, HOURLY)
    a1 = m1.observe_usage(usage(T0 + 1, 11 * USD), 0, 0).alerts
    a2 = m2.observe_usage(usage(T0 + 1, 11 * USD), 0, 0).alerts
    assert [a.alert_id for a in a1] == [a.alert_id for a in a2] == [
        alert_id("tenant_hourly_spend", "acme", "", T0, FIRING)]


def test_tenants_and_teams_are_separate_subjects(tmp_path):
    feed = Feed(monitor_for(tmp_path, HOURLY + HOURLY.replace("tenant_hourly", "team_hourly")
                            .replace("scope: tenant", "scope: team")))
    feed.usage(usage(T0 + 1, 11 * USD, tenant="a", team="red"))
    feed.usage(usage(T0 + 2, 11 * USD, tenant="b", team="red"))
    feed.usage(usage(T0 + 3, 20 * USD, tenant="b", team=""))          # no team: tenant rule only
    assert sorted((a.rule, a.tenant, a.subject) for a in feed.published) == [
        ("team_hourly_spend", "a", "red"), ("team_hourly_spend", "b", "red"),
        ("tenant_hourly_spend", "a", ""), ("tenant_hourly_spend", "b", "")]


def test_the_timer_only_resolves_subjects_on_its_partitions(tmp_path):
    feed = Feed(monitor_for(tmp_path, HOURLY), partition=3)
    feed.usage(usage(T0 + 1, 11 * USD))
    assert feed.timer(T0 + 2 * HOUR, partitions={0, 1}) == []
    assert len(feed.timer(T0 + 2 * HOUR, partitions={3})) == 1
    feed.monitor.retain_partitions({0})                # rebalanced away: forget
    assert feed.monitor.timer_resolved == {}


def test_sweep_drops_rows_no_rule_reads(tmp_path):
    feed = Feed(monitor_for(tmp_path, HOURLY))
    feed.usage(usage(T0 + 1, USD))
    assert feed.monitor.sweep(0, T0 + HOUR // 2, 60_000) == 0          # still read
    assert feed.monitor.sweep(0, T0 + 3 * HOUR, 60_000) == 1
    assert feed.monitor.buckets == {}


@settings(max_examples=60, deadline=None)
@given(costs=st.lists(st.integers(0, 5 * USD), min_size=1, max_size=30),
       gaps=st.lists(st.integers(0, HOUR // 4), min_size=30, max_size=30))
def test_at_most_one_firing_per_window_and_every_firing_resolves(costs, gaps):
    import pathlib, tempfile
    with tempfile.TemporaryDirectory() as d:
        feed = Feed(monitor_for(pathlib.Path(d), HOURLY))
    t = T0
    for cost, gap in zip(costs, gaps):
        t += gap
        feed.usage(usage(t, cost, request_id=f"r{t}-{cost}"))
    feed.timer(t + 2 * HOUR)
    firings = [a for a in feed.published if a.state == FIRING]
    episodes = [a.labels["episode"] for a in firings]
    assert len(episodes) == len(set(episodes))
    resolved = [a.labels["episode"] for a in feed.published if a.state == RESOLVED]
    assert sorted(resolved) == sorted(episodes)
    # each firing window really was over the threshold
    sums: dict[int, int] = {}
    t = T0
    for cost, gap in zip(costs, gaps):
        t += gap
        sums[t // HOUR * HOUR] = sums.get(t // HOUR * HOUR, 0) + cost
    assert {int(e) for e in episodes} == {w for w, n in sums.items() if n > 10 * USD}


# --- sliding metrics ------------------------------------------------------------------

RATE_429 = """\
- name: tenant_429_rate
  metric: error_rate
  scope: tenant
  codes: [rate_limited]
  window: 10s
  step: 1s
  threshold: 0.5
  for: 3s
  severity: warning
"""


def test_error_rate_needs_to_last_for_before_firing_and_resolves_when_it_ages_out(tmp_path):
    feed = Feed(monitor_for(tmp_path, RATE_429))
    t = T0
    for i in range(6):                                   # 6 errors in 10 s = 0.6/s > 0.5/s
        feed.usage(usage(t + i * 100, status="error", error_code="rate_limited"))
    assert feed.published == []                          # breached, pending (for: 3s)
    feed.usage(usage(t + 1000, status="error", error_code="timeout"))   # other code, not counted
    assert feed.published == []
    fired = feed.usage(usage(t + 3500, status="error", error_code="rate_limited"))
    assert [(a.state, a.value, a.threshold) for a in fired] == [(FIRING, "0.700", "0.5")]
    assert feed.usage(usage(t + 4000, status="ok")) == []                # still true
    assert feed.timer(t + 9_000) == []
    resolved = feed.timer(t + 11_000)                    # the first six aged out
    assert [(a.state, a.value) for a in resolved] == [(RESOLVED, "0.100")]


def test_error_rate_that_drops_before_for_never_fires(tmp_path):
    feed = Feed(monitor_for(tmp_path, RATE_429))
    for i in range(6):
        feed.usage(usage(T0 + i, status="error", error_code="rate_limited"))
    feed.usage(usage(T0 + 20_000, status="ok"))          # window empty again: pending cleared
    feed.usage(usage(T0 + 24_000, status="ok"))
    assert feed.published == [] and feed.monitor.states == {}


def test_p95_latency_over_threshold_fires_with_enough_samples(tmp_path):
    feed = Feed(monitor_for(tmp_path, """\
        - name: p95
          metric: latency_p95
          scope: deployment
          window: 60s
          step: 10s
          threshold: 500
          min_samples: 20
        """))
    for i in range(19):
        feed.usage(usage(T0 + i, pipeline_ms=900))
    assert feed.published == []                          # 19 < min_samples
    fired = feed.usage(usage(T0 + 19, pipeline_ms=100))  # 20 samples, rank 19 is slow
    assert [(a.state, a.subject, a.value) for a in fired] == [(FIRING, "dep-a", "1000")]
    assert [a.state for a in feed.timer(T0 + 120_000)] == [RESOLVED]
    quiet = Feed(monitor_for(tmp_path, """\
        - {name: p95, metric: latency_p95, scope: deployment, window: 60s, threshold: 500}
        """))
    for i in range(100):
        quiet.usage(usage(T0 + i, pipeline_ms=5000 if i % 25 == 24 else 100))   # 4 slow of 100
    assert quiet.published == []


def test_spend_spike_against_trailing_baseline(tmp_path):
    feed = Feed(monitor_for(tmp_path, """\
        - name: spike
          metric: spend_spike
          scope: tenant
          window: 1m
          step: 10s
          baseline: 10m
          factor: 3
          minimum: 1
        """))
    for minute in range(10):                            # baseline: $1/min
        feed.usage(usage(T0 + minute * 60_000 + 1, USD))
    assert feed.published == []
    feed.usage(usage(T0 + 10 * 60_000 + 1, 3 * USD))      # $3 = 3x avg: not above
    assert feed.published == []
    fired = feed.usage(usage(T0 + 10 * 60_000 + 2, USD // 10))
    assert [(a.state, a.value, a.threshold) for a in fired] == [(FIRING, "3.100000000", "3")]
    assert [a.state for a in feed.timer(T0 + 12 * 60_000)] == [RESOLVED]


def test_a_late_event_in_the_baseline_raises_the_spike_limit(tmp_path):
    feed = Feed(monitor_for(tmp_path, """\
        - {name: spike, metric: spend_spike, scope: tenant, window: 1m, step: 10s, baseline: 10m,
           factor: 3, minimum: 1}
        """))
    for minute in range(10):
        feed.usage(usage(T0 + minute * 60_000 + 1, USD))
    feed.usage(usage(T0 + 10 * 60_000 + 1, 2 * USD))      # limit $3: no spike, baseline cached
    assert feed.usage(usage(T0 + 5 * 60_000 + 7, 10 * USD)) == []   # late: judged at the latest
                                                        # time, baseline now $20 -> limit $6
    assert feed.usage(usage(T0 + 10 * 60_000 + 2, 2 * USD)) == []     # $4 <= $6
    assert [a.threshold for a in feed.usage(usage(T0 + 10 * 60_000 + 3, 3 * USD))] == ["6"]


def test_breaker_openings_count_other_alerts_once_each(tmp_path):
    feed = Feed(monitor_for(tmp_path, """\
        - name: breaker_openings
          metric: alert_count
          scope: global
          rules: [breaker_open]
          window: 5m
          step: 30s
          threshold: 0
          severity: critical
        """))

    def breaker(state: str, at: int, aid: str) -> Alert:
        return Alert(alert_id=aid, rule=f"breaker_{state}", state=FIRING if state != "closed"
                     else RESOLVED, value="5", threshold="5", at_ms=at, subject="dep-a")

    assert feed.alert(breaker("half_open", T0, "h1")) == []
    fired = feed.alert(breaker("open", T0 + 1000, "o1"))
    assert [(a.rule, a.state, a.tenant, a.severity, a.value) for a in fired] == [
        ("breaker_openings", FIRING, "*", "critical", "1")]
    assert feed.alert(breaker("open", T0 + 2000, "o2")) == []           # still firing
    assert feed.alert(breaker("open", T0 + 2000, "o2")) == []           # same id: counted once
    key = SEP.join(("breaker_openings", "*", "", str(T0)))
    assert feed.monitor.buckets[key]["n"] == 2
    assert feed.timer(T0 + 4 * 60_000) == []
    assert [a.state for a in feed.timer(T0 + 6 * 60_000)] == [RESOLVED]


def test_alerts_survive_an_avro_round_trip(tmp_path):
    feed = Feed(monitor_for(tmp_path, HOURLY))
    codec = Codec()
    for a in feed.usage(usage(T0 + 1, 11 * USD)):
        assert codec.decode(codec.encode(a, "llm.alerts"), Alert) == a


# --- Faust wiring ---------------------------------------------------------------------

async def test_worker_registers_monitor_agents_timer_and_view(monkeypatch):
    import asyncio

    import faust
    from aiohttp.test_utils import TestClient, TestServer

    from pipeline.outputs import Emitter
    from pipeline.agents.monitor import register_monitor
    from pipeline.kafka.topics import faust_partitions, load_topic_specs
    from pipeline.runtime import build_runtime
    from pipeline.settings import Settings

    monkeypatch.setenv("LLMPIPE_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hooks/XXsecretXXtoken")
    runtime = build_runtime(Settings())
    app = faust.App("monitor-view-test", broker="kafka://127.0.0.1:1", store="memory://",
                    autodiscover=False, key_serializer="raw", value_serializer="raw")

    async def send(*_):
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    topics = runtime.settings.topics
    partitions = faust_partitions(load_topic_specs())
    usage_topic = app.topic(topics.usage, key_serializer="raw", value_serializer="raw")
    alerts_topic = app.topic(topics.alerts, key_serializer="raw", value_serializer="raw")
    monitors = register_monitor(app, runtime, usage_topic, alerts_topic, partitions,
                                Emitter(send, runtime.codec))
    assert set(monitors) == {"usage", "alerts"}
    assert {"monitor_usage_windows", "monitor_usage_states", "monitor_alerts_windows",
            "monitor_alerts_states"} <= set(app.tables)
    names = {agent.name.rsplit(".", 1)[-1] for agent in app.agents.values()}
    assert {"monitor_usage", "monitor_alerts", "alerts_webhook"} <= names
    client = TestClient(TestServer(await app.web.wsgi()))
    await client.start_server()
    try:
        body = await (await client.get("/llmpipe/monitor/alerts/")).json()
        assert body == {"usage": [], "alerts": []}
    finally:
        await client.close()


def test_changing_a_p95_threshold_does_not_break_on_old_rows(tmp_path):
    body = "- {name: p95, metric: latency_p95, scope: deployment, window: 60s, threshold: 500}\n"
    first = Feed(monitor_for(tmp_path, body))
    first.usage(usage(T0, pipeline_ms=600))
    # restart with another threshold (another histogram bound) over the same table rows
    changed = Monitor(load_rules(rules_file(tmp_path, body.replace("500", "650"))).rules,
                      first.monitor.buckets, first.monitor.states)
    feed = Feed(changed)
    feed.offset = 1
    assert feed.usage(usage(T0 + 1, pipeline_ms=700)) == []      # open state: resolve check only
    assert [a.state for a in first.published] == [FIRING]
