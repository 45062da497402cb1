"""normalise: prose is cleaned, code and data are left byte for byte, duplicates go."""

from __future__ import annotations

import copy

from pipeline.context import normalise, normalise_text
from pipeline.events.models import IMAGE_URL, TEXT, ChatMessage, ContentPart, ToolCall

FENCED = "```python\ndef f(x):\n    return  x   *  2   \n\n\n    # done  \n```"
TILDE = "~~~\na    b\n\n\n~~~"
INDENTED = "    x  =  1\n    \n\n    y  =  2   "
QUOTED = "> quoted    data  \n>   more"
JSON = '{\n    "a":   1,\n    "b":  "x  y"\n}'
CSV = "name,  age\nann,   31\nbob,  42"
TABLE = "| a  | b  |\n|----|----|\n| 1  |  2 |"


def test_code_and_data_blocks_survive_byte_for_byte():
    blocks = (FENCED, TILDE, INDENTED, QUOTED, JSON, CSV, TABLE)
    text = "Intro   text  with   spaces.  \n\n\n\n" + "\n\nThen   this:\n\n".join(blocks) + "\n\n\nBye  ."
    out, _ = normalise_text(text)
    for block in blocks:
        assert block in out
    assert out.startswith("Intro text with spaces.\n\n")
    assert out.endswith("\n\nBye .")
    assert "Then this:" in out and "Then   this:" not in out


def test_an_unclosed_fence_protects_to_the_end():
    text = "See:\n```\na    b\n\n\n  c   "
    assert normalise_text(text)[0] == text


def test_a_fence_touching_prose_keeps_touching():
    text = "Run   this:\n```\nls  -l\n```\nthen   that."
    assert normalise_text(text)[0] == "Run this:\n```\nls  -l\n```\nthen that."


def test_duplicate_paragraphs_go_but_short_repeats_and_code_stay():
    para = "The error on the router page says WAN link down, reconnecting in thirty seconds."
    text = f"{para}\n\nOutput:\n```\nok  1\n```\n\nOutput:\n```\nok  1\n```\n\n{para}\n\n{para}  "
    out, dropped = normalise_text(text)
    assert dropped == 2
    assert out.count(para) == 1
    assert out.count("Output:") == 2 and out.count("```\nok  1\n```") == 2


def test_whitespace_collapse_keeps_small_indentation():
    out, _ = normalise_text("List:\n  - one   item  \n  - two")
    assert out == "List:\n  - one item\n  - two"


def test_input_is_not_changed_and_untouched_messages_are_the_same_objects():
    messages = [ChatMessage("system", "Be   brief."), ChatMessage("user", "clean")]
    before = copy.deepcopy(messages)
    out, done = normalise(messages)
    assert messages == before
    assert out is not messages and out[1] is messages[1]
    assert out[0].content == "Be brief." and done.edited == (0,)


def test_a_repeated_system_prompt_goes_wherever_it_repeats_and_the_first_stays():
    system = ChatMessage("system", "You are support.")
    messages = [system, ChatMessage("user", "a"), ChatMessage("assistant", "b"),
                ChatMessage("system", "You are  support."), ChatMessage("user", "c")]
    out, done = normalise(messages)
    assert done.dropped == (3,)
    assert out[0] is system and [m.role for m in out] == ["system", "user", "assistant", "user"]


def test_user_turns_go_only_as_a_double_send():
    messages = [ChatMessage("user", "yes"), ChatMessage("assistant", "one"),
                ChatMessage("user", "yes"), ChatMessage("user", "yes"),
                ChatMessage("assistant", "two"), ChatMessage("user", "last")]
    out, done = normalise(messages)
    assert done.dropped == (3,)
    assert [m.text for m in out] == ["yes", "one", "yes", "two", "last"]


def test_the_final_turn_is_never_dropped():
    messages = [ChatMessage("system", "s"), ChatMessage("user", "again"),
                ChatMessage("user", "again")]
    out, done = normalise(messages)
    assert done.dropped == (1,) and out[-1] is messages[-1]


def test_tool_calls_and_tool_results_are_never_touched():
    call = ToolCall("c1", "lookup", '{"q":  "a  b"}')
    messages = [ChatMessage("user", "look   up"),
                ChatMessage("assistant", "calling   now", tool_calls=[call]),
                ChatMessage("tool", '{"r":   "x    y"}', tool_call_id="c1"),
                ChatMessage("tool", '{"r":   "x    y"}', tool_call_id="c1")]
    out, done = normalise(messages)
    assert out[1:] == messages[1:] and all(a is b for a, b in zip(out[1:], messages[1:]))
    assert done.dropped == ()


def test_image_parts_stay_and_text_parts_are_cleaned():
    image = ContentPart(IMAGE_URL, url="https://x/a.png", detail="low")
    m = ChatMessage("user", "", parts=[ContentPart(TEXT, text="what   is  this?"), image])
    out, _ = normalise([m, ChatMessage("user", "", parts=list(m.parts))])
    assert len(out) == 2                        # a message with an image is never a duplicate
    assert out[0].parts[0].text == "what is this?" and out[0].parts[1] is image
    assert m.parts[0].text == "what   is  this?"


def test_a_repeated_retrieved_passage_goes():
    passage = ChatMessage("user", "Refunds take 14 days.", name="retrieved")
    messages = [passage, ChatMessage("user", "q1"), ChatMessage("assistant", "a1"),
                ChatMessage("user", "Refunds take 14 days.", name="retrieved"),
                ChatMessage("user", "q2")]
    assert normalise(messages)[1].dropped == (3,)
