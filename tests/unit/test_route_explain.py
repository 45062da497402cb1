"""`llmpipe route --explain` tells an operator the class, the model and why."""

from __future__ import annotations

from pipeline.cli import main


def test_explain_complex_chinese_prompt(capsys):
    assert main(["route", "--explain", "请分析一下微服务架构和单体架构的优缺点，并给出迁移方案"]) == 0
    out = capsys.readouterr().out
    assert "class:      complex" in out and "model:      gpt-4.1" in out
    assert "rule:       class" in out and "分析" in out


def test_explain_shows_a_hint_rule_winning(capsys):
    assert main(["route", "--explain", "Translate hello into French", "--max-latency-ms", "300"]) == 0
    out = capsys.readouterr().out
    assert "model:      gemini-2.5-flash" in out and "rule:       latency" in out
    assert "class:      simple" in out


def test_explain_applies_a_tenants_policy(capsys, tmp_path):
    prompt = "请分析一下微服务架构和单体架构的优缺点，并给出迁移方案"
    policy = tmp_path / "acme.yaml"
    policy.write_text("tenant: acme\ndenied_models: [gpt-4.1]\n")
    assert main(["route", "--explain", prompt, "--policy-file", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "tenant:     acme (denied gpt-4.1)" in out
    assert "model:      gpt-4.1" not in out                 # without the policy it is gpt-4.1
    assert "gpt-4.1" in out.split("why:", 1)[1]            # and the reason says why not
