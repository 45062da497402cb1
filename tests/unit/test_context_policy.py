"""ContextPolicy from a tenant mapping and the per-request override string, and compress:
nothing changes for a tenant that did not opt in; the steps run in their order."""

from __future__ import annotations

import pytest

from pipeline.context import ContextPolicy, ContextPolicyError, compress, prefix_key
from pipeline.events.models import ChatMessage, ToolCall
from pipeline.routing.tokens import estimate_messages_tokens


def test_override_string_sets_the_named_strategies():
    policy = ContextPolicy.parse("normalise, window=8 ,TOP_K=4")
    assert policy == ContextPolicy(normalise=True, window_turns=8, retrieved_top_k=4)
    assert policy.to_override() == "normalise,window=8,top_k=4"
    assert ContextPolicy.parse(policy.to_override()) == policy
    assert ContextPolicy.parse("normalize,window_tokens=3000,summarize,retrieved_tokens=900") == \
        ContextPolicy(normalise=True, window_tokens=3000, summarise=True, retrieved_tokens=900)


def test_override_applies_on_top_of_the_tenant_policy():
    tenant = ContextPolicy(normalise=True, window_turns=8, retrieved_top_k=4)
    assert tenant.with_override("window=4,normalise=off") == \
        ContextPolicy(window_turns=4, retrieved_top_k=4)
    assert tenant.with_override("off") == ContextPolicy()
    assert tenant.with_override("  ") is tenant
    assert ContextPolicy.parse("off").to_override() == "off"


@pytest.mark.parametrize("text, says", [
    ("windw=8", "unknown item 'windw=8'"),
    ("window", "expected window=N"),
    ("window=eight", "expected window=N"),
    ("window=-1", "expected window=N"),
    ("top_k=٣", "expected top_k=N"),
    ("normalise=maybe", "expected on or off"),
    ("off,normalise", "'off' must stand alone"),
    ("window=8,window=9", "given twice"),
    ("normalise,,window=8", "an empty item"),
    ("summarise", "set window_turns or window_tokens"),
])
def test_bad_override_strings_say_what_is_wrong(text, says):
    with pytest.raises(ValueError) as e:
        ContextPolicy.parse(text)
    assert isinstance(e.value, ContextPolicyError)
    assert says in str(e.value) and str(e.value).startswith("x-llmpipe-context:")


def test_mapping_from_tenant_policy():
    assert ContextPolicy.from_mapping(None) == ContextPolicy()
    assert ContextPolicy.from_mapping({"normalise": True, "window_turns": 8, "summarise": True}) \
        == ContextPolicy(normalise=True, window_turns=8, summarise=True)
    assert ContextPolicy.from_mapping(ContextPolicy(retrieved_top_k=3).to_mapping()) == \
        ContextPolicy(retrieved_top_k=3)


@pytest.mark.parametrize("data, says", [
    ({"window": 8}, "context.window: unknown key"),
    ({"window_turns": "8"}, "context.window_turns: must be a whole number >= 0"),
    ({"window_turns": True}, "context.window_turns: must be a whole number >= 0"),
    ({"retrieved_tokens": -5}, "context.retrieved_tokens: must be a whole number >= 0"),
    ({"normalise": "yes"}, "context.normalise: must be true or false"),
    ({"summarise": True}, "context.summarise: summarises what the window drops"),
    (["normalise"], "context: must be a mapping"),
])
def test_bad_mappings_name_the_key(data, says):
    with pytest.raises(ContextPolicyError, match=says.replace(".", r"\.")):
        ContextPolicy.from_mapping(data)


def noisy() -> list[ChatMessage]:
    call = ToolCall("c1", "lookup", "{}")
    return [ChatMessage("system", "Be   brief."), ChatMessage("system", "Be brief."),
            ChatMessage("user", "old   question"), ChatMessage("assistant", "", tool_calls=[call]),
            ChatMessage("tool", "{}", tool_call_id="c1"), ChatMessage("assistant", "old answer"),
            ChatMessage("user", "Refunds take 14 days.", name="retrieved"),
            ChatMessage("user", "Shipping takes 3 days.", name="retrieved"),
            ChatMessage("user", "How long do refunds take?")]


def test_a_disabled_policy_returns_the_same_list_object():
    messages = noisy()
    out, decision = compress(messages, ContextPolicy())
    assert out is messages
    assert not decision.enabled and decision.steps == () and decision.saved == 0
    assert decision.tokens_before == decision.tokens_after == estimate_messages_tokens(messages)
    assert decision.explain().startswith("context off:")


def test_steps_run_in_order_and_their_counts_chain():
    messages = noisy()
    policy = ContextPolicy.parse("window=1,top_k=1,normalise,summarise")
    out, decision = compress(messages, policy)
    assert [s.name for s in decision.steps] == ["normalise", "retrieved", "window"]
    assert decision.steps[0].tokens_before == decision.tokens_before
    for a, b in zip(decision.steps, decision.steps[1:]):
        assert a.tokens_after == b.tokens_before
    assert decision.tokens_after == estimate_messages_tokens(out)
    assert [m.text for m in out] == ["Be brief.", "Refunds take 14 days.",
                                     "How long do refunds take?"]
    assert [m.role for m in decision.to_summarise] == ["user", "assistant", "tool", "assistant"]
    assert decision.summary_key == prefix_key(list(decision.to_summarise))
    line = decision.explain()
    assert line.startswith("context normalise,window=1,summarise,top_k=1: ~")
    assert "kept 1 of 2 passages" in line and "summary of 4 message(s) pending" in line
    assert messages == noisy()                                 # the input is not changed


def test_without_summarise_nothing_is_left_to_summarise():
    _, decision = compress(noisy(), ContextPolicy(window_turns=1))
    assert decision.to_summarise == () and decision.summary_key == ""
    assert decision.step("window").messages_dropped == 4
