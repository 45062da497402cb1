"""Start-up that waits for what a worker needs: a worker started before the broker or
ClickHouse is reachable (a cluster coming up, a restart of either) retries with backoff and
one clear log line per attempt, instead of exiting, until ``startup_timeout_s``
(``LLMPIPE_STARTUP_TIMEOUT_S``, default 300 s; 0 waits for ever). Past it, it exits with the
last error, so an orchestrator restarts it and says why."""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger("llmpipe.worker")


class StartupTimeout(RuntimeError):
    pass


def wait_until_up(what: str, attempt: Callable[[], T], timeout_s: float, *,
                  first_delay_s: float = 0.5, cap_s: float = 10.0,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> T:
    """``attempt()``'s result once it succeeds; each failure waits (doubling from
    ``first_delay_s`` to ``cap_s``) and logs ``waiting_for what=... error=... retry_in=...``."""
    started, delay, tries = clock(), first_delay_s, 0
    while True:
        tries += 1
        try:
            result = attempt()
        except Exception as exc:        # whatever stops it now may be gone in a moment
            waited = clock() - started
            error = f"{type(exc).__name__}: {exc}"[:300]
            if timeout_s and waited + delay > timeout_s:
                raise StartupTimeout(f"{what} not reachable after {waited:.0f}s "
                                     f"({tries} attempts): {error}") from exc
            log.warning("waiting_for what=%s attempt=%d waited_s=%.0f retry_in=%.1fs error=%s",
                        what, tries, waited, delay, error)
            sleep(delay)
            delay = min(cap_s, delay * 2)
            continue
        if tries > 1:
            log.info("reachable what=%s after_s=%.1f attempts=%d", what, clock() - started, tries)
        return result
