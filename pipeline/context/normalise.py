"""Lossless-minded clean-up of a prompt before it is sent: whitespace collapsed in prose,
exact duplicate paragraphs and messages dropped; code and data are left byte for byte.

**What is prose.** A message's text is cut into lines and grouped into blocks; every block
below is *verbatim* (never changed, never dropped) and everything else is prose:

- a fenced code block: from a line opening with ``` or ~~~ (up to 3 spaces before it) to
  the line closing it with the same character at least as many times, or to the end of
  the text if it is never closed;
- an indented block: a line starting with a tab or 4+ spaces, through the following lines
  that are indented or blank, up to its last indented line (blank lines inside stay as
  they are);
- quoted data: a run of lines starting with ``>`` (up to 3 spaces before it);
- JSON-looking data: from a line whose first non-space character is ``{`` or ``[`` to the
  line where the brackets balance again (brackets inside "strings" not counted), when they
  do balance within the text;
- a table-looking paragraph (lines up to a blank line): 2+ lines that all contain ``|``,
  or all contain a tab, or all contain the same number (1+) of commas (CSV).

**Prose changes.** In a prose line, runs of 2+ spaces/tabs after its first non-space
character become one space and trailing spaces go (leading indentation of up to 3 spaces
stays: nested lists); runs of blank lines become one blank line, and blank lines at the
start and end of a message go. A prose paragraph of at least ``MIN_DUPLICATE_TOKENS``
that repeats an earlier prose paragraph of the same message, after that collapse, is
dropped (shorter repeats such as "Output:" or "---" carry structure, not redundancy).

**Which messages.** Only system, user and assistant messages without tool calls are
edited, and in a message with content parts only its text parts (images are left alone).
Tool calls and tool results are never touched. A message is dropped as a duplicate only
if it has the same role, name and collapsed text as one kept before it, has no image and:
it is a system message or a retrieved passage (name "retrieved"), wherever it repeats; or
a user or assistant turn repeating the message right before it (a double send), since
dropping a repeat further back would leave two turns of one role side by side. The
*first* occurrence is kept: the prefix a provider has already seen (and may have cached)
stays byte-identical as a conversation grows, and the system prompt stays at the top;
keeping the last would move an instruction and change every later request's prefix. The
last message is never dropped (a double-sent final turn loses its earlier copy instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.context.retrieved import is_passage
from pipeline.events.models import TEXT, ChatMessage
from pipeline.routing.tokens import estimate_text_tokens

MIN_DUPLICATE_TOKENS = 12

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INDENTED = re.compile(r"^( {4}|\t)")
_QUOTE = re.compile(r"^ {0,3}>")
_JSON_START = re.compile(r"^\s*[\[{]")
_INNER_SPACE = re.compile(r"(?<=\S)[ \t]{2,}")
_TRAILING = re.compile(r"[ \t\r\f\v]+$")
_BLANK, _PROSE, _VERBATIM = "blank", "prose", "verbatim"


@dataclass(frozen=True)
class Normalised:
    """What ``normalise`` did; indices are positions in its input."""
    dropped: tuple[int, ...] = ()         # duplicate messages dropped
    edited: tuple[int, ...] = ()          # messages whose text changed
    paragraphs: int = 0                   # duplicate paragraphs dropped

    def describe(self) -> str:
        bits = []
        if self.dropped:
            bits.append(f"{len(self.dropped)} duplicate message(s) {list(self.dropped)}")
        if self.paragraphs:
            bits.append(f"{self.paragraphs} duplicate paragraph(s)")
        if self.edited:
            bits.append(f"whitespace in {len(self.edited)} message(s)")
        return ", ".join(bits) or "nothing to clean"


def _closes(line: str, marker: str) -> bool:
    stripped = line.strip()
    return (len(line) - len(line.lstrip(" ")) <= 3 and len(stripped) >= len(marker)
            and set(stripped) == {marker[0]})


def _json_end(lines: list[str], start: int) -> int | None:
    """The index of the line where brackets opened at ``start`` balance again, or None."""
    depth, in_string, escaped = 0, False, False
    for j in range(start, len(lines)):
        for ch in lines[j]:
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
                if depth <= 0:
                    return j
    return None


def _is_table(lines: list[str]) -> bool:
    if len(lines) < 2:
        return False
    commas = {line.count(",") for line in lines}
    return (all("|" in line for line in lines) or all("\t" in line for line in lines)
            or (len(commas) == 1 and commas != {0}))


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """``text`` as (kind, lines) blocks: blank runs, prose paragraphs and verbatim blocks;
    joining every block's lines with newlines gives ``text`` back."""
    lines = text.split("\n")
    out: list[tuple[str, list[str]]] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            j = i + 1
            while j < n and not _closes(lines[j], fence.group(1)):
                j += 1
            out.append((_VERBATIM, lines[i:j + 1]))
            i = j + 1
            continue
        if not line.strip():
            j = i
            while j < n and not lines[j].strip():
                j += 1
            out.append((_BLANK, lines[i:j]))
            i = j
            continue
        if _INDENTED.match(line):
            last = j = i
            while j < n and (_INDENTED.match(lines[j]) or not lines[j].strip()):
                if lines[j].strip():
                    last = j
                j += 1
            out.append((_VERBATIM, lines[i:last + 1]))
            i = last + 1
            continue
        if _QUOTE.match(line):
            j = i
            while j < n and _QUOTE.match(lines[j]):
                j += 1
            out.append((_VERBATIM, lines[i:j]))
            i = j
            continue
        if _JSON_START.match(line):
            end = _json_end(lines, i)
            if end is not None:
                out.append((_VERBATIM, lines[i:end + 1]))
                i = end + 1
                continue
        j = i + 1
        while j < n and lines[j].strip() and not any(
                pattern.match(lines[j]) for pattern in (_FENCE, _INDENTED, _QUOTE)):
            j += 1
        paragraph = lines[i:j]
        out.append((_VERBATIM if _is_table(paragraph) else _PROSE, paragraph))
        i = j
    return out


def normalise_text(text: str) -> tuple[str, int]:
    """(the cleaned text, duplicate paragraphs dropped), by the rules above."""
    pieces: list[str] = []
    seen: set[str] = set()
    duplicates, blank_before = 0, False
    for kind, lines in blocks(text):
        if kind == _BLANK:
            blank_before = True
            continue
        block = "\n".join(lines)
        if kind == _PROSE:
            block = "\n".join(_TRAILING.sub("", _INNER_SPACE.sub(" ", line)) for line in lines)
            if estimate_text_tokens(block) >= MIN_DUPLICATE_TOKENS:
                if block in seen:
                    duplicates += 1
                    continue
                seen.add(block)
        if pieces:              # blocks that touched still touch; a blank run is one line
            pieces.append("\n\n" if blank_before else "\n")
        pieces.append(block)
        blank_before = False
    return "".join(pieces), duplicates


def editable(m: ChatMessage) -> bool:
    return m.role in ("system", "user", "assistant") and not m.tool_calls


def _cleaned(m: ChatMessage) -> tuple[ChatMessage, int]:
    if not editable(m):
        return m, 0
    if not m.parts:
        text, duplicates = normalise_text(m.content)
        return (m if text == m.content else m.replace(content=text)), duplicates
    parts, duplicates = [], 0
    for part in m.parts:
        if part.type == TEXT:
            text, dup = normalise_text(part.text)
            duplicates += dup
            part = part if text == part.text else part.replace(text=text)
        parts.append(part)
    changed = any(a is not b for a, b in zip(parts, m.parts))
    return (m.replace(parts=parts) if changed else m), duplicates


def _key(m: ChatMessage) -> tuple[str, str | None, str] | None:
    if not editable(m) or m.images or not m.text:
        return None
    return m.role, m.name, m.text


def normalise(messages: list[ChatMessage]) -> tuple[list[ChatMessage], Normalised]:
    """A new list: each message cleaned, duplicate messages dropped (see the module's doc).
    The input and its messages are not changed; a message left as it was is the same
    object in the output."""
    out: list[tuple[int, ChatMessage]] = []
    seen: set[tuple[str, str | None, str]] = set()
    dropped, edited, paragraphs = [], [], 0
    for i, original in enumerate(messages):
        m, dup = _cleaned(original)
        paragraphs += dup
        if m is not original:
            edited.append(i)
        key = _key(m)
        anywhere = m.role == "system" or is_passage(m)
        repeat = key is not None and (key in seen if anywhere
                                      else bool(out) and _key(out[-1][1]) == key)
        if repeat and i == len(messages) - 1:
            if not anywhere:                # the final turn stays; its twin goes instead
                dropped.append(out.pop()[0])
        elif repeat:
            dropped.append(i)
            continue
        if key is not None:
            seen.add(key)
        out.append((i, m))
    edited = [i for i in edited if i not in dropped]
    return [m for _, m in out], Normalised(tuple(sorted(dropped)), tuple(edited), paragraphs)
