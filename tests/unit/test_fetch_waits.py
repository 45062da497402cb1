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
