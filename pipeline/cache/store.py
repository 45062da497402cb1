"""The response cache: which requests it may answer or keep, their exact key and semantic
scope, and the store (exact lookups by key, semantic ones through semantic.py's index).

**Key.** SHA-256 of the tenant and the canonical JSON of everything in a request that can
change its answer: the model asked for (or the routing hints that choose it), every
message with its role, name, parts, tool calls and tool-call ids, the tools, tool_choice,
parallel_tool_calls, response_format, every generation parameter, and an embedding
request's inputs and dimensions. Not in it: request id, times, team, end user, metadata,
reply topics, priority and stream (the same answer serves a streamed call). The tenant is
in the key and in the store's row key, so no tenant can reach another's entry.

**When.** Only for a tenant whose policy enables the cache (`cache_enabled` and `exact` in
`cache_kinds`). A request with `cache_control` no-cache is not answered from the cache;
no-store is not kept; one sampling hotter than `bypass_temperature_above` neither.

**Store.** Rows in a mapping (a Faust table on the tenant's partition in a worker, a dict
in tests), key ``tenant SEP cache key``. A row keeps the Response its first caller got and
when it expires. A tenant keeps at most `cache_max_entries` rows; past that the oldest kept
are dropped first (by when they were kept, not last read: recording each read would write
a changelog record per hit), in O(1) per fill after one scan per tenant and rebalance. Writes arrive as CacheFill events (dispatch, `llmpipe cache clear`) on the
tenant's partition and are applied by the worker owning it, the same one that looks up."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cache.embedder import NAMES
from pipeline.cache.remote import PREFIX, is_remote, vector_of, vector_text
from pipeline.cache.semantic import SemanticIndex
from pipeline.catalog import Catalog
from pipeline.config import ConfigError, Section, config_path, load_yaml
from pipeline.events.ids import SEP
from pipeline.metrics import CACHE_LOOKUPS
from pipeline.events.models import (OK, CacheFill, Request, Response, RoutedRequest,
                                    TenantPolicy, Usage)

log = logging.getLogger("llmpipe.cache")
EXACT, SEMANTIC = "exact", "semantic"
KINDS = (EXACT, SEMANTIC)
HIT, MISS, BYPASS = "hit", "miss", "bypass"          # Usage.cache
PUT, CLEAR = "put", "clear"                          # CacheFill.op
NO_CACHE, NO_STORE = "no-cache", "no-store"          # Request.cache_control directives


@dataclass(frozen=True)
class CacheConfig:
    bypass_temperature_above: float = 1.0
    max_answer_bytes: int = 200_000
    embedder: str = "wordllama+cjk"     # or provider:MODEL (remote.py)


@functools.lru_cache(maxsize=None)
def cache_config() -> CacheConfig:
    """The configured cache settings, loaded once per process."""
    return load_cache_config()


def load_cache_config(path: Path | None = None) -> CacheConfig:
    path = path or config_path("cache.yaml")
    s = Section(path, "", load_yaml(path))
    unknown = set(s.data) - {"bypass_temperature_above", "max_answer_bytes", "embedder"}
    if unknown:
        raise ConfigError(path, sorted(unknown)[0],
                          "bypass_temperature_above, max_answer_bytes or embedder")
    embedder = s.data.get("embedder", CacheConfig.embedder)
    if not isinstance(embedder, str) or not (embedder in NAMES or (
            embedder.startswith(PREFIX) and len(embedder) > len(PREFIX))):
        raise ConfigError(path, "embedder", f"one of {', '.join(NAMES)} or {PREFIX}MODEL",
                          embedder)
    return CacheConfig(bypass_temperature_above=s.number("bypass_temperature_above"),
                       max_answer_bytes=s.int("max_answer_bytes", minimum=1), embedder=embedder)


def directives(cache_control: str) -> set[str]:
    """The directives of a Cache-Control value ("no-cache, no-store" -> both)."""
    return {d.strip().lower() for d in cache_control.split(",") if d.strip()}


def key_of(request: Request) -> str:
    """The exact-cache key: a hash of the tenant and every field that changes the answer."""
    return _hash(_canonical(request))


def last_question(request: Request) -> str | None:
    """The text a semantic lookup compares: the last message, when it is a user's plain
    text (not parts, not a tool result); None otherwise (exact lookups only)."""
    if request.embedding is not None or not request.messages:
        return None
    last = request.messages[-1]
    if last.role != "user" or last.parts or not last.content.strip():
        return None
    return last.content


def scope_of(request: Request) -> str:
    """The semantic scope: everything that must match exactly — the key's fields with the
    last user turn left out (the tenant included, so scopes never cross tenants)."""
    canonical = _canonical(request)
    canonical["messages"] = canonical["messages"][:-1]
    return _hash(canonical)


def _canonical(request: Request) -> dict:
    r = request.to_dict()
    hints = dict(r["hints"])
    hints.pop("priority", None)
    if hints.get("budget_per_mtok") is not None:
        hints["budget_per_mtok"] = str(hints["budget_per_mtok"])
    canonical = {"tenant": r["tenant"], "model": r["model"], "hints": hints,
                 "messages": r["messages"], "params": r["params"], "tools": r["tools"],
                 "tool_choice": r["tool_choice"],
                 "parallel_tool_calls": r["parallel_tool_calls"],
                 "response_format": r["response_format"], "embedding": r["embedding"]}
    return canonical


def _hash(canonical: dict) -> str:
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache:
    """Lookups and fills over ``rows`` (the tenant partition's cache table)."""

    def __init__(self, rows: MutableMapping[str, dict], catalog: Catalog,
                 config: CacheConfig = CacheConfig(), similar: SemanticIndex | None = None):
        """``similar``: the semantic index (None: exact lookups only). It is rebuilt from
        ``rows`` on first use and after :meth:`forget_counts` (a rebalance)."""
        self.rows, self.catalog, self.config = rows, catalog, config
        self.similar = similar
        self._order: dict[str, OrderedDict[str, None]] = {}   # see _order_of
        self._indexed = False
        self._generation = 0                   # rebalances seen: a stale build is dropped
        self._building: asyncio.Task | None = None
        self._building_generation = -1
        self._pending: list[tuple] = []        # index changes while a build runs

    # --- intake side ---------------------------------------------------------------------

    def decide(self, request: Request, policy: TenantPolicy | None) -> tuple[bool, bool]:
        """(may be answered from the cache, may be kept)."""
        if policy is None or not policy.cache_enabled or not policy.cache_kinds:
            return False, False
        t = request.params.temperature
        if t is not None and t > self.config.bypass_temperature_above:
            return False, False
        said = directives(request.cache_control)
        return NO_CACHE not in said, NO_STORE not in said

    def semantic(self, request: Request, policy: TenantPolicy | None) -> bool:
        """Whether the request takes part in semantic lookups (and its answer is kept for
        them): the tenant asks for them and its last turn is a user's plain text."""
        return (self.similar is not None and policy is not None
                and SEMANTIC in policy.cache_kinds and last_question(request) is not None)

    def lookup(self, request: Request, key: str, now_ms: int,
               policy: TenantPolicy | None = None, scope: str | None = None
               ) -> tuple[Response, str, float | None] | None:
        """(the cached answer, its kind, the similarity of a semantic hit), or None.
        ``scope``: the request's semantic scope when the caller has it already."""
        found = self.peek(request, key, now_ms, policy, scope)
        CACHE_LOOKUPS.labels(found[1] if found else "", "hit" if found else "miss").inc()
        return found

    def peek(self, request: Request, key: str, now_ms: int, policy: TenantPolicy | None = None,
             scope: str | None = None) -> tuple[Response, str, float | None] | None:
        """:meth:`lookup` without counting it (a look ahead, not a lookup)."""
        kinds = policy.cache_kinds if policy is not None else [EXACT]
        if EXACT in kinds:
            found = self._fresh(request.tenant, _row_key(request.tenant, key), now_ms)
            if found is not None:
                return found, EXACT, None
        if not self.semantic(request, policy):
            return None
        assert self.similar is not None and policy is not None
        if not self._index_ready():
            return None
        question = last_question(request) or ""
        vector = None
        if self.remote:
            vector = self.similar.embedder.known(question)   # paid for in prepare()
            if vector is None:                  # the embedding call failed: exact only
                return None
        near = self.similar.nearest(scope or scope_of(request), question, vector)
        if near is None or near[1] < policy.cache_threshold:
            return None
        found = self._fresh(request.tenant, near[0], now_ms)
        return None if found is None else (found, SEMANTIC, round(near[1], 6))

    @property
    def remote(self) -> bool:
        """Whether semantic lookups embed through a provider (paid; see remote.py)."""
        return self.similar is not None and is_remote(self.similar.embedder)

    async def prepare(self, request: Request, policy: TenantPolicy | None) -> int:
        """With a provider's embedder: embed the request's last turn before its lookup, if
        it will have one; what that cost (nano-dollars). 0 with the offline embedder."""
        if not self.remote or not self.decide(request, policy)[0] \
                or not self.semantic(request, policy):
            return 0
        assert self.similar is not None
        return await self.similar.embedder.prepare(request.tenant, last_question(request) or "")

    def _fresh(self, tenant: str, row_key: str, now_ms: int) -> Response | None:
        row = self.rows.get(row_key)
        if row is None or row_key.split(SEP, 1)[0] != tenant:
            return None
        if row["expires_at_ms"] <= now_ms:
            self._drop(tenant, row_key)
            return None
        return Response.from_dict(row["answer"])

    def answer(self, request: Request, cached: Response, received_ms: int, now_ms: int,
               kind: str = EXACT, similarity: float | None = None,
               baseline_model: str | None = None, lookup_cost: int = 0
               ) -> tuple[Response, Usage]:
        """The request's Response from a cached one (its own id and metadata), and its
        Usage: a hit, billed only ``lookup_cost`` (a provider embedding, or 0), carrying what
        the call would have cost today and the baseline model's price for the same tokens
        (``baseline_model``: the tenant's)."""
        r = request
        created = r.created_at_ms if r.created_at_ms is not None else received_ms
        saved = self._cost(cached)
        response = cached.replace(
            request_id=r.request_id, tenant=r.tenant, completed_at_ms=now_ms,
            cost_nanos=lookup_cost, attempts=0, tried=[], latency_ms=max(0, now_ms - created), metadata=r.metadata,
            cache=kind, cache_similarity=similarity)
        baseline = self.catalog.cost_nanos(baseline_model or self.catalog.baseline_model,
                                           cached.prompt_tokens, cached.completion_tokens,
                                           cached.cached_tokens)
        usage = Usage(
            request_id=r.request_id, tenant=r.tenant, created_at_ms=created,
            completed_at_ms=now_ms, status=OK, team=r.team or "", end_user=r.end_user or "",
            requested_model=r.model or "", routed_model=cached.model or "",
            served_model=cached.model or "", route_rule="cache", cache=HIT, cache_kind=kind,
            cache_saved_nanos=saved, cache_cost_nanos=lookup_cost,
            prompt_tokens=cached.prompt_tokens,
            completion_tokens=cached.completion_tokens, cost_nanos=lookup_cost,
            baseline_cost_nanos=baseline, price_version=self.catalog.price_version,
            pipeline_ms=max(0, now_ms - received_ms), queue_ms=max(0, received_ms - created))
        return response, usage

    def _cost(self, cached: Response) -> int:
        if cached.model not in self.catalog.models:
            return cached.cost_nanos
        return self.catalog.cost_nanos(cached.model, cached.prompt_tokens,
                                       cached.completion_tokens, cached.cached_tokens)

    # --- fills (the cache-fill agent) ------------------------------------------------------

    def apply(self, fill: CacheFill, max_entries: int) -> int:
        """Apply a fill; returns how many rows it removed (a clear, or the oldest rows of a
        tenant over ``max_entries``)."""
        if fill.op == CLEAR:
            doomed = [k for k in list(self.rows) if k.split(SEP, 1)[0] == fill.tenant]
            for k in doomed:
                self._drop(fill.tenant, k)
            self._order[fill.tenant] = OrderedDict()
            return len(doomed)
        if fill.op != PUT or fill.answer is None or fill.answer.status != OK:
            return 0
        row_key = _row_key(fill.tenant, fill.key)
        order = self._order_of(fill.tenant)         # before the write: it may scan the rows
        row = {"answer": fill.answer.to_dict(), "at_ms": fill.at_ms,
               "expires_at_ms": fill.expires_at_ms, "scope": fill.scope, "text": fill.text}
        vector = None
        if self.remote and fill.scope and fill.text:
            vector = self.similar.embedder.known(fill.text)      # what its lookup paid for
            if vector is None:               # not on this worker any more: exact only
                row["scope"] = row["text"] = ""
            else:
                row["vector"] = vector_text(vector)
        self.rows[row_key] = row
        order[row_key] = None
        order.move_to_end(row_key)
        if row["scope"] and row["text"]:
            self._index_change(("add", row_key, row["scope"], row["text"], vector))
        removed = 0
        while len(order) > max_entries:
            self._drop(fill.tenant, next(iter(order)))
            removed += 1
        return removed

    def entries(self, tenant: str) -> int:
        return len(self._order_of(tenant))

    def forget_counts(self) -> None:
        """After a rebalance: partitions (and so rows) came or went. The semantic index is
        built again on the next semantic lookup; a build under way is abandoned."""
        self._order.clear()
        self._indexed = False
        self._generation += 1

    def _order_of(self, tenant: str) -> OrderedDict[str, None]:
        """The tenant's row keys, oldest first: one scan of the rows on first use (after a
        start or a rebalance), then kept up to date, so eviction is O(1) per fill."""
        if tenant not in self._order:
            mine = sorted((row["at_ms"], k) for k, row in list(self.rows.items())
                          if k.split(SEP, 1)[0] == tenant)
            self._order[tenant] = OrderedDict((k, None) for _, k in mine)
        return self._order[tenant]

    def _drop(self, tenant: str, row_key: str) -> None:
        self.rows.pop(row_key, None)
        if tenant in self._order:
            self._order[tenant].pop(row_key, None)
        self._index_change(("remove", row_key))

    # --- the semantic index ----------------------------------------------------------------

    def _index_ready(self) -> bool:
        """Whether semantic lookups can be answered now. If the index is not built (first
        use, a rebalance), it is built from the rows — off the event loop when one runs,
        since 100k rows take tens of seconds: until it is done, semantic lookups miss
        (exact ones are unaffected). Without a running loop (tests, tools) it is built here."""
        if self._indexed or self.similar is None:
            return self._indexed
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.similar = self._built(self._snapshot())
            self._indexed = True
            return True
        if self._building is None or self._building.done() \
                or self._building_generation != self._generation:
            self._building_generation = self._generation
            self._building = loop.create_task(self._rebuild(self._generation))
        return False

    async def index_ready(self) -> None:
        """Wait until the index is built (tests, and a worker that wants to warm up)."""
        while not self._index_ready():
            assert self._building is not None
            await self._building

    async def _rebuild(self, generation: int) -> None:
        self._pending = []          # (a stale build's changes go with it: it is dropped)
        snapshot = self._snapshot()
        fresh = await asyncio.to_thread(self._built, snapshot)
        if generation != self._generation:
            return                                  # another rebalance came in between
        for change in self._pending:               # fills and drops during the build
            _apply_change(fresh, change)
        self._pending = []
        self.similar, self._indexed = fresh, True
        log.info("cache_index_built rows=%d", len(fresh))

    def _snapshot(self) -> list[tuple[str, str, str, str | None]]:
        return [(k, row["scope"], row["text"], row.get("vector"))
                for k, row in list(self.rows.items()) if row.get("scope") and row.get("text")]

    def _built(self, snapshot: list[tuple[str, str, str, str | None]]) -> SemanticIndex:
        """A new index of ``snapshot``: texts embedded again offline, or a provider's stored
        vectors (nothing paid again; rows another embedder kept are left out)."""
        assert self.similar is not None
        index = SemanticIndex(self.similar.embedder, self.similar.candidates)
        if not self.remote:
            index.add_many([(k, scope, text) for k, scope, text, _ in snapshot])
            return index
        dims = index.embedder.dims
        kept = [(k, scope, text, vector_of(v)) for k, scope, text, v in snapshot if v]
        kept = [item for item in kept if len(item[3]) == dims]
        if kept:
            index.add_many([item[:3] for item in kept], np.stack([item[3] for item in kept]))
        return index

    def _index_change(self, change: tuple) -> None:
        if self.similar is None:
            return
        if self._indexed:
            _apply_change(self.similar, change)
        elif self._building is not None and not self._building.done():
            self._pending.append(change)


def _apply_change(index: SemanticIndex, change: tuple) -> None:
    if change[0] == "add":
        _, key, scope, text, vector = change
        index.add(key, scope, text, vector)
    else:
        index.remove(change[1])


def fill_for(routed: RoutedRequest, response: Response, at_ms: int,
             config: CacheConfig | None = None) -> CacheFill | None:
    """The CacheFill that keeps ``response`` for ``routed``'s key, or None when it must not
    be kept (no key: cache off or no-store; not ok; too large)."""
    if not routed.cache_key or response.status != OK:
        return None
    # what belongs to the first caller's request, not to the answer: not kept
    answer = response.replace(metadata={}, cache="", cache_similarity=None, context="")
    limit = (config or cache_config()).max_answer_bytes
    if len(json.dumps(answer.to_dict(), ensure_ascii=False).encode()) > limit:
        return None
    text = (last_question(routed.request) or "") if routed.cache_scope else ""
    return CacheFill(tenant=routed.request.tenant, op=PUT, at_ms=at_ms, key=routed.cache_key,
                     expires_at_ms=at_ms + routed.cache_ttl_s * 1000,
                     scope=routed.cache_scope if text else "", text=text, answer=answer)


def _row_key(tenant: str, key: str) -> str:
    return f"{tenant}{SEP}{key}"
