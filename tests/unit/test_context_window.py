"""The history window and its summary: whole turns, newest first, tool calls with their
results, the last turn always; the summary prompt, splice and prefix key."""

from __future__ import annotations

import json

from pipeline.context import (SUMMARY_PREFIX, prefix_key, splice_summary, summary_prompt,
                              turns_of, window)
from pipeline.events.models import ChatMessage, ToolCall
from pipeline.routing.tokens import estimate_messages_tokens


def conversation() -> list[ChatMessage]:
    call = ToolCall("c1", "lookup_ticket", '{"ticket": "T-1"}')
    return [
        ChatMessage("system", "You are support."),
        ChatMessage("user", "My serial is SN-1."),
        ChatMessage("assistant", "Thanks, noted the serial."),
        ChatMessage("user", "Is a visit booked?"),
        ChatMessage("assistant", "", tool_calls=[call]),
        ChatMessage("tool", '{"visit": "2025-03-14"}', tool_call_id="c1"),
        ChatMessage("assistant", "Yes, on 2025-03-14."),
        ChatMessage("system", "Answer briefly."),
        ChatMessage("user", "Which MTU?"),
        ChatMessage("assistant", "Use mtu 1492."),
        ChatMessage("user", "Thanks, and the serial again?"),
    ]


def test_turns_group_replies_tool_calls_and_results():
    assert turns_of(conversation()) == [[1, 2], [3, 4, 5, 6], [8, 9], [10]]


def test_consecutive_user_messages_are_one_turn():
    messages = [ChatMessage("user", "p1", name="retrieved"), ChatMessage("user", "p2", name="retrieved"),
                ChatMessage("user", "question")]
    assert turns_of(messages) == [[0, 1, 2]]


def test_keeps_every_system_message_and_the_last_turns_in_order():
    messages = conversation()
    kept, done = window(messages, turns=2)
    assert kept == [messages[i] for i in (0, 7, 8, 9, 10)]
    assert done.dropped == tuple(messages[i] for i in range(1, 7))
    assert done.dropped_indices == (1, 2, 3, 4, 5, 6)
    assert (done.turns_kept, done.turns_dropped) == (2, 2)


def test_a_tool_call_is_never_split_from_its_results_at_any_budget():
    messages = conversation()
    for budget in range(1, estimate_messages_tokens(messages) + 2):
        kept, done = window(messages, tokens=budget)
        kept_ids = {id(m) for m in kept}
        assert (id(messages[4]) in kept_ids) == (id(messages[5]) in kept_ids)
        assert messages[-1] in kept                                 # the last turn, always
        assert len(kept) + len(done.dropped) == len(messages)
        if len(kept) > 3:                                           # over the last turn alone
            assert estimate_messages_tokens(kept) <= budget


def test_the_last_turn_stays_even_over_the_budget():
    messages = conversation()
    kept, done = window(messages, tokens=1)
    assert kept == [messages[i] for i in (0, 7, 10)]
    assert done.turns_kept == 1


def test_no_limit_keeps_everything():
    messages = conversation()
    kept, done = window(messages, turns=10, tokens=10_000)
    assert kept == messages and done.dropped == ()


def test_summary_prompt_carries_exactly_the_dropped_messages():
    _, done = window(conversation(), turns=1)
    prompt = summary_prompt(list(done.dropped))
    assert [m.role for m in prompt] == ["system", "user"]
    text = prompt[1].content
    for needle in ("SN-1", "lookup_ticket", "2025-03-14", "mtu 1492"):
        assert needle in text
    assert "the serial again" not in text and "Answer briefly" not in text


def test_splice_puts_the_summary_after_the_leading_system_messages():
    messages, _ = window(conversation(), turns=1)
    spliced = splice_summary(messages, "The serial is SN-1.")
    # the window left both system messages in front: the summary follows them
    assert [m.role for m in messages] == ["system", "system", "user"]
    assert spliced[2] == ChatMessage("system", SUMMARY_PREFIX + "The serial is SN-1.")
    assert spliced[:2] == messages[:2] and spliced[3:] == messages[2:]
    assert splice_summary([ChatMessage("user", "hi")], "s")[0].role == "system"


def test_prefix_key_is_stable_and_tells_prefixes_apart():
    _, a = window(conversation(), turns=1)
    _, b = window(conversation(), turns=1)
    _, c = window(conversation(), turns=2)
    assert prefix_key(list(a.dropped)) == prefix_key(list(b.dropped))
    assert prefix_key(list(a.dropped)) != prefix_key(list(c.dropped))
    assert len(prefix_key([])) == 64
    json.dumps(prefix_key(list(a.dropped)))
