"""Faults scoped to one API key: a revoked key answers 401 while other keys of the same
provider and model keep working (the "401 on one key" fault scenario)."""

from __future__ import annotations

import httpx
import pytest

from pipeline.config import ConfigError
from pipeline.simulator import key_fingerprint, start_simulator
from pipeline.simulator.profiles import parse_faults
from tests.unit.test_simulator import KEY, OTHER_KEY, chat, fast


def test_key_is_parsed_checked_and_shown():
    faults = parse_faults({"*": {"kind": "unauthorized", "key": "abc123"}}, "PUT", "", {"gpt-4.1"})
    assert faults["*"].key == "abc123"
    assert faults["*"].to_json() == {"kind": "unauthorized", "rate": 1.0, "key": "abc123"}
    assert parse_faults({"gpt-4.1": {"kind": "unauthorized"}}, "PUT", "",
                        {"gpt-4.1"})["gpt-4.1"].to_json() == {"kind": "unauthorized", "rate": 1.0}
    with pytest.raises(ConfigError, match=r"PUT: gpt-4\.1\.key: expected an API key fingerprint"):
        parse_faults({"gpt-4.1": {"kind": "unauthorized", "key": 7}}, "PUT", "", {"gpt-4.1"})


@pytest.mark.asyncio
async def test_a_key_scoped_fault_hits_only_that_key():
    running = await start_simulator(fast())
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=5) as client:
            put = await client.put("/_sim/faults", json={
                "*": {"kind": "unauthorized", "key": key_fingerprint(OTHER_KEY)}})
            assert put.status_code == 200, put.text
            statuses = {}
            for name, key in (("good", KEY), ("revoked", OTHER_KEY)):
                for model in ("gpt-4.1", "gpt-4o-mini"):
                    resp = await client.post("/v1/chat/completions", json=chat(model=model),
                                             headers={"Authorization": f"Bearer {key}"})
                    statuses[name, model] = resp.status_code
                    assert key not in resp.text
            stats = (await client.get("/_sim/stats")).json()
    finally:
        await running.stop()
    assert statuses == {("good", "gpt-4.1"): 200, ("good", "gpt-4o-mini"): 200,
                        ("revoked", "gpt-4.1"): 401, ("revoked", "gpt-4o-mini"): 401}
    keys = stats["models"]["gpt-4o-mini"]["keys"]
    assert keys[key_fingerprint(OTHER_KEY)]["by_status"] == {"401": 1}
    assert keys[key_fingerprint(KEY)]["by_status"] == {"200": 1}
