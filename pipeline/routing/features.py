"""What a chat request needs of its model beyond text (catalog FEATURES), so routing picks
only a model that can serve all of it, and says which field asked for what."""

from __future__ import annotations

from pipeline.events.models import Request


def needed(request: Request) -> dict[str, str]:
    """feature -> the request field that needs it (for explanations and refusals)."""
    out: dict[str, str] = {}
    if request.tools or any(m.tool_calls or m.role == "tool" for m in request.messages):
        out["tools"] = "tools" if request.tools else "tool calls in messages"
    if request.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = "parallel_tool_calls"
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        out[fmt.type] = f"response_format {fmt.type}"
    if any(m.images for m in request.messages):
        out["vision"] = "image parts"
    p = request.params
    if p.n > 1:
        out["n"] = f"n={p.n}"
    if p.logprobs:
        out["logprobs"] = "logprobs"
    if p.presence_penalty is not None or p.frequency_penalty is not None:
        out["penalties"] = "presence/frequency penalty"
    return out


def describe(lacking: list[str], needs: dict[str, str]) -> str:
    """'tools (tools), vision (image parts)'."""
    return ", ".join(f"{f} ({needs[f]})" for f in lacking)
