"""Retrieved-passage pruning: BM25 terms for English and Chinese, the relevant passage
first, top-K within a budget in the original order, other messages never dropped."""

from __future__ import annotations

from pipeline.context import prune_retrieved, relevance, terms
from pipeline.events.models import ChatMessage
from pipeline.routing.tokens import estimate_message_tokens

ZH_PASSAGES = [
    "星帆智能台灯的标准配送需要 5 个工作日，大城市可选择加急配送。",
    "极光 X2 路由器提供 24 个月的有限保修，涵盖制造缺陷。",
    "云雀 7 耳机充满电后正常使用约可续航 30 小时。",
    "极光 X2 路由器不含配件的重量为 420 克。",
    "猎户 S5 手机提供 12 个月的有限保修，涵盖制造缺陷。",
]


def passage(text: str, role: str = "user") -> ChatMessage:
    return ChatMessage(role, text, name="retrieved")


def test_terms_english_words_minus_stopwords_stemmed():
    assert terms("How much does the Aurora X2 weigh? It weighs 420 grams") == \
        ["much", "aurora", "x2", "weigh", "weigh", "420", "gram"]


def test_terms_chinese_characters_and_bigrams_and_mixed_text():
    assert terms("保修期") == ["保", "修", "期", "保修", "修期"]
    assert terms("X2 的保修") == ["x2", "保", "修", "的保", "保修"]


def test_chinese_question_ranks_the_relevant_passage_first():
    scores = relevance("极光 X2 路由器的保修期是多久？", ZH_PASSAGES)
    assert max(range(len(scores)), key=scores.__getitem__) == 1


def test_english_question_ranks_the_relevant_passage_first():
    texts = ["Refunds are paid within 14 days of the return.",
             "The Aurora X2 router weighs 420 grams.",
             "Shipping takes 3 business days."]
    scores = relevance("How long until my refund is paid?", texts)
    assert max(range(3), key=scores.__getitem__) == 0


def test_each_part_of_a_two_part_question_gets_its_passage():
    scores = relevance("关于极光 X2 路由器：保修期是多久？另外，重量是多少克？", ZH_PASSAGES)
    top2 = sorted(range(len(scores)), key=lambda i: -scores[i])[:2]
    assert sorted(top2) == [1, 3]


def conversation() -> list[ChatMessage]:
    return ([ChatMessage("system", "Answer from the passages only.")]
            + [passage(t, "system" if i == 4 else "user") for i, t in enumerate(ZH_PASSAGES)]
            + [ChatMessage("user", "极光 X2 路由器的保修期和重量？")])


def test_top_k_keeps_the_best_in_their_original_order_and_every_other_message():
    messages = conversation()
    kept, done = prune_retrieved(messages, top_k=2)
    assert kept == [messages[0], messages[2], messages[4], messages[6]]
    assert done.passages == (1, 2, 3, 4, 5) and done.dropped == (1, 3, 5)
    assert done.question == messages[-1].text


def test_token_budget_skips_what_does_not_fit_and_keeps_the_best_alone():
    messages = conversation()
    _, ranked = prune_retrieved(messages)
    order = sorted(range(5), key=lambda j: -ranked.scores[j])
    best, second = (messages[ranked.passages[j]] for j in order[:2])
    sizes = {id(m): estimate_message_tokens(m) for m in messages}
    smaller = [messages[ranked.passages[j]] for j in order[2:]
               if sizes[id(messages[ranked.passages[j]])] < sizes[id(second)]]
    budget = sizes[id(best)] + sizes[id(second)] - 1         # the second does not fit ...
    kept, _ = prune_retrieved(messages, tokens=budget)
    chosen = [m for m in kept if m.name == "retrieved"]
    assert best in chosen and second not in chosen
    assert sum(sizes[id(m)] for m in chosen) <= budget
    if smaller:                                               # ... a smaller, lower one may
        assert len(chosen) >= 2
    kept, _ = prune_retrieved(messages, tokens=1)
    assert [m for m in kept if m.name == "retrieved"] == [best]     # never left with none


def test_an_explicit_question_overrides_the_last_user_turn():
    kept, _ = prune_retrieved(conversation(), question="云雀 7 耳机续航多少小时", top_k=1)
    assert [m.text for m in kept if m.name == "retrieved"] == [ZH_PASSAGES[2]]


def test_no_passages_no_change():
    messages = [ChatMessage("user", "hi"), ChatMessage("assistant", "hello", name="retrieved")]
    kept, done = prune_retrieved(messages, top_k=1)
    assert kept == messages and done.passages == ()
