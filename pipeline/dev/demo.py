"""Demo traffic: a realistic, seeded mix of simple and complex, Chinese and English prompts
from several tenants and teams, with the routing hints real callers set."""

from __future__ import annotations

import random
from decimal import Decimal

from pipeline.client import make_request
from pipeline.clock import now_ms
from pipeline.events.models import Budget, CanaryRule, Request, RoutingHints, TenantPolicy

TENANTS = {
    "acme-retail": ["support", "search", "marketing"],
    "globex-finance": ["risk", "research"],
    "initech-cn": ["客服", "数据"],
}

SIMPLE_EN = [
    "Translate 'Where is the nearest train station?' into French.",
    "Summarise this customer email in one sentence: my order #4417 arrived with a cracked lid, "
    "can you send a replacement?",
    "Extract the dates from: the contract starts 2026-01-15 and renews on 2027-01-15.",
    "List three synonyms for 'quick'.",
    "Classify the sentiment of this review as positive, neutral or negative: 'Fast delivery, "
    "but the colour is not as pictured.'",
    "What is the capital of Australia?",
]
SIMPLE_ZH = [
    "把这句话翻译成英文：今天的会议推迟到下午三点。",
    "总结一下这段话：用户反映订单已经发货三天但物流信息一直没有更新，希望尽快处理。",
    "查询一下：北京到上海的高铁大概需要多长时间？",
    "从这段文字中提取电话号码：请联系客服 400-820-1234 或者王经理 138-0013-8000。",
    "介绍一下什么是增值税发票。",
    "把下面的商品列出来并按价格排序：苹果 5 元，香蕉 3 元，橙子 4 元。",
]
COMPLEX_EN = [
    "Analyse the trade-offs between event sourcing and a CRUD database for an order service "
    "with 5,000 writes per second, then propose an architecture and a migration plan in steps.",
    "Prove that the sum of the first n odd numbers is n^2, then generalise to arithmetic series.",
    "Review this Python code for concurrency bugs and explain each fix:\n```python\n"
    "counter = 0\nasync def inc():\n    global counter\n    v = counter\n    await asyncio.sleep(0)\n"
    "    counter = v + 1\n```",
    "Our churn rose from 2.1% to 3.4% after a price change. Reason step by step about which "
    "customer segments drove it and which experiments would separate price from seasonality.",
]
COMPLEX_ZH = [
    "请分析一下微服务架构和单体架构在高并发电商场景下的优缺点，并给出分阶段的迁移方案。",
    "请推理：如果一个分布式系统的网络分区概率是 0.1%，副本数为 3，如何计算数据丢失的概率？请给出推导过程。",
    "帮我写一段代码：用 Python 实现一个带过期时间的 LRU 缓存，并分析时间复杂度。",
]


def demo_requests(n: int, seed: int = 7, reply_topic: str | None = None) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tenant = rng.choice(sorted(TENANTS))
        team = rng.choice(TENANTS[tenant])
        chinese = tenant == "initech-cn" or rng.random() < 0.2
        complex_ = rng.random() < 0.3
        pool = (COMPLEX_ZH if chinese else COMPLEX_EN) if complex_ else (SIMPLE_ZH if chinese else SIMPLE_EN)
        prompt = rng.choice(pool)
        hints, model = RoutingHints(), None
        roll = rng.random()
        if complex_ and roll < 0.5:
            hints = RoutingHints(required_quality=0.95)
        elif not complex_ and roll < 0.4:
            hints = RoutingHints(budget_per_mtok=Decimal("1.00"))
        elif roll < 0.6:
            hints = RoutingHints(max_latency_ms=400, priority="interactive")
        elif roll < 0.7:
            model = rng.choice(["gpt-4", "claude-3", "deepseek-chat", "gemini-pro"])
        out.append(make_request(
            tenant, prompt, model=model, team=team, end_user=f"user-{rng.randint(1, 40)}",
            max_tokens=rng.choice([256, 512, 1024]) if complex_ else rng.choice([64, 128, 256]),
            temperature=rng.choice([0.0, 0.2, 0.7]), hints=hints, reply_topic=reply_topic,
            metadata={"demo": "1", "seq": str(i)}))
    return out


def demo_policies() -> list[TenantPolicy]:
    """Policies the demo tenants run under, so `llmpipe dev` shows them at work: a canary
    and a soft budget that the demo crosses (downgrades + one alert), a quality-first tenant
    that may not use Claude, and a tenant limited to three models."""
    return [
        TenantPolicy("acme-retail",
                     budgets=[Budget("month", soft_usd=Decimal("0.02"), hard_usd=Decimal("5"))],
                     canary=CanaryRule("flash-trial", 20, "gemini-2.5-flash")),
        TenantPolicy("globex-finance", default_quality=0.95, denied_models=["claude-sonnet-4.5"]),
        TenantPolicy("initech-cn", allowed_models=["deepseek-v3.2", "gemini-2.5-flash", "gpt-4.1"],
                     truncation_allowed=True),
    ]


def demo_poison(topics_usage: str) -> list[tuple[str, bytes, bytes, str | None]]:
    """Hostile records `llmpipe dev` slips into its demo traffic, to show each ends in one
    outcome while the demo requests around them are served: (what it is, key, value,
    request id or None when the bytes are not a request)."""
    import json
    import uuid

    def request(**fields) -> tuple[dict, str]:
        rid = str(uuid.uuid4())
        return {"request_id": rid, "tenant": "acme-retail", "team": "support",
                "messages": [{"role": "user", "content": "Where is my parcel?"}], **fields}, rid

    surrogate, rid1 = request(messages=[{"role": "user", "content": "hi \ud800"}])
    foreign, rid2 = request(reply_topic=topics_usage)
    ancient, rid3 = request(created_at_ms=now_ms() - 10 * 365 * 86_400_000)
    return [
        ("garbage bytes", b"acme-retail", b"\x13\x37 not an event", None),
        ("a lone surrogate in the content", b"acme-retail",
         json.dumps(surrogate, ensure_ascii=True).encode(), rid1),
        ("reply_topic set to the usage topic", b"acme-retail", json.dumps(foreign).encode(), rid2),
        ("created_at_ms ten years ago", b"acme-retail", json.dumps(ancient).encode(), rid3),
    ]
