"""The history window: every system message and the newest turns that fit a turn count and
a token budget; what falls out is returned so a summariser can be asked for exactly that.

**Turns.** A turn starts at a user message that does not follow another user message (so
retrieved passages, a question and a double send make one turn) and runs to the next
turn's start: the assistant's replies, its tool calls and their tool results all belong
to it, so a tool call is never separated from its results. Anything before the first user
message other than system messages (an assistant's greeting) is a turn of its own.
System messages belong to no turn and are always kept, in place.

**Choosing.** Turns are taken newest first while both limits hold (0 = no limit): at most
``turns`` turns, and the kept messages, system ones included, within ``tokens`` by
``estimate_messages_tokens``. The first turn that does not fit ends the window, so the
kept turns are always the newest ones without a gap. The last turn (from the last user
message to the end) is always kept, even when it alone is over the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.events.models import ChatMessage
from pipeline.routing.tokens import REPLY_PRIMING, estimate_message_tokens


@dataclass(frozen=True)
class Windowed:
    """What ``window`` dropped: the messages (in order, for the summariser) and their
    indices in its input."""
    dropped: tuple[ChatMessage, ...] = ()
    dropped_indices: tuple[int, ...] = ()
    turns_kept: int = 0
    turns_dropped: int = 0

    def describe(self) -> str:
        if not self.dropped:
            return f"kept all {self.turns_kept} turn(s)"
        return (f"dropped {len(self.dropped)} message(s) of the oldest {self.turns_dropped} "
                f"turn(s), kept the last {self.turns_kept}")


def turns_of(messages: list[ChatMessage]) -> list[list[int]]:
    """The turns of ``messages`` as lists of indices, oldest first (system messages are in
    none)."""
    turns: list[list[int]] = []
    previous_role = None
    for i, m in enumerate(messages):
        if m.role == "system":
            continue
        starts = m.role == "user" and previous_role != "user"
        if starts or not turns:
            turns.append([])
        turns[-1].append(i)
        previous_role = m.role
    return turns


def window(messages: list[ChatMessage], turns: int = 0, tokens: int = 0
           ) -> tuple[list[ChatMessage], Windowed]:
    """A new list with every system message and the newest turns within ``turns`` and
    ``tokens`` (0: no limit), in their original order; see the module's doc."""
    groups = turns_of(messages)
    sizes = [estimate_message_tokens(m) for m in messages]
    total = REPLY_PRIMING + sum(s for m, s in zip(messages, sizes) if m.role == "system")
    kept_turns = 0
    for group in reversed(groups):
        size = sum(sizes[i] for i in group)
        fits = ((not turns or kept_turns < turns) and (not tokens or total + size <= tokens))
        if kept_turns and not fits:
            break
        total += size
        kept_turns += 1
    dropped_groups = groups[:len(groups) - kept_turns]
    dropped = sorted(i for group in dropped_groups for i in group)
    gone = set(dropped)
    kept = [m for i, m in enumerate(messages) if i not in gone]
    return kept, Windowed(tuple(messages[i] for i in dropped), tuple(dropped), kept_turns,
                          len(dropped_groups))
