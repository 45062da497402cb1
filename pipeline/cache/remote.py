"""The semantic cache with a provider's embedding model (config/cache.yaml ``embedder:
provider:MODEL``, MODEL a catalog ``kind: embedding`` model): the production option, where
the offline WordLlama is not good enough for a tenant's language or domain.

A provider call must not run inside the synchronous intake step, and it costs money, so:

- **Before** the intake step, :meth:`ProviderEmbedder.prepare` embeds the request's last
  turn with one call to the model's first deployment and remembers the vector (an LRU memo
  by text, ``MEMO_SIZE`` entries). The step's lookup then reads the vector from the memo; a
  text already in the memo costs nothing again.
- The call's cost (its reported tokens at the catalog's price) is the request's
  ``cache_cost_nanos``: the whole cost of a hit, added to a miss's cost (RoutedRequest ->
  Usage), so the ledger holds every embedding paid for.
- A failed or slow call (``TIMEOUT_S``) leaves the request to the exact cache alone: it is
  looked up and answered as usual, never held up or lost, and billed nothing for the call.
- The vector of a kept answer is the one its lookup paid for, taken from the memo when its
  fill arrives on the same worker, and stored in the cache row, so a restart or a
  rebalance rebuilds the index without paying again. A fill whose vector is no longer in
  the memo (the partition moved in between) is kept for exact lookups only."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import OrderedDict

import numpy as np

from pipeline.catalog import Catalog
from pipeline.events.models import EmbeddingInput, Request, RouteDecision, RoutedRequest
from pipeline.providers.base import Adapter
from pipeline.providers.deployments import Deployment

log = logging.getLogger("llmpipe.cache")

PREFIX = "provider:"
MEMO_SIZE = 10_000
TIMEOUT_S = 2.0


def vector_text(vector: np.ndarray) -> str:
    """A vector as stored in a cache row (JSON): base64 of its float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode()


def vector_of(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32)


class ProviderEmbedder:
    """An embedding model behind a provider's API; see the module doc for how it is paid
    and when it is called. ``embed`` only reads the memo (rows of zeros for texts not in it):
    the calls happen in :meth:`prepare`."""

    remote = True

    def __init__(self, model: str, deployment: Deployment, adapter: Adapter, catalog: Catalog,
                 memo_size: int = MEMO_SIZE, timeout_s: float = TIMEOUT_S) -> None:
        spec = catalog.models[model]
        self.model, self.deployment, self.adapter, self.catalog = model, deployment, adapter, catalog
        self.name = f"{PREFIX}{model}"
        self.dims = int(spec.dimensions or 0)
        self.memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self.memo_size, self.timeout_s = memo_size, timeout_s
        self.calls = self.failures = 0

    def known(self, text: str) -> np.ndarray | None:
        vector = self.memo.get(text)
        if vector is not None:
            self.memo.move_to_end(text)
        return vector

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), np.float32)
        for i, text in enumerate(texts):
            vector = self.known(text)
            if vector is not None:
                out[i] = vector
        return out

    async def prepare(self, tenant: str, text: str) -> int:
        """Embed ``text`` unless the memo has it; the call's cost in nano-dollars (0 when
        no call was made or it failed)."""
        if self.known(text) is not None:
            return 0
        routed = RoutedRequest(
            request=Request(request_id="cache-embedding", tenant=tenant, messages=[],
                            model=self.model, embedding=EmbeddingInput([text])),
            route=RouteDecision(self.deployment.id, self.model, self.deployment.provider,
                                "cache"),
            max_tokens=1, reply_topic="", received_at_ms=0, routed_at_ms=0)
        self.calls += 1
        try:
            done = await asyncio.wait_for(self.adapter.embed(routed), self.timeout_s)
            vector = np.asarray(done.embeddings[0], dtype=np.float32)
            if vector.shape != (self.dims,):
                raise ValueError(f"{vector.shape[0]} dimensions, expected {self.dims}")
        except Exception as exc:          # any failure: the request goes on, exact cache only
            self.failures += 1
            log.warning("cache_embedding_failed model=%s deployment=%s error=%s",
                        self.model, self.deployment.id, f"{type(exc).__name__}: {exc}"[:200])
            return 0
        norm = float(np.linalg.norm(vector))
        self.memo[text] = vector / norm if norm else vector
        while len(self.memo) > self.memo_size:
            self.memo.popitem(last=False)
        return self.catalog.cost_nanos(self.model, done.prompt_tokens, 0)


def is_remote(embedder: object) -> bool:
    return bool(getattr(embedder, "remote", False))
