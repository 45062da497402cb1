"""The worker's fetch wait backs off while idle and returns with the first records
(pipeline/kafka/faust_tuning.py)."""

from __future__ import annotations

from types import SimpleNamespace

from pipeline.kafka import faust_tuning
from pipeline.kafka.faust_tuning import AdaptiveWait


def test_the_wait_grows_after_a_quiet_spell_and_shrinks_with_the_first_records(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(faust_tuning.time, "monotonic", lambda: now[0])
    fetcher = SimpleNamespace(_fetch_max_wait_ms=20)
    wait = AdaptiveWait(20, 200, idle_after_s=2.0)
    now[0] += 1.9
    wait.after_fetch(fetcher, False)
    assert fetcher._fetch_max_wait_ms == 20              # not idle long enough
    now[0] += 0.2
    wait.after_fetch(fetcher, False)
    assert fetcher._fetch_max_wait_ms == 200             # idle: the long wait
    wait.after_fetch(fetcher, True)
    assert fetcher._fetch_max_wait_ms == 20              # records: short again at once
    now[0] += 1.0
    wait.after_fetch(fetcher, False)
    assert fetcher._fetch_max_wait_ms == 20


def test_the_worker_consumer_gets_the_configured_wait_and_min_bytes(monkeypatch):
    """set_fetch_waits reaches the aiokafka consumer Faust builds (a ledger worker's
    fetches wait for 64 KiB or 250 ms: pipeline/dev/stack.py LEDGER_FETCH)."""
    built = SimpleNamespace(_fetch_max_wait_ms=1500, _fetch_min_bytes=1)
    monkeypatch.setattr(faust_tuning, "_original", lambda thread, transport: built)
    for name in ("_fetch_max_wait_ms", "_idle_fetch_wait_ms", "_idle_after_s", "_fetch_min_bytes"):
        monkeypatch.setattr(faust_tuning, name, getattr(faust_tuning, name))   # restored after
    faust_tuning.set_fetch_waits(250, 0, 2.0, min_bytes=65536)
    consumer = faust_tuning._create_worker_consumer(None, None)
    assert (consumer._fetch_max_wait_ms, consumer._fetch_min_bytes) == (250, 65536)
    faust_tuning.set_fetch_waits(20, 0, 2.0)
    consumer = faust_tuning._create_worker_consumer(None, None)
    assert (consumer._fetch_max_wait_ms, consumer._fetch_min_bytes) == (20, 1)
