"""wait_until_up: retries with doubling waits and one log line each, then gives up with
the last error after the timeout (0: never)."""

from __future__ import annotations

import logging

import pytest

from pipeline.startup import StartupTimeout, wait_until_up


class Clock:
    def __init__(self):
        self.now, self.slept = 0.0, []

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def failing(times: int):
    calls = {"n": 0}

    def attempt():
        calls["n"] += 1
        if calls["n"] <= times:
            raise ConnectionError(f"refused #{calls['n']}")
        return "up"
    return attempt


def test_it_retries_with_doubling_waits_and_says_so(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, "llmpipe.worker"):
        assert wait_until_up("kafka at b:9092", failing(5), 300, clock=lambda: clock.now,
                             sleep=clock.sleep, cap_s=4) == "up"
    assert clock.slept == [0.5, 1.0, 2.0, 4.0, 4.0]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("waiting_for what=kafka at b:9092" in line for line in lines) == 5
    assert "refused #5" in lines[4] and "reachable what=kafka at b:9092" in lines[-1]


def test_it_gives_up_after_the_timeout_with_the_last_error():
    clock = Clock()
    with pytest.raises(StartupTimeout, match=r"clickhouse not reachable after \d+s .*refused"):
        wait_until_up("clickhouse", failing(10**6), 20, clock=lambda: clock.now,
                      sleep=clock.sleep)
    assert sum(clock.slept) <= 20


def test_a_timeout_of_zero_waits_for_ever():
    clock = Clock()
    assert wait_until_up("kafka", failing(200), 0, clock=lambda: clock.now,
                         sleep=clock.sleep) == "up"
    assert clock.now > 1000
