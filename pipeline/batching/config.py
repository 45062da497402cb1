"""Window limits per priority, from pipeline/config/batching.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.batching.window import WindowLimits
from pipeline.config import ConfigError, Section, config_path, load_yaml

PRIORITIES = ("interactive", "standard", "batch")
DEFAULT_PRIORITY = "standard"
# A window holds its requests un-acknowledged on llm.routed: keep every wait bounded.
MAX_WAIT_MS_LIMIT = 300_000
_FIELDS = ("max_batch_size", "max_batch_tokens", "max_wait_ms", "close_when_quiet",
           "skip_when_quiet", "dispatch_in_intake")


@dataclass(frozen=True)
class BatchingConfig:
    priorities: dict[str, WindowLimits]
    #: priorities whose requests skip a window that would not fill (batching/alone.py)
    skip_quiet: frozenset[str] = frozenset()
    #: priorities whose Batches of one intake dispatches itself when it can
    #: (pipeline/agents/inline.py); the rest take the llm.batches hop
    in_intake: frozenset[str] = frozenset()

    def priority_of(self, priority: str) -> str:
        """The window a request's priority hint maps to (unknown hints: standard)."""
        return priority if priority in self.priorities else DEFAULT_PRIORITY

    def limits(self, priority: str) -> WindowLimits:
        return self.priorities[self.priority_of(priority)]


def load_batching(path: Path | None = None) -> BatchingConfig:
    path = path or config_path("batching.yaml")
    root = Section(path, "", load_yaml(path))
    unknown = set(root.data) - {"priorities"}
    if unknown:
        raise ConfigError(path, sorted(unknown)[0], "only the key 'priorities'")
    section = root.section("priorities")
    for name in section.data:
        if name not in PRIORITIES:
            raise ConfigError(path, f"priorities.{name}", f"one of {list(PRIORITIES)}")
    priorities, skip_quiet, in_intake = {}, set(), set()
    for name in PRIORITIES:
        s = section.section(name)
        extra = set(s.data) - set(_FIELDS)
        if extra:
            raise ConfigError(path, s.where(sorted(extra)[0]), f"one of {list(_FIELDS)}")
        wait = s.int("max_wait_ms", minimum=0)
        if wait > MAX_WAIT_MS_LIMIT:
            raise ConfigError(path, s.where("max_wait_ms"), f"at most {MAX_WAIT_MS_LIMIT}", wait)
        priorities[name] = WindowLimits(max_batch_size=s.int("max_batch_size", minimum=1),
                                        max_batch_tokens=s.int("max_batch_tokens", minimum=1),
                                        max_wait_ms=wait,
                                        close_when_quiet=s.bool("close_when_quiet", False))
        if s.bool("skip_when_quiet", False):
            skip_quiet.add(name)
        if s.bool("dispatch_in_intake", False):
            if wait != 0 and name not in skip_quiet:
                raise ConfigError(path, s.where("dispatch_in_intake"),
                                  "true only with max_wait_ms: 0 or skip_when_quiet: true (a "
                                  "windowed request waits in the batcher)", True)
            in_intake.add(name)
    return BatchingConfig(priorities, frozenset(skip_quiet), frozenset(in_intake))
