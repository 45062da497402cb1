"""`llmpipe bench cache`, offline part: the FAQ workload (pipeline/cache/faq.py) replayed
through an exact cache (a dict keyed by the normalised user turn) and the semantic index
(pipeline/cache/semantic.py), with no Kafka and no provider.

    llmpipe bench cache [-n 5000] [--seed 14] [--embedder wordllama+cjk] [--sizes 10000,100000]
    llmpipe bench cache --pipeline [--faq 600] [--requests 400]   (cache_pipeline.py)

Every query is looked up first in the exact cache, then in the semantic index of its one
scope; a miss stores it in both. Printed:

- hit rates (exact, semantic, together) per threshold, beside the **ceiling**: the share of
  queries a perfect cache could answer (repeats and paraphrases, faq.py), and the floor:
  an exact cache alone, which hits every repeat and nothing else. (With both, the exact
  column is lower than that: a retyped question served by the semantic step is not stored
  under its own text, so its later repeats are semantic hits too.)
- **wrong-intent hits**: semantic hits whose stored question needs another answer;
- **near-miss false hits**: for each labelled pair, one side stored, the other looked up
  (both ways); a pair is a false hit if either way hits. With and without ``compatible``;
- the embedder's separation per language: same-intent against different-intent pairs;
- **lookup latency** (embedding the turn + searching its scope) P50/P99 at each size, the
  index filled with the workload's own questions (vectors jittered so no two are equal),
  in one scope and spread over many small scopes, beside the floor: the embedding alone."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline.bench import cache_pipeline
from pipeline.cache.embedder import NAMES, Embedder, load_embedder, unit_rows
from pipeline.cache.faq import INTENTS, near_miss_category, near_misses, normalise, workload
from pipeline.cache.semantic import SemanticIndex

HELP = "the response cache on the FAQ workload: hit rates, near-miss false hits, lookup P99"
THRESHOLDS = (0.85, 0.90, 0.95)
DEFAULT_THRESHOLD = 0.95
SCOPE = "faq"
FLOOR_HIT_RATE = 0.40             # the acceptance floors
FLOOR_FALSE_HITS = 0.01
FLOOR_P99_MS = 5.0
SMALL_SCOPE = 100                 # entries per scope in the many-scopes fill
LATENCY_LOOKUPS = 2000


@dataclass(frozen=True)
class Replay:
    threshold: float
    n: int
    exact: int
    semantic: int
    wrong_intent: int
    ceiling: int
    by_kind: dict[str, Counter]   # kind -> {"exact"|"semantic"|"miss": count}

    @property
    def hit_rate(self) -> float:
        return (self.exact + self.semantic) / self.n


def replay(embedder: Embedder, queries: list, threshold: float) -> Replay:
    """The queries in order through exact dict + semantic index, one scope."""
    index = SemanticIndex(embedder)
    vectors = embedder.embed([q.text for q in queries])
    exact: dict[str, str] = {}            # normalised text -> intent of the stored answer
    intent_of: dict[str, str] = {}        # index key -> intent
    counts = Counter()
    by_kind: dict[str, Counter] = {}
    for i, q in enumerate(queries):
        key = normalise(q.text)
        outcome = "miss"
        if key in exact:
            outcome = "exact"
        else:
            found = index.nearest(SCOPE, q.text, vectors[i])
            if found is not None and found[1] >= threshold:
                outcome = "semantic"
                counts["wrong"] += intent_of[found[0]] != q.intent
            else:
                exact[key] = q.intent
                index.add(key, SCOPE, q.text, vectors[i])
                intent_of[key] = q.intent
        counts[outcome] += 1
        by_kind.setdefault(q.kind, Counter())[outcome] += 1
    ceiling = sum(q.kind != "novel" for q in queries)
    return Replay(threshold, len(queries), counts["exact"], counts["semantic"], counts["wrong"],
                  ceiling, by_kind)


def near_miss_hits(embedder: Embedder, threshold: float, guard: bool = True
                   ) -> tuple[list[tuple[str, str]], int]:
    """(the pairs that hit, the number of pairs): each pair's sides stored alone in a
    scope of their own and looked up from the other side."""
    pairs = near_misses()
    hits = []
    for a, b in pairs:
        hit = False
        for stored, query in ((a, b), (b, a)):
            if guard:
                index = SemanticIndex(embedder)
                index.add("k", "pair", stored)
                found = index.nearest("pair", query)
                hit |= found is not None and found[1] >= threshold
            else:
                va, vb = embedder.embed([stored, query])
                hit |= float(va @ vb) >= threshold
        if hit:
            hits.append((a, b))
    return hits, len(pairs)


def separation(embedder: Embedder) -> dict[str, dict[str, float]]:
    """Per language: the cosine of different phrasings of one intent against phrasings of
    different intents (mean, share ≥ 0.95, the highest unrelated score, ROC AUC)."""
    out = {}
    for li, lang in enumerate(("en", "zh")):
        texts = [t for phrasings in INTENTS.values() for t in phrasings[li]]
        labels = np.array([i for i, phrasings in enumerate(INTENTS.values())
                           for _ in phrasings[li]])
        vectors = embedder.embed(texts)
        sims = vectors @ vectors.T
        upper = np.triu_indices(len(texts), 1)
        same = labels[upper[0]] == labels[upper[1]]
        pos, neg = sims[upper][same], sims[upper][~same]
        ranks = np.concatenate([pos, neg]).argsort().argsort() + 1
        auc = (ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
        out[lang] = {"same_mean": float(pos.mean()), "same_95": float(np.mean(pos >= 0.95)),
                     "diff_mean": float(neg.mean()), "diff_max": float(neg.max()),
                     "auc": float(auc)}
    return out


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (statistics.median(ordered) * 1e3,
            ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))] * 1e3)


def fill_vectors(embedder: Embedder, size: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``size`` stored questions: the workload's texts, their vectors jittered (σ=0.02 per
    dimension, renormalised) so the index holds ``size`` distinct points clustered the way
    real questions are."""
    texts = [q.text for q in workload(size, seed)]
    rng = np.random.default_rng(seed)
    vectors = embedder.embed(texts)
    vectors = unit_rows(vectors + rng.normal(0, 0.02, vectors.shape).astype(np.float32))
    return texts, vectors


def lookup_latency(embedder: Embedder, size: int, scopes: int, seed: int,
                   progress=print) -> tuple[float, float, float]:
    """(P50 ms, P99 ms, build s) of nearest() with embedding, on an index of ``size``
    entries over ``scopes`` scopes; the queries are fresh workload questions."""
    texts, vectors = fill_vectors(embedder, size, seed)
    index = SemanticIndex(embedder)
    start = time.perf_counter()
    step = max(1, size // 10)
    for lo in range(0, size, step):
        hi = min(size, lo + step)
        index.add_many([(f"k{i}", f"s{i % scopes}", texts[i]) for i in range(lo, hi)],
                       vectors[lo:hi])
        progress(f"  filling {size} entries / {scopes} scope(s): {hi}/{size}", end="\r")
    build = time.perf_counter() - start
    progress(" " * 70, end="\r")
    queries = [q.text for q in workload(LATENCY_LOOKUPS, seed + 1)]
    samples = []
    for i, text in enumerate(queries):
        t0 = time.perf_counter()
        index.nearest(f"s{i % scopes}", text)
        samples.append(time.perf_counter() - t0)
    p50, p99 = percentiles_ms(samples)
    return p50, p99, build


def embed_latency(embedder: Embedder, seed: int) -> tuple[float, float]:
    samples = []
    for q in workload(LATENCY_LOOKUPS, seed + 1):
        t0 = time.perf_counter()
        embedder.embed([q.text])
        samples.append(time.perf_counter() - t0)
    return percentiles_ms(samples)


def verdict(ok: bool) -> str:
    return "meets" if ok else "BELOW"


def report_replays(replays: list[Replay]) -> list[str]:
    lines = [f"{'threshold':>9} {'exact':>7} {'semantic':>9} {'total':>7} {'ceiling':>8} "
             f"{'wrong-intent':>13}  floor"]
    for r in replays:
        lines.append(
            f"{r.threshold:>9.2f} {r.exact / r.n:>7.1%} {r.semantic / r.n:>9.1%} "
            f"{r.hit_rate:>7.1%} {r.ceiling / r.n:>8.1%} {r.wrong_intent:>6} ({r.wrong_intent / max(1, r.semantic):.1%})"
            f"  ≥ {FLOOR_HIT_RATE:.0%}: {verdict(r.hit_rate >= FLOOR_HIT_RATE)}")
    main = next(r for r in replays if r.threshold == DEFAULT_THRESHOLD)
    lines.append(f"at {DEFAULT_THRESHOLD}, by kind (exact / semantic / miss):")
    for kind in ("repeat", "paraphrase", "novel"):
        c = main.by_kind.get(kind, Counter())
        lines.append(f"  {kind:<10} n={sum(c.values()):<6} {c['exact']:>6} / {c['semantic']:>5} "
                     f"/ {c['miss']:>5}")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=5000, help="queries in the replayed workload")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--embedder", choices=NAMES, default="wordllama+cjk")
    p.add_argument("--compare", action="store_true",
                   help="also print the other embedder's separation and near-miss figures")
    p.add_argument("--sizes", default="10000,100000",
                   help="index sizes for the latency table, comma-separated ('' to skip)")
    cache_pipeline.add_arguments(p)


def main(args: argparse.Namespace) -> int:
    def progress(msg: str, end: str = "\n") -> None:
        print(msg, end=end, file=sys.stderr, flush=True)

    if args.pipeline:
        return cache_pipeline.run(args, progress, replay)
    t0 = time.perf_counter()
    embedder = load_embedder(args.embedder)
    print(f"embedder: {embedder.name} ({embedder.dims} dims), loaded in "
          f"{time.perf_counter() - t0:.2f} s")
    queries = workload(args.n, args.seed)
    kinds = Counter(q.kind for q in queries)
    langs = Counter(q.lang for q in queries)
    print(f"workload: {args.n} queries, seed {args.seed}: "
          + ", ".join(f"{k} {kinds[k]}" for k in ("repeat", "paraphrase", "novel"))
          + "; " + ", ".join(f"{k} {v}" for k, v in sorted(langs.items())))

    print("\n== hit rates (exact dict + semantic index, one scope) ==")
    replays = []
    for threshold in THRESHOLDS:
        progress(f"  replaying at {threshold} ...")
        replays.append(replay(embedder, queries, threshold))
    print("\n".join(report_replays(replays)))
    print(f"floor, exact cache alone: {kinds['repeat'] / args.n:.1%}")

    print("\n== near-miss pairs: false hits (a pair hits if either side serves the other) ==")
    for name in ([args.embedder] + [n for n in NAMES if n != args.embedder] * args.compare):
        emb = embedder if name == args.embedder else load_embedder(name)
        for threshold in THRESHOLDS:
            guarded, total = near_miss_hits(emb, threshold)
            bare, _ = near_miss_hits(emb, threshold, guard=False)
            by_cat = Counter(near_miss_category(p) for p in guarded)
            ok = len(guarded) / total <= FLOOR_FALSE_HITS
            print(f"{name:<14} {threshold:.2f}: {len(guarded)}/{total} ({len(guarded) / total:.1%}) "
                  f"with compatible(), {len(bare)} ({len(bare) / total:.1%}) without; "
                  f"floor ≤ {FLOOR_FALSE_HITS:.0%}: {verdict(ok)}"
                  + (f"  [{', '.join(f'{k} {v}' for k, v in sorted(by_cat.items()))}]"
                     if by_cat else ""))
            if threshold == DEFAULT_THRESHOLD:
                for a, b in guarded:
                    print(f"    hit: {a!r} ~ {b!r}")

        sep = separation(emb)
        for lang, s in sep.items():
            print(f"{name:<14} {lang}: same-intent cos mean {s['same_mean']:.2f} "
                  f"(≥0.95: {s['same_95']:.1%}), different-intent mean {s['diff_mean']:.2f} "
                  f"max {s['diff_max']:.2f}, AUC {s['auc']:.3f}")

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if sizes:
        print("\n== lookup latency: embed the turn + nearest() in its scope ==")
        e50, e99 = embed_latency(embedder, args.seed)
        print(f"floor, embedding alone: P50 {e50:.3f} ms, P99 {e99:.3f} ms")
        for size in sizes:
            for scopes in (1, max(1, size // SMALL_SCOPE)):
                p50, p99, build = lookup_latency(embedder, size, scopes, args.seed, progress)
                print(f"{size:>7} entries, {scopes:>5} scope(s): P50 {p50:.3f} ms, "
                      f"P99 {p99:.3f} ms (floor P99 ≤ {FLOOR_P99_MS:.0f} ms: "
                      f"{verdict(p99 <= FLOOR_P99_MS)}); built in {build:.1f} s")
    return 0
