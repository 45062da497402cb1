"""`llmpipe worker --processes N`: each child gets the parent's settings and its own web
port; a ledger on chDB (one owner per path) is refused in more than one process."""

from __future__ import annotations

import pytest

from pipeline.agents.supervisor import SupervisorError, child_envs
from pipeline.settings import Settings

FRONT = Settings(kafka_bootstrap="127.0.0.1:9092", agents=("intake", "dispatch"), web_port=6066,
                 clickhouse_dsn="chdb:///tmp/x")


def test_children_share_the_group_and_take_consecutive_web_ports():
    envs = child_envs(FRONT, 3)
    assert [e["LLMPIPE_WEB_PORT"] for e in envs] == ["6066", "6067", "6068"]
    assert {e["LLMPIPE_APP_ID"] for e in envs} == {FRONT.app_id}
    assert {e["LLMPIPE_AGENTS"] for e in envs} == {"intake,dispatch"}
    assert {e["LLMPIPE_WEB_PORT"] for e in child_envs(FRONT.with_(web_port=0), 2)} == {"0"}


def test_a_chdb_ledger_in_several_processes_is_refused_with_the_way_out():
    both = FRONT.with_(agents=("intake", "dispatch", "ledger", "monitor"))
    with pytest.raises(SupervisorError, match="LLMPIPE_AGENTS=ledger,monitor"):
        child_envs(both, 2)
    assert len(child_envs(both, 1)) == 1
    assert len(child_envs(both.with_(clickhouse_dsn="http://ch:8123/llmpipe"), 2)) == 2
    with pytest.raises(SupervisorError):
        child_envs(FRONT, 0)
