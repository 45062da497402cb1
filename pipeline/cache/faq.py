"""The FAQ workload `llmpipe bench cache` replays: customer-service questions to a web shop
in English and Chinese, generated from a seed, plus a labelled set of near-miss pairs the
semantic cache must not confuse.

**Intents.** 40 FAQ intents (``INTENTS``), each with five phrasings per language written by
hand; the first is the canonical one (the wording of the shop's help page and suggested-
question buttons, so it is asked most). A drawn phrasing may be decorated the way people
type: a greeting before it, the question mark dropped, lower case.

**The mix** (``workload``), per query: the language is en with p=0.55, else zh. Then
 - 70% an FAQ intent, Zipf-distributed over the 40 (s=1.1: a few questions dominate, as in
   every support queue); the canonical phrasing with p=0.5, else one of the other four;
   decorated with p=0.3;
 - 15% a question about one order or parcel, with its id ("where is order 48213?"), the
   id drawn from a pool of n/3 ids, so a customer sometimes asks again; its answer depends
   on the id, so only the same id may be served from the cache;
 - 15% a long-tail product question composed from parts ("Does the desk lamp come in
   black?"), mostly unique.

**Kinds** are labelled from the history of the sequence itself, the answer a perfect cache
would give: ``repeat`` (the same normalised text came before: an exact hit is right),
``paraphrase`` (new text, but the same intent in the same language came before: a semantic
hit is right) and ``novel`` (neither: only a miss is right). repeat + paraphrase is the
ceiling of any cache's hit rate on the sequence.

**Near misses** (``near_misses``): ≥ 100 labelled pairs that share most words but need
different answers: negations, different numbers or ids, the same question in the other
language, and the same words with a different meaning."""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass

LANGS = ("en", "zh")
EN_SHARE = 0.55
FAQ_SHARE, SLOT_SHARE = 0.70, 0.15          # the rest: long-tail questions
ZIPF_S = 1.1
CANONICAL_P = 0.5
DECORATE_P = 0.3


@dataclass(frozen=True)
class Query:
    text: str
    intent: str         # what decides the right answer: FAQ intent, intent#id or tail:...
    lang: str           # "en" | "zh"
    kind: str           # "repeat" | "paraphrase" | "novel"


def normalise(text: str) -> str:
    """The exact-cache key of a user turn in the bench: NFKC, surrounding space stripped,
    inner runs of space collapsed. Nothing that could change the meaning (case, punctuation)
    is touched: such variants are left to the semantic cache."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


# intent -> (en phrasings, zh phrasings); the first of each is canonical
INTENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "track_parcel": (
        ("Where is my parcel?", "Where's my package?", "How can I track my parcel?",
         "Can you tell me where my delivery is?", "I want to track my shipment."),
        ("我的包裹在哪里？", "我的快递到哪了？", "怎么查询我的包裹物流？", "能帮我查一下快递到哪里了吗？",
         "我想跟踪我的包裹。")),
    "refund_policy": (
        ("What is your refund policy?", "What's the refund policy?", "How do refunds work?",
         "Can you explain your refund policy?", "Tell me about your refund rules."),
        ("你们的退款政策是什么？", "退款政策是怎样的？", "退款是怎么处理的？", "能说明一下退款规则吗？",
         "我想了解退款政策。")),
    "return_item": (
        ("How do I return an item?", "How can I return a product?", "What is the process to return an item?",
         "I want to send an item back.", "How do returns work?"),
        ("怎么退货？", "如何退回商品？", "退货流程是什么？", "我想把商品退回去。", "退货怎么操作？")),
    "cancel_order": (
        ("How do I cancel my order?", "Can I cancel my order?", "I want to cancel my order.",
         "Please help me cancel my order.", "How can I cancel an order I placed?"),
        ("怎么取消订单？", "我可以取消订单吗？", "我想取消我的订单。", "请帮我取消订单。", "下单后如何取消？")),
    "change_address": (
        ("How do I change my delivery address?", "Can I change the shipping address?",
         "I need to update my delivery address.", "How can I edit the address for my order?",
         "Change my shipping address please."),
        ("怎么修改收货地址？", "可以更改收货地址吗？", "我需要更新收货地址。", "订单地址怎么改？", "请帮我改一下收货地址。")),
    "reset_password": (
        ("How do I reset my password?", "I forgot my password.", "How can I reset my password?",
         "I can't remember my password, what should I do?", "Reset my password please."),
        ("怎么重置密码？", "我忘记密码了。", "如何找回密码？", "密码忘了怎么办？", "请帮我重置密码。")),
    "change_email": (
        ("How do I change my email address?", "Can I update the email on my account?",
         "I want to change my account email.", "How can I use a different email address?",
         "Update my email address please."),
        ("怎么修改邮箱地址？", "可以更换账号绑定的邮箱吗？", "我想改一下账户邮箱。", "如何更换邮箱？", "请帮我更新邮箱地址。")),
    "payment_methods": (
        ("What payment methods do you accept?", "Which payment options are available?",
         "Can I pay with PayPal?", "How can I pay for my order?", "What ways can I pay?"),
        ("支持哪些付款方式？", "可以用什么方式付款？", "能用支付宝付款吗？", "订单怎么支付？", "有哪些支付方式？")),
    "charged_twice": (
        ("I was charged twice for my order.", "Why was I charged two times?",
         "There is a double charge on my card.", "My card was billed twice.",
         "I see two payments for one order."),
        ("我的订单被扣了两次钱。", "为什么扣了我两次款？", "我的卡被重复扣款了。", "同一个订单付了两次钱。",
         "我看到一笔订单有两次扣款。")),
    "delivery_time": (
        ("How long does delivery take?", "How long will shipping take?", "When will my order arrive?",
         "What is the delivery time?", "How many days does delivery take?"),
        ("配送需要多长时间？", "发货后多久能到？", "我的订单什么时候能到？", "快递一般几天到？", "送货要几天？")),
    "shipping_cost": (
        ("How much is shipping?", "What does shipping cost?", "Is shipping free?",
         "How much do you charge for delivery?", "What are the shipping fees?"),
        ("运费是多少？", "邮费怎么算？", "包邮吗？", "配送收费多少？", "运费标准是什么？")),
    "international_shipping": (
        ("Do you ship internationally?", "Can you deliver abroad?", "Do you ship to other countries?",
         "Is international delivery available?", "Can I order from overseas?"),
        ("你们支持国际配送吗？", "可以寄到国外吗？", "能发货到其他国家吗？", "有海外配送吗？", "海外可以下单吗？")),
    "warranty": (
        ("What does the warranty cover?", "How long is the warranty?", "Is my product under warranty?",
         "Tell me about the warranty.", "What is your warranty policy?"),
        ("保修范围是什么？", "保修期多长？", "我的产品还在保修期内吗？", "介绍一下保修政策。", "你们的保修政策是什么？")),
    "damaged_item": (
        ("My item arrived damaged.", "The product I received is broken.", "What do I do if my item is damaged?",
         "My order came broken.", "I received a damaged product."),
        ("我收到的商品坏了。", "商品到货时已经损坏。", "商品损坏怎么办？", "我的订单到的时候是坏的。", "收到的东西有破损。")),
    "wrong_item": (
        ("I received the wrong item.", "You sent me the wrong product.", "This is not what I ordered.",
         "The item I got is not the one I ordered.", "I got someone else's order."),
        ("我收到的商品不对。", "你们发错货了。", "这不是我订的东西。", "收到的商品和订单不一致。", "我收到了别人的订单。")),
    "missing_item": (
        ("An item is missing from my order.", "My package is missing an item.",
         "Not everything I ordered was in the box.", "One product was missing from my delivery.",
         "Part of my order is missing."),
        ("我的订单少了一件商品。", "包裹里缺了东西。", "我订的东西没有全部收到。", "快递里少了一个商品。", "订单有部分商品缺失。")),
    "invoice": (
        ("How do I get an invoice?", "Can I have an invoice for my order?", "Where can I download my invoice?",
         "I need a receipt for my purchase.", "Please send me the invoice."),
        ("怎么开发票？", "可以给我的订单开发票吗？", "在哪里下载发票？", "我需要购物凭证。", "请把发票发给我。")),
    "coupon_not_working": (
        ("My coupon code is not working.", "Why doesn't my discount code work?",
         "The promo code I entered is invalid.", "I can't apply my coupon.", "My voucher code was rejected."),
        ("我的优惠券用不了。", "为什么优惠码无效？", "输入的促销码显示无效。", "优惠券无法使用。", "我的代金券被拒绝了。")),
    "contact_support": (
        ("How can I contact customer service?", "How do I reach support?", "Can I talk to a human agent?",
         "What is your customer service phone number?", "I want to speak to someone."),
        ("怎么联系客服？", "如何联系人工客服？", "可以转人工吗？", "客服电话是多少？", "我想找人工客服。")),
    "opening_hours": (
        ("What are your opening hours?", "When is customer service open?", "What time do you open?",
         "What are your business hours?", "Are you open on weekends?"),
        ("你们的营业时间是几点？", "客服什么时候上班？", "你们几点开门？", "营业时间是什么时候？", "周末营业吗？")),
    "delete_account": (
        ("How do I delete my account?", "I want to close my account.", "Can you remove my account?",
         "How can I deactivate my account?", "Please delete my account."),
        ("怎么注销账号？", "我想关闭我的账户。", "可以删除我的账号吗？", "如何注销账户？", "请帮我注销账号。")),
    "update_phone": (
        ("How do I change my phone number?", "Can I update my mobile number?",
         "I want to change the phone number on my account.", "How can I edit my phone number?",
         "Update my phone number please."),
        ("怎么修改手机号？", "可以更换绑定的手机号吗？", "我想改一下账户的手机号码。", "如何更改手机号？", "请帮我更新手机号。")),
    "gift_card_balance": (
        ("How do I check my gift card balance?", "What's the balance on my gift card?",
         "How much is left on my gift card?", "Where can I see my gift card balance?",
         "Check my gift card balance."),
        ("怎么查询礼品卡余额？", "我的礼品卡还有多少钱？", "礼品卡余额在哪里看？", "如何查看礼品卡余额？", "查一下我的礼品卡余额。")),
    "exchange_size": (
        ("Can I exchange for a different size?", "How do I swap an item for another size?",
         "The size is wrong, can I exchange it?", "I need a bigger size.", "How do size exchanges work?"),
        ("可以换尺码吗？", "怎么换一个尺码？", "尺码不合适能换吗？", "我需要换大一号。", "换码流程是怎样的？")),
    "price_match": (
        ("Do you offer price matching?", "Will you match a lower price?", "I found it cheaper elsewhere.",
         "Can you match a competitor's price?", "Is there a price match guarantee?"),
        ("你们有保价服务吗？", "别家更便宜能补差价吗？", "我在别的地方看到更便宜的。", "可以按竞争对手的价格吗？", "有价格保护吗？")),
    "order_not_received": (
        ("I never received my order.", "My order hasn't arrived.", "It says delivered but I didn't get it.",
         "My package never came.", "I still haven't got my order."),
        ("我一直没收到订单。", "我的订单还没到。", "显示已签收但我没收到。", "我的包裹一直没来。", "我还没收到货。")),
    "change_payment": (
        ("Can I change the payment method for my order?", "How do I update my payment method?",
         "I want to pay with a different card.", "How can I switch my payment method?",
         "Change the card on my order."),
        ("可以更改订单的付款方式吗？", "怎么更新支付方式？", "我想换一张卡付款。", "如何切换付款方式？", "请更换我订单的付款卡。")),
    "subscription_cancel": (
        ("How do I cancel my subscription?", "I want to stop my subscription.", "Can I end my membership plan?",
         "How can I unsubscribe from the monthly plan?", "Cancel my subscription please."),
        ("怎么取消订阅？", "我想停止订阅。", "可以终止会员套餐吗？", "如何退订月度套餐？", "请帮我取消订阅。")),
    "membership_benefits": (
        ("What are the membership benefits?", "What do members get?", "Is membership worth it?",
         "What perks come with membership?", "Tell me about member benefits."),
        ("会员有什么权益？", "会员能享受什么？", "开会员值得吗？", "会员有哪些福利？", "介绍一下会员权益。")),
    "store_locations": (
        ("Where are your stores?", "Is there a store near me?", "Where can I find a physical shop?",
         "What are your store locations?", "Do you have a shop in my city?"),
        ("你们的门店在哪里？", "我附近有门店吗？", "实体店在哪？", "门店地址有哪些？", "我所在的城市有店吗？")),
    "pickup_in_store": (
        ("Can I pick up my order in store?", "Is in-store pickup available?", "How does click and collect work?",
         "Can I collect my order at a shop?", "Do you offer store pickup?"),
        ("可以到店自提吗？", "支持门店自取吗？", "线上下单到店取货怎么操作？", "我能去店里拿货吗？", "有到店自提服务吗？")),
    "out_of_stock": (
        ("When will this item be back in stock?", "Is this product out of stock?", "When do you restock?",
         "Will the sold out item come back?", "How do I know when it's available again?"),
        ("这个商品什么时候补货？", "这个产品缺货了吗？", "你们什么时候补货？", "售罄的商品还会再上吗？", "怎么知道什么时候有货？")),
    "preorder": (
        ("How do pre-orders work?", "Can I pre-order this item?", "When will my pre-order ship?",
         "Is pre-ordering available?", "How do I place a pre-order?"),
        ("预售是怎么回事？", "这个商品可以预订吗？", "预售的订单什么时候发货？", "支持预订吗？", "怎么下预售订单？")),
    "bulk_order": (
        ("Do you offer bulk discounts?", "Can I place a large order for my company?",
         "Is there a discount for buying in bulk?", "How do I make a wholesale order?",
         "Do you sell to businesses?"),
        ("批量购买有折扣吗？", "公司可以大量采购吗？", "买得多能便宜吗？", "怎么批发下单？", "你们做企业采购吗？")),
    "student_discount": (
        ("Do you have a student discount?", "Is there a discount for students?", "Can students get a discount?",
         "How do I get the student discount?", "Student discount available?"),
        ("有学生优惠吗？", "学生能打折吗？", "学生有没有折扣？", "怎么申请学生优惠？", "学生价有吗？")),
    "points_redeem": (
        ("How do I use my reward points?", "How can I redeem my points?", "What can I do with my points?",
         "Can I pay with reward points?", "How do loyalty points work?"),
        ("积分怎么使用？", "如何兑换积分？", "积分能用来干什么？", "可以用积分付款吗？", "会员积分怎么算？")),
    "unsubscribe_emails": (
        ("How do I stop your marketing emails?", "Unsubscribe me from your newsletter.",
         "I get too many promotional emails.", "How can I opt out of emails?", "Stop sending me emails."),
        ("怎么取消营销邮件？", "请把我从邮件订阅中移除。", "你们的推广邮件太多了。", "如何退订邮件？", "别再给我发邮件了。")),
    "two_factor": (
        ("How do I set up two-factor authentication?", "How can I turn on 2FA?",
         "I want to add two-step verification.", "How do I secure my account with a code?",
         "Set up two-factor login."),
        ("怎么设置两步验证？", "如何开启双重认证？", "我想添加二次验证。", "怎么用验证码保护账户？", "设置登录双重验证。")),
    "refund_status": (
        ("Where is my refund?", "When will I get my refund?", "My refund hasn't arrived yet.",
         "How long does a refund take?", "What's the status of my refund?"),
        ("我的退款到哪了？", "什么时候能收到退款？", "我的退款还没到账。", "退款需要多久？", "退款进度怎么样了？")),
    "installment_plans": (
        ("Can I pay in installments?", "Do you offer payment plans?", "Is there a buy now pay later option?",
         "Can I split the payment?", "Do you have monthly installments?"),
        ("可以分期付款吗？", "支持分期吗？", "有先买后付吗？", "能分几次付款吗？", "有按月分期吗？")),
}

EN_GREETINGS = ("Hi, ", "Hello, ", "Hi there, ", "Quick question: ")
ZH_GREETINGS = ("你好，", "您好，", "请问", "客服你好，")

# questions about one order or parcel: (intent, en template, zh template)
SLOT_TEMPLATES = (
    ("order_status", "Where is order {id}?", "订单{id}到哪了？"),
    ("order_status", "What's the status of order #{id}?", "订单号{id}现在是什么状态？"),
    ("refund_order", "Please refund order {id}.", "请帮我退款，订单号{id}。"),
    ("cancel_order_id", "Can I still cancel order {id}?", "订单{id}还能取消吗？"),
    ("tracking", "My tracking number is {id}, when will it arrive?", "快递单号{id}什么时候能到？"),
)

TAIL_PRODUCTS = (
    ("desk lamp", "台灯"), ("office chair", "办公椅"), ("backpack", "双肩包"), ("rain jacket", "雨衣"),
    ("coffee maker", "咖啡机"), ("water bottle", "水杯"), ("yoga mat", "瑜伽垫"), ("phone case", "手机壳"),
    ("wireless earbuds", "无线耳机"), ("running shoes", "跑鞋"), ("blender", "搅拌机"), ("suitcase", "行李箱"),
    ("bed sheet set", "床单套件"), ("kettle", "电水壶"), ("winter coat", "冬季外套"), ("smart watch", "智能手表"),
    ("air purifier", "空气净化器"), ("rice cooker", "电饭煲"), ("keyboard", "键盘"), ("baby stroller", "婴儿车"),
)
TAIL_ATTRS = (("black", "黑色"), ("white", "白色"), ("blue", "蓝色"), ("red", "红色"), ("grey", "灰色"),
              ("green", "绿色"))
TAIL_CONTEXTS = (("in the rain", "下雨天"), ("on a plane", "坐飞机时"), ("with a 110V socket", "在110V插座上"),
                 ("by a child", "给小孩"), ("outdoors in winter", "冬天在户外"), ("in the dishwasher", "放进洗碗机"))
TAIL_TEMPLATES = (
    ("color", "Does the {p} come in {a}?", "{p}有{a}的吗？"),
    ("material", "What material is the {p} made of?", "{p}是什么材质的？"),
    ("use", "Can the {p} be used {c}?", "{p}可以{c}用吗？"),
    ("weight", "How heavy is the {p}?", "{p}有多重？"),
    ("clean", "How do I clean the {p}?", "{p}怎么清洗？"),
    ("size", "What are the dimensions of the {p}?", "{p}的尺寸是多少？"),
)


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1 / (rank ** s) for rank in range(1, n + 1)]


def _decorate(text: str, lang: str, rng: random.Random) -> str:
    if lang == "en":
        choice = rng.randrange(3)
        if choice == 0:
            return rng.choice(EN_GREETINGS) + text[0].lower() + text[1:]
        if choice == 1:
            return text.rstrip("?.!")
        return text.lower()
    if rng.randrange(2) == 0:
        return rng.choice(ZH_GREETINGS) + text
    return text.rstrip("？。！")


def _draw(rng: random.Random, lang: str, intents: list[str], weights: list[float],
          ids: list[str]) -> tuple[str, str]:
    """(text, intent) of one query."""
    li = LANGS.index(lang)
    roll = rng.random()
    if roll < FAQ_SHARE:
        intent = rng.choices(intents, weights)[0]
        phrasings = INTENTS[intent][li]
        text = phrasings[0] if rng.random() < CANONICAL_P else rng.choice(phrasings[1:])
        if rng.random() < DECORATE_P:
            text = _decorate(text, lang, rng)
        return text, intent
    if roll < FAQ_SHARE + SLOT_SHARE:
        intent, en, zh = rng.choice(SLOT_TEMPLATES)
        ident = rng.choice(ids)
        return (en, zh)[li].format(id=ident), f"{intent}#{ident}"
    kind, en, zh = rng.choice(TAIL_TEMPLATES)
    p, a, c = rng.randrange(len(TAIL_PRODUCTS)), rng.randrange(len(TAIL_ATTRS)), \
        rng.randrange(len(TAIL_CONTEXTS))
    text = (en, zh)[li].format(p=TAIL_PRODUCTS[p][li], a=TAIL_ATTRS[a][li], c=TAIL_CONTEXTS[c][li])
    slot = {"color": f":{a}", "use": f":{c}"}.get(kind, "")
    return text, f"tail:{kind}:{p}{slot}"


def workload(n: int, seed: int = 14) -> list[Query]:
    """``n`` queries of the documented mix, the same for the same seed, each labelled with
    its intent and the kind a perfect cache would see it as."""
    rng = random.Random(seed)
    intents = list(INTENTS)
    rng.shuffle(intents)                     # which intents are popular is part of the seed
    weights = _zipf_weights(len(intents), ZIPF_S)
    ids = [str(rng.randrange(10_000_000, 99_999_999)) for _ in range(max(1, n // 3))]
    seen_texts: set[str] = set()
    seen_intents: set[tuple[str, str]] = set()
    out = []
    for _ in range(n):
        lang = "en" if rng.random() < EN_SHARE else "zh"
        text, intent = _draw(rng, lang, intents, weights, ids)
        key = normalise(text)
        if key in seen_texts:
            kind = "repeat"
        elif (intent, lang) in seen_intents:
            kind = "paraphrase"
        else:
            kind = "novel"
        seen_texts.add(key)
        seen_intents.add((intent, lang))
        out.append(Query(text, intent, lang, kind))
    return out


# --- near misses: same words, different answer ------------------------------------------

NEGATIONS = (
    ("Cancel my order.", "Don't cancel my order."),
    ("I want a refund.", "I don't want a refund."),
    ("Is shipping free?", "Is shipping not free?"),
    ("My coupon code is working.", "My coupon code is not working."),
    ("I received my order.", "I never received my order."),
    ("Please send me marketing emails.", "Please don't send me marketing emails."),
    ("The item fits.", "The item doesn't fit."),
    ("I can log in to my account.", "I can't log in to my account."),
    ("Renew my subscription automatically.", "Do not renew my subscription automatically."),
    ("I want two-factor authentication on my account.", "I want no two-factor authentication on my account."),
    ("Ship the items together.", "Don't ship the items together."),
    ("The payment went through.", "The payment didn't go through."),
    ("Leave the parcel at the door.", "Never leave the parcel at the door."),
    ("I have a tracking number.", "I don't have a tracking number."),
    ("The warranty covers water damage.", "The warranty does not cover water damage."),
    ("取消我的订单。", "不要取消我的订单。"),
    ("我想退款。", "我不想退款。"),
    ("包邮吗？", "不包邮吗？"),
    ("我的优惠券能用。", "我的优惠券不能用。"),
    ("我收到货了。", "我没收到货。"),
    ("请给我发营销邮件。", "请别给我发营销邮件。"),
    ("衣服尺码合适。", "衣服尺码不合适。"),
    ("我能登录我的账户。", "我无法登录我的账户。"),
    ("自动续订我的会员。", "不要自动续订我的会员。"),
    ("付款成功了。", "付款没有成功。"),
    ("把包裹放在门口。", "别把包裹放在门口。"),
    ("我有快递单号。", "我没有快递单号。"),
    ("保修包括进水损坏。", "保修不包括进水损坏。"),
    ("订单已经发货了。", "订单还未发货。"),
    ("这个商品支持退货。", "这个商品不支持退货。"),
)

MEANINGS = (
    ("How do I change my delivery address?", "How do I change my billing address?"),
    ("How do I add a new card?", "How do I remove a card?"),
    ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
    ("How do I cancel my subscription?", "How do I cancel my order?"),
    ("Where is my refund?", "Where is my parcel?"),
    ("How do I reset my password?", "How do I change my username?"),
    ("Can I increase the quantity in my order?", "Can I decrease the quantity in my order?"),
    ("Can I return an item after 30 days?", "Can I return an item within 30 days?"),
    ("How do I open an account?", "How do I close an account?"),
    ("Do you ship to Canada?", "Do you ship to Mexico?"),
    ("What is the refund policy for shoes?", "What is the refund policy for electronics?"),
    ("How do I upgrade my membership?", "How do I downgrade my membership?"),
    ("I was charged too much.", "I was charged too little."),
    ("How do I start my subscription?", "How do I pause my subscription?"),
    ("Is the black backpack in stock?", "Is the red backpack in stock?"),
    ("Can I pay by credit card?", "Can I pay by bank transfer?"),
    ("How do I add an item to my order?", "How do I remove an item from my order?"),
    ("Can I return an item bought online in store?", "Can I return an item bought in store online?"),
    ("怎么修改收货地址？", "怎么修改发票地址？"),
    ("怎么添加银行卡？", "怎么删除银行卡？"),
    ("怎么开启两步验证？", "怎么关闭两步验证？"),
    ("怎么取消订阅？", "怎么取消订单？"),
    ("我的退款到哪了？", "我的包裹到哪了？"),
    ("可以增加订单数量吗？", "可以减少订单数量吗？"),
    ("怎么升级会员？", "怎么降级会员？"),
    ("黑色的双肩包有货吗？", "红色的双肩包有货吗？"),
    ("可以用信用卡付款吗？", "可以用银行转账付款吗？"),
    ("发货到北京要几天？", "发货到上海要几天？"),
)

NUMBERS = (
    ("Refund order 123.", "Refund order 456."),
    ("I want to return 2 items.", "I want to return 3 items."),
    ("I was charged $25 for shipping.", "I was charged $52 for shipping."),
    ("Can I return it after 14 days?", "Can I return it after 30 days?"),
    ("I need size 38.", "I need size 40."),
    ("退两件商品。", "退三件商品。"),
    ("运费收了25元。", "运费收了52元。"),
    ("14天内可以退货吗？", "30天内可以退货吗？"),
    ("我要38码的。", "我要40码的。"),
    ("我买了一个，收到两个。", "我买了两个，收到一个。"),
)


def near_misses(seed: int = 14) -> list[tuple[str, str]]:
    """Labelled pairs that must not be served from each other's cache entry: the written
    negations, meanings and numbers above, every slot template with two different ids,
    and each intent's canonical question in English beside the same in Chinese."""
    rng = random.Random(seed)
    pairs = [*NEGATIONS, *MEANINGS, *NUMBERS]
    for _, en, zh in SLOT_TEMPLATES:
        for template in (en, zh):
            a, b = rng.sample(range(10_000_000, 99_999_999), 2)
            pairs.append((template.format(id=a), template.format(id=b)))
    pairs += [(en[0], zh[0]) for en, zh in INTENTS.values()]
    return pairs


def near_miss_category(pair: tuple[str, str]) -> str:
    """negation | meaning | number | language: how the pair differs."""
    if pair in NEGATIONS:
        return "negation"
    if pair in MEANINGS:
        return "meaning"
    if pair in NUMBERS or re.search(r"\d", pair[0]):
        return "number"
    return "language"
