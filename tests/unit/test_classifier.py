"""Rule classifier (DOMAIN.md §3): each signal in English and Chinese, score bounds,
thresholds, config validation, and accuracy on the labelled evaluation set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, config_path
from pipeline.routing.classifier import (
    COMPLEX, MEDIUM, SIMPLE, Classification, Classifier, RuleClassifier, load_classifier_config)
from pipeline.bench import main as bench
from pipeline.bench.classifier import evaluate, format_report

DATA = Path(__file__).parent / "data" / "classifier_eval.jsonl"
config = load_classifier_config()
rules = RuleClassifier(config)

# Measured on classifier_eval.jsonl with the shipped weights: 88.3% overall (en 91.6%,
# zh 84.3%), 0 complex prompts classified simple. Floors leave a margin for tuning.
ACCURACY_FLOOR = 0.82
LANGUAGE_FLOOR = 0.78
MAX_COMPLEX_AS_SIMPLE_SHARE = 0.03


def classify(text: str) -> Classification:
    return rules.classify([("user", text)])


@pytest.mark.parametrize("signal, text", [
    ("simple_keywords", "Translate 'good morning' into French."),
    ("simple_keywords", "Summarize the refund policy in one sentence."),
    ("simple_keywords", "What is a mutual fund?"),
    ("simple_keywords", "把“谢谢”翻译成英文。"),
    ("simple_keywords", "帮我查询一下订单状态。"),
    ("simple_keywords", "介绍一下这家公司。"),
    ("complex_keywords", "Analyze the trade-offs of sharding the orders table."),
    ("complex_keywords", "Prove that there is no largest prime number."),
    ("complex_keywords", "请分析这个系统的架构问题。"),
    ("complex_keywords", "证明这个结论成立。"),
    ("code_block", "Why does this fail?\n```\nprint(1/0)\n```"),
    ("code_block", "Fix this:\n\n    x = load()\n    x.run()\n"),
    ("code_block", "这段代码有什么问题？\n```go\nfmt.Println(x)\n```"),
    ("code_symbols", "Why is if (a == b) { return x; } never true?"),
    ("code_symbols", "为什么 def add(a, b): 返回 None，而 items.map(x => x) 正常？"),
    ("math", "Compute ∑ 1/n² and explain."),
    ("math", r"Simplify $\frac{x^2 - 1}{x - 1}$."),
    ("math", "求解 2x + 3 = 11。"),
    ("math", "计算 ∫ x² dx。"),
    ("multi_step", "First load the file, then clean it, finally plot it."),
    ("multi_step", "Do this:\n1. parse the log\n2. count errors\n3. report"),
    ("multi_step", "首先读取数据，然后清洗，最后画图。"),
    ("multi_step", "请按步骤：\n1、导出订单\n2、核对金额"),
    ("short_prompt", "Where is my parcel?"),
    ("short_prompt", "我的快递到哪了？"),
])
def test_signal_fires_in_both_languages(signal, text):
    result = classify(text)
    assert result.signals[signal] > 0
    assert signal.replace("_", " ") in result.reason


@pytest.mark.parametrize("signal, text", [
    ("complex_keywords", "Translate 'good morning' into French."),
    ("complex_keywords", "把“谢谢”翻译成英文。"),
    ("code_block", "What does 'net 30' mean on an invoice?"),
    ("math", "发货要几天？"),
    ("multi_step", "Write a thank-you note."),
    ("long_prompt", "Where is my parcel?"),
    ("simple_keywords", "Write a cover letter for a sales role."),
])
def test_signal_stays_quiet(signal, text):
    assert classify(text).signals[signal] == 0


def test_short_and_long_prompts():
    assert classify("Hi").signals["short_prompt"] == 1.0
    long_en = "The customer wrote a long story about their delivery. " * 200   # ~1,800 words
    result = classify(long_en)
    assert result.signals["short_prompt"] == 0.0
    assert 0 < result.signals["long_prompt"] < 1
    huge_zh = "客户详细描述了他们遇到的问题。" * 700                              # ~10,000 tokens
    assert classify(huge_zh).signals["long_prompt"] == 1.0
    assert "long prompt" in classify(huge_zh).reason


def test_length_counts_the_whole_conversation_but_keywords_only_the_user():
    messages = [("system", "You analyse architecture and prove theorems. " * 400),
                ("user", "Translate 'hello' into German.")]
    result = rules.classify(messages)
    assert result.signals["complex_keywords"] == 0
    assert result.signals["long_prompt"] > 0


@pytest.mark.parametrize("text, expected", [
    ("Translate 'free shipping' into Spanish.", SIMPLE),
    ("把“限时折扣”翻译成英文。", SIMPLE),
    ("Write a 200-word product description for a leather wallet.", MEDIUM),
    ("写一封邮件给客户，解释这次发货延迟的原因并道歉。", MEDIUM),
    ("Design a distributed architecture for order processing and analyze its failure modes.",
     COMPLEX),
    ("设计一个高并发秒杀系统的架构，并分析库存一致性问题。", COMPLEX),
    ("Debug this:\n```python\nwhile True:\n    queue.put(queue.get())\n```", COMPLEX),
])
def test_typical_prompts_land_in_their_class(text, expected):
    assert classify(text).task_class == expected


@pytest.mark.parametrize("text", [
    "", "ok", "查", "Translate, summarise, extract, list, classify, format, define.",
    "分析 推理 代码 架构 证明 数学 优化 设计 ```x``` ∑∫√ $x^2$ 1. a\n2. b\n首先 然后 最后" * 50,
])
def test_score_is_bounded(text):
    result = classify(text)
    assert 0.0 <= result.score <= 1.0
    assert all(0.0 <= v <= 1.0 for v in result.signals.values())


def test_extremes_hit_the_ends_of_the_scale():
    assert classify("翻译：你好").score < config.simple_below
    assert classify("分析 推理 代码 架构 证明 ```x``` ∑∫ 首先 然后 " * 100).score == 1.0


@pytest.mark.parametrize("score, expected", [
    (0.0, SIMPLE), (0.299, SIMPLE), (0.3, MEDIUM), (0.5, MEDIUM), (0.699, MEDIUM),
    (0.7, COMPLEX), (1.0, COMPLEX),
])
def test_thresholds_map_scores_to_classes(score, expected):
    assert config.task_class(score) == expected


def test_thresholds_come_from_config():
    strict = dataclasses.replace(config, simple_below=0.0, complex_at_least=0.99)
    text = "Translate 'hello' into Spanish."
    assert rules.classify([("user", text)]).task_class == SIMPLE
    assert RuleClassifier(strict).classify([("user", text)]).task_class == MEDIUM


def test_reason_names_signals_and_keywords():
    result = classify("请分析这个架构，首先画出数据流，然后给出优化方案。")
    assert "complex keywords" in result.reason and "分析" in result.reason
    assert "multi step" in result.reason
    assert classify("The weather was fine that day. " * 25).reason.endswith("no signals fired")


def test_rule_classifier_satisfies_the_protocol():
    classifier: Classifier = rules
    assert isinstance(classifier.classify([("user", "hi")]), Classification)


def _write_config(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(config_path("classifier.yaml").read_text())
    mutate(data)
    path = tmp_path / "classifier.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d["weights"].pop("math"), "weights.math"),
    (lambda d: d["weights"].update(code_block="heavy"), "weights.code_block"),
    (lambda d: d["weights"].update(vibes=0.2), "weights.vibes"),
    (lambda d: d["thresholds"].update(simple_below=1.5), "thresholds.simple_below"),
    (lambda d: d["thresholds"].update(complex_at_least=0.2), "thresholds.complex_at_least"),
    (lambda d: d.pop("base_score"), "base_score"),
    (lambda d: d["keywords"]["complex"].update(zh="分析"), "keywords.complex.zh"),
    (lambda d: d["keywords"].pop("simple"), "keywords.simple"),
    (lambda d: d["length"].update(very_long_tokens=10), "length.very_long_tokens"),
    (lambda d: d["saturation"].update(math=0), "saturation.math"),
])
def test_config_errors_name_file_and_key(tmp_path, mutate, key):
    path = _write_config(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        load_classifier_config(path)
    assert info.value.key == key
    assert str(path) in str(info.value)


def test_evaluation_set_is_large_balanced_and_bilingual():
    result = evaluate(rules, DATA)
    assert result.n >= 300
    sizes = {label: sum(row.values()) for label, row in result.confusion.items()}
    assert min(sizes.values()) >= 0.8 * max(sizes.values())
    zh = sum(sum(r.values()) for r in result.per_language_confusion["zh"].values())
    assert zh >= 120


def test_accuracy_on_the_evaluation_set():
    result = evaluate(rules, DATA)
    assert result.accuracy >= ACCURACY_FLOOR, format_report(result)
    for lang in ("en", "zh"):
        assert result.per_language[lang] >= LANGUAGE_FLOOR, format_report(result)
    complex_total = sum(result.confusion[COMPLEX].values())
    assert result.count(COMPLEX, SIMPLE) <= MAX_COMPLEX_AS_SIMPLE_SHARE * complex_total


def test_report_and_cli(capsys, tmp_path):
    small = tmp_path / "eval.jsonl"
    small.write_text('{"prompt": "Translate hi into French.", "label": "simple", "lang": "en"}\n'
                     '{"prompt": "证明根号3是无理数，并分析证明思路。", "label": "complex", "lang": "zh"}\n')
    result = evaluate(rules, small)
    assert result.n == 2 and result.accuracy == 1.0
    assert result.confusion[SIMPLE][SIMPLE] == 1 and result.confusion[COMPLEX][COMPLEX] == 1
    assert bench(["classifier", "--data", str(small)]) == 0
    out = capsys.readouterr().out
    assert "accuracy: 100.0%" in out and "true \\ predicted" in out and "confusion (zh)" in out
