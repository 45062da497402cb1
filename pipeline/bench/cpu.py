"""CPU time per process from /proc/<pid>/stat, for benchmarks that must say where the
cycles went: the worker, the broker, the simulator and the bench process itself share the
machine's cores, so a latency figure means little without each one's share of them.

Linux only. /proc/<pid>/stat sums every thread of the process (the worker's chDB insert
thread included); children are not counted, which is right here since none of the
measured processes fork workers of their own."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# Fields of /proc/<pid>/stat counted after the ")" that closes the command name (which
# may itself contain spaces and parentheses): the state is field 3, utime 14, stime 15.
_UTIME, _STIME = 14 - 3, 15 - 3


def parse_stat(text: str) -> int:
    """User plus system CPU time, in clock ticks, from the text of a /proc/<pid>/stat."""
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[_UTIME]) + int(fields[_STIME])


def cpu_ms(pid: int) -> float:
    """Milliseconds of CPU the process ``pid`` has used so far (user + system)."""
    with open(f"/proc/{pid}/stat") as f:
        return parse_stat(f.read()) * 1000 / TICKS_PER_SECOND


@dataclass(frozen=True)
class Sample:
    """Each named process's CPU milliseconds at one moment (``at``: monotonic seconds)."""
    at: float
    cpu_ms: dict[str, float]


@dataclass(frozen=True)
class Usage:
    """CPU milliseconds each named process used between two samples, over ``elapsed_s``."""
    elapsed_s: float
    cpu_ms: dict[str, float]

    def per_request(self, name: str, requests: int) -> float:
        return self.cpu_ms[name] / requests if requests else float("nan")

    def share_of_core(self, name: str) -> float:
        """The process's CPU time as a fraction of one core over the interval."""
        return self.cpu_ms[name] / (self.elapsed_s * 1000) if self.elapsed_s > 0 else float("nan")


class CpuClock:
    """Samples the CPU time of a fixed set of named processes, e.g. ``{"worker": pid}``; a
    name may stand for several processes (``{"worker": [pid1, pid2]}``): their sum."""

    def __init__(self, pids: dict[str, int | list[int]]):
        self.pids = {name: [p] if isinstance(p, int) else list(p) for name, p in pids.items()}

    def sample(self) -> Sample:
        return Sample(time.monotonic(), {name: sum(map(cpu_ms, pids))
                                         for name, pids in self.pids.items()})

    def since(self, before: Sample) -> Usage:
        now = self.sample()
        return Usage(now.at - before.at,
                     {name: now.cpu_ms[name] - before.cpu_ms[name] for name in self.pids})
