"""What a simulated model answers, choice by choice: filler prose of the planned length,
a JSON instance of the requested output schema, or tool calls (tools.py); cut at the first
stop sequence and at max_tokens. Also the pieces a streamed answer is sent in, and
plausible per-token logprobs."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from pipeline.routing.tokens import estimate_text_tokens
from pipeline.simulator.chat import ChatRequest, Choice, ToolCall
from pipeline.simulator.schema_instance import make_instance, prompt_words
from pipeline.simulator.text import (cut_at_stop, filler_text, last_user_text, log_uniform,
                                     mostly_chinese, stream_pieces)
from pipeline.simulator.tools import make_calls, tool_result_preamble, tools_to_call

CHARS_PER_TOKEN = 4
# json_object without a schema: a small object like a model's usual answer.
FREE_OBJECT = {"type": "object", "additionalProperties": False,
               "properties": {"answer": {"type": "string"},
                              "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
               "required": ["answer", "confidence"]}
_ALTERNATIVES = ("the", "a", "and", "to", "of", "it", "is", "in", "that", "for", ",", ".")


def compose(request: ChatRequest, rng: random.Random, wanted: int, limit: int,
            lengths: tuple[int, int], call_prefix: str) -> tuple[Choice, ...]:
    """``request.n`` choices; the first is ``wanted`` tokens long (before caps), the others
    draw their own length from ``lengths`` (min, max)."""
    choices = []
    for index in range(request.n):
        choice_rng = rng if index == 0 else random.Random(rng.getrandbits(64))
        length = wanted if index == 0 else log_uniform(choice_rng.random(), *lengths)
        called = tools_to_call(request)
        if called:
            choices.append(_calls_choice(make_calls(called, request, choice_rng, call_prefix),
                                         limit))
        else:
            choices.append(_text_choice(request, choice_rng, length, limit))
    return tuple(choices)


def _calls_choice(calls: tuple[ToolCall, ...], limit: int) -> Choice:
    tokens = sum(estimate_text_tokens(c.name) + estimate_text_tokens(c.arguments) + 3
                 for c in calls)
    if tokens <= limit:
        return Choice(None, "tool_calls", tokens, calls)
    first = calls[0]
    cut = ToolCall(first.id, first.name, first.arguments[:limit * CHARS_PER_TOKEN])
    return Choice(None, "length", limit, (cut,))


def _text_choice(request: ChatRequest, rng: random.Random, wanted: int, limit: int) -> Choice:
    if request.output.kind != "text":
        schema = request.output.schema or FREE_OBJECT
        words = prompt_words(last_user_text(request.messages))
        text = json.dumps(make_instance(schema, rng, words))
        tokens, finish = estimate_text_tokens(text), "stop"
        if tokens > limit:
            text, tokens, finish = text[:limit * CHARS_PER_TOKEN], limit, "length"
    else:
        preamble = tool_result_preamble(request)
        opening = estimate_text_tokens(preamble)
        if opening >= limit:
            text, tokens, finish = preamble[:limit * CHARS_PER_TOKEN], limit, "length"
        else:
            body = min(wanted, limit - opening)
            chinese = mostly_chinese(last_user_text(request.messages))
            text = preamble + filler_text(rng, body, chinese=chinese,
                                          truncated=wanted > limit - opening)
            tokens = opening + body
            finish = "length" if wanted > limit - opening else "stop"
    cut, sequence = cut_at_stop(text, request.stop)
    if sequence is None:
        return Choice(text, finish, tokens)
    return Choice(cut, "stop", min(tokens, max(estimate_text_tokens(cut), 1)),
                  stop_sequence=sequence)


# ---------------------------------------------------------------- streamed answers

@dataclass(frozen=True)
class Step:
    """One paced piece of a streamed answer: text, or a tool call's start or fragment."""
    choice: int
    text: str | None = None
    call: int = 0                      # which call of the choice
    start: ToolCall | None = None      # the call's first step: its id and name
    arguments: str | None = None       # a fragment of the call's arguments


def stream_steps(choices: tuple[Choice, ...]) -> list[Step]:
    """Every choice's steps, interleaved as a provider streams several choices."""
    per_choice: list[list[Step]] = []
    for index, choice in enumerate(choices):
        steps: list[Step] = []
        for k, call in enumerate(choice.tool_calls):
            steps.append(Step(index, call=k, start=call))
            steps += [Step(index, call=k, arguments=piece)
                      for piece in argument_pieces(call.arguments)]
        if not choice.tool_calls:
            steps += [Step(index, text=piece)
                      for piece in stream_pieces(choice.content or "") or [""]]
        per_choice.append(steps)
    merged: list[Step] = []
    for position in range(max(len(s) for s in per_choice)):
        merged += [steps[position] for steps in per_choice if position < len(steps)]
    return merged


def argument_pieces(arguments: str) -> list[str]:
    """Arguments JSON in fragments of a few characters, as OpenAI streams them."""
    tokens = re.findall(r"\w+|\s+|[^\w\s]+", arguments)
    return ["".join(tokens[i:i + 2]) for i in range(0, len(tokens), 2)]


# ------------------------------------------------------------------------ logprobs

def token_logprobs(text: str, top: int, seed: str) -> list[dict]:
    """OpenAI's per-token logprobs for ``text``: the sampled token first among the
    ``top`` most likely, the others less likely; the same text and seed, the same figures."""
    rng = random.Random(seed)
    out = []
    for piece in stream_pieces(text):
        chosen = -round(rng.expovariate(5.0), 4)
        alternatives = []
        for alt in rng.sample(_ALTERNATIVES, min(max(top - 1, 0), len(_ALTERNATIVES))):
            if alt != piece:
                alternatives.append(_entry(alt, round(chosen - 0.5 - rng.expovariate(0.5), 4)))
        top_list = [_entry(piece, chosen), *sorted(alternatives, key=lambda e: -e["logprob"])]
        out.append({**_entry(piece, chosen), "top_logprobs": top_list[:top]})
    return out


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}
