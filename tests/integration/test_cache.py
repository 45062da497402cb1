"""The response cache on the embedded stack (issue 14): a repeat is answered from the cache
with one response and one usage row, like a miss; entries survive a worker restart; no
tenant sees another's entry; a parameter change misses; a no-store request leaves nothing
behind; `llmpipe cache clear` empties the tenant's cache."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import pytest

from pipeline.client import GatewayClient, make_request
from pipeline.dev.gateway import issue_key
from pipeline.events.models import Request, Response, TenantPolicy
from pipeline.paths import config_dir as default_config_dir
from tests.integration.conftest import make_stack, worker_stack
from tests.integration.test_tenancy_flow import wait_for_policy

pytestmark = pytest.mark.integration

TIMEOUT = 60.0
FILL_WAIT_S = 20.0          # how long a kept answer may take to reach the intake worker


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    with worker_stack(broker, tmp_path_factory, "cache", seed=14) as stack:
        for tenant in ("acme", "globex"):
            issue_key(stack, tenant, TenantPolicy(tenant, cache_kinds=["exact"], cache_ttl_s=600))
        issue_key(stack, "plain", TenantPolicy("plain"))            # cache not turned on
        issue_key(stack, "semco", TenantPolicy("semco", cache_kinds=["exact", "semantic"]))
        policies_seen(stack, ("acme", "globex", "plain", "semco"))
        yield stack


def policies_seen(stack, tenants) -> None:
    """Wait until the intake worker has the tenants' policies: a first request that comes
    earlier is not looked up or kept, and a test of what the cache keeps would wait for
    an entry that never comes."""
    for tenant in tenants:
        asyncio.run(wait_for_policy(stack.workers[0], tenant))


def ask(tenant: str, text: str, **kw) -> Request:
    return make_request(tenant, text, model="gpt-4o-mini", max_tokens=40, **kw)


async def answer(stack, request: Request) -> Response:
    async with GatewayClient(stack.bootstrap, stack.topics) as client:
        return await client.request(request, timeout=TIMEOUT)


async def until_hit(stack, make, sent: list[Request]) -> Response:
    """Send ``make()`` until one is answered from the cache (the first answer's fill is on
    its way to the intake worker); every request sent is recorded in ``sent``."""
    deadline = time.monotonic() + FILL_WAIT_S
    while True:
        request = make()
        sent.append(request)
        response = await answer(stack, request)
        assert response.status == "ok", response
        if response.cache or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.3)


def worker_story(stack) -> str:
    """The worker's log lines about its start, its tenant directory and its cache (for a
    failure's message)."""
    marks = ("Worker ready", "tenant_directory", "tenant_policy", "cache_", "rebalanc")
    lines = stack.workers[0].log_tail(4000).splitlines()
    return "\n".join(line for line in lines if any(m in line for m in marks))[-6000:]


def one_row_each(stack, requests: list[Request]) -> dict[str, dict]:
    worker = stack.workers[0]
    ids = [r.request_id for r in requests]
    counts = worker.wait_for_usage(ids)
    assert all(counts.get(i) == 1 for i in ids), counts
    return {row["request_id"]: row for row in worker.usage_rows(ids)}


async def test_a_repeat_is_a_hit_with_one_response_and_one_usage_row(stack):
    text = f"Where is my parcel? ({uuid.uuid4().hex[:6]})"
    first = ask("acme", text)
    miss = await answer(stack, first)
    assert miss.status == "ok" and miss.cache == "" and miss.cost_nanos > 0
    sent: list[Request] = []
    hit = await until_hit(stack, lambda: ask("acme", text, metadata={"n": "2"}), sent)
    assert hit.cache == "exact" and hit.content == miss.content and hit.cost_nanos == 0
    assert hit.metadata == {"n": "2"} and hit.request_id == sent[-1].request_id
    rows = one_row_each(stack, [first, *sent])
    assert rows[first.request_id]["cache"] == "miss"
    row = rows[sent[-1].request_id]
    assert (row["cache"], row["cache_kind"], Decimal(row["cost_usd"])) == ("hit", "exact", 0)
    assert Decimal(row["cache_saved_usd"]) > 0
    assert row["completion_tokens"] == miss.completion_tokens

    # another tenant asking the very same thing is a miss (and a tenant without the cache)
    for tenant in ("globex", "plain"):
        other = await answer(stack, ask(tenant, text))
        assert other.status == "ok" and other.cache == "", tenant
    # a parameter change misses
    changed = await answer(stack, ask("acme", text, temperature=0.3))
    assert changed.status == "ok" and changed.cache == ""
    # no-cache skips the read
    fresh = await answer(stack, ask("acme", text).replace(cache_control="no-cache"))
    assert fresh.status == "ok" and fresh.cache == ""


async def test_no_store_leaves_nothing_behind_and_clear_empties_the_tenant(stack):
    secret = f"My card number is 4111 ({uuid.uuid4().hex[:6]})"
    stored = await answer(stack, ask("acme", secret).replace(cache_control="no-store"))
    assert stored.status == "ok"
    marker = f"A question kept after it ({uuid.uuid4().hex[:6]})"
    await answer(stack, ask("acme", marker))
    sent: list[Request] = []
    assert (await until_hit(stack, lambda: ask("acme", marker), sent)).cache == "exact"
    again = await answer(stack, ask("acme", secret))
    assert again.cache == "", "a no-store answer was kept"

    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pipeline.cli", "cache", "clear", "--tenant", "acme"],
        env=stack.worker_env(stack.settings()), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "clear published" in done.stdout, done.stderr
    peek = lambda: ask("acme", marker).replace(cache_control="no-store")  # noqa: E731 (a miss keeps nothing)
    deadline = time.monotonic() + FILL_WAIT_S
    while (await answer(stack, peek())).cache and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
    assert (await answer(stack, peek())).cache == "", "clear did not empty it"


async def test_entries_survive_a_worker_restart(stack):
    text = f"What is the refund policy? ({uuid.uuid4().hex[:6]})"
    await answer(stack, ask("acme", text))
    sent: list[Request] = []
    assert (await until_hit(stack, lambda: ask("acme", text), sent)).cache == "exact"
    one_row_each(stack, sent)           # the ledger has them before the worker goes
    worker = stack.workers[0]
    await asyncio.to_thread(stack.stop_worker, worker)
    await asyncio.to_thread(stack.start_worker)
    after = await answer(stack, ask("acme", text))
    assert after.status == "ok" and after.cache == "exact", "the cache did not survive"


async def test_a_rephrased_question_is_a_semantic_hit(stack):
    # the worker may be the one the test before restarted: a policy it has not read yet
    # would leave the first answer unkept (the directory's start waits a bounded time)
    await wait_for_policy(stack.workers[0], "semco")
    tag = uuid.uuid4().hex[:6]
    first = await answer(stack, ask("semco", f"Where is my parcel {tag}?"))
    assert first.status == "ok" and first.cache == ""
    sent: list[Request] = []
    # no-store: a rephrasing that misses (its lookup came before the first answer's fill
    # or the index build) must not become an exact entry of its own
    hit = await until_hit(stack, lambda: ask("semco", f"where is my parcel {tag}").replace(
        cache_control="no-store"), sent)
    assert hit.cache == "semantic" and hit.cache_similarity >= 0.95, worker_story(stack)
    assert hit.content == first.content
    rows = one_row_each(stack, sent)
    assert rows[sent[-1].request_id]["cache_kind"] == "semantic"
    # the exact-only tenant asking the same rephrasing does not get it
    other = await answer(stack, ask("acme", f"where is my parcel {tag}"))
    assert other.cache == ""


@pytest.fixture(scope="module")
def provider_stack(broker, tmp_path_factory):
    """A worker whose semantic cache embeds through the simulator's text-embedding-3-small
    (config/cache.yaml ``embedder: provider:...`` in a copy of the config)."""
    config = tmp_path_factory.mktemp("cache-provider-config")
    shutil.copytree(default_config_dir(), config, dirs_exist_ok=True)
    cache_yaml = config / "cache.yaml"
    text = cache_yaml.read_text()
    assert "embedder: wordllama+cjk" in text
    cache_yaml.write_text(text.replace("embedder: wordllama+cjk",
                                       "embedder: provider:text-embedding-3-small"))
    stack = make_stack(broker, tmp_path_factory, "cacheprov",
                       ["--latency-scale", "0.05", "--no-base-errors", "--seed", "14"])
    stack.config_dir = config
    try:
        stack.start_worker()
        issue_key(stack, "semprov", TenantPolicy("semprov", cache_kinds=["exact", "semantic"],
                                                 cache_threshold=0.9))
        policies_seen(stack, ("semprov",))
        yield stack
    finally:
        stack.stop()


async def test_provider_embeddings_are_billed_to_the_requests_they_served(provider_stack):
    stack = provider_stack
    tag = uuid.uuid4().hex[:6]
    first = ask("semprov", f"Where is my parcel {tag}?")
    miss = await answer(stack, first)
    assert miss.status == "ok" and miss.cache == ""
    sent: list[Request] = []
    hit = await until_hit(stack, lambda: ask("semprov", f"WHERE IS MY PARCEL {tag}?").replace(
        cache_control="no-store"), sent)           # (see the semantic test above)
    assert hit.cache == "semantic" and hit.cache_similarity >= 0.9
    rows = one_row_each(stack, [first, *sent])
    paid = Decimal(rows[first.request_id]["cache_cost_usd"])
    assert paid > 0 and Decimal(rows[first.request_id]["cost_usd"]) > paid   # call + lookup
    # the reworded text is paid for once, by the first request that embedded it
    reworded = [Decimal(rows[r.request_id]["cache_cost_usd"]) for r in sent]
    assert reworded[0] > 0 and all(c == 0 for c in reworded[1:])
    row = rows[sent[-1].request_id]
    assert (row["cache"], row["cache_kind"]) == ("hit", "semantic")
    assert Decimal(row["cost_usd"]) == Decimal(row["cache_cost_usd"]) == reworded[-1]
    embedded = [b for b in stack.simulator_requests() if b.get("model") == "text-embedding-3-small"]
    assert {tuple(b["input"]) for b in embedded} >= {(f"Where is my parcel {tag}?",),
                                                     (f"WHERE IS MY PARCEL {tag}?",)}
