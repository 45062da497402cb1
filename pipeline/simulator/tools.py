"""When the simulated model calls a tool, which one, with what arguments — and how it
answers once the tool's result is back.

The rule, the same in every shape:

- ``none`` (Gemini ``NONE``): never a call.
- a forced function (OpenAI ``{"type": "function", ...}``, Anthropic ``{"type": "tool"}``,
  Gemini ``ANY`` with one allowed name): that function.
- ``required`` (Anthropic ``any``, Gemini ``ANY``): the tools that fit (below), else the
  first tool offered (or allowed).
- ``auto`` (the default when tools are given): a call only when the last message is the
  user's and a tool *clearly fits* it: the message names the tool (``get_weather``), or
  every word of its name but a leading verb (get, set, fetch, list, find, search, lookup,
  look, create, update, delete, add, remove, send, run, make, do, check, compute,
  calculate) starts a word of the message — ``get_weather`` fits "What's the weather in
  Paris?", ``getStockPrice`` fits "stock price of ACME". Otherwise the answer is text.

Several tools fit and ``parallel_tool_calls`` is not false: one call each; otherwise the
first that fits. The arguments are an instance of the tool's parameters schema whose
strings are words of the user's message.

The last message a tool result (OpenAI ``tool`` role, Anthropic ``tool_result`` block,
Gemini ``functionResponse``) under ``auto``: text that opens with the result, so a round
trip is visible — ``The get_weather tool returned: {"temp": 21}.`` then filler prose."""

from __future__ import annotations

import json
import random
import re

from pipeline.simulator.chat import ChatRequest, Tool, ToolCall
from pipeline.simulator.schema_instance import make_instance, prompt_words

_VERBS = frozenset({"get", "set", "fetch", "list", "find", "search", "lookup", "look",
                    "create", "update", "delete", "add", "remove", "send", "run", "make", "do",
                    "check", "compute", "calculate"})
RESULT_QUOTE_CHARS = 300             # how much of a tool result the answer quotes


def name_words(name: str) -> list[str]:
    """``get_weather`` / ``getWeather`` / ``get-weather`` -> ["get", "weather"]."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return [w.lower() for w in re.split(r"[\s_\-.]+", spaced) if w]


def fits(tool: Tool, text: str) -> bool:
    lowered = text.lower()
    if tool.name.lower() in lowered:
        return True
    words = name_words(tool.name)
    if len(words) > 1 and words[0] in _VERBS:
        words = words[1:]
    return bool(words) and all(re.search(rf"\b{re.escape(w)}", lowered) for w in words)


def tools_to_call(request: ChatRequest) -> list[Tool]:
    """The tools this turn calls, by the module's rule (empty: answer with text)."""
    choice = request.tool_choice
    offered = [t for t in request.tools if not choice.allowed or t.name in choice.allowed]
    if not offered or choice.mode == "none":
        return []
    if choice.mode == "function":
        return [t for t in offered if t.name == choice.name][:1]
    last = request.messages[-1] if request.messages else None
    user_text = last.text if last is not None and last.role == "user" else ""
    fitting = [t for t in offered if user_text and fits(t, user_text)]
    if choice.mode == "required":
        fitting = fitting or offered[:1]
    return fitting if request.parallel_tool_calls else fitting[:1]


def make_calls(tools: list[Tool], request: ChatRequest, rng: random.Random,
               prefix: str) -> tuple[ToolCall, ...]:
    """One call per tool; ``prefix`` is the shape's id prefix (call_, toolu_)."""
    words = prompt_words(" ".join(m.text for m in request.messages if m.role == "user"))
    calls = []
    for tool in tools:
        arguments = make_instance(tool.parameters, rng, words) if tool.parameters else {}
        calls.append(ToolCall(f"{prefix}{rng.getrandbits(96):024x}", tool.name,
                              json.dumps(arguments)))
    return tuple(calls)


def tool_result_preamble(request: ChatRequest) -> str:
    """The opening of an answer to a tool result ('' when the last message is none)."""
    results = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        results.append(message)
    if not results:
        return ""
    lines = []
    for message in reversed(results):
        quoted = message.text.strip()
        if len(quoted) > RESULT_QUOTE_CHARS:
            quoted = quoted[:RESULT_QUOTE_CHARS] + "..."
        lines.append(f"The {message.tool_name or 'tool'} tool returned: {quoted}.")
    return " ".join(lines) + " "
