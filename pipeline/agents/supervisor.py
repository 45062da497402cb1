"""`llmpipe worker --processes N`: N worker processes in one consumer group on one machine.

A worker is one Python process, so one core; the consumer group spreads the partitions
over the processes exactly as it would over machines (docs/ARCHITECTURE.md, "Processes and
scaling out"). The supervisor only starts, signals and waits: each child is a plain
`llmpipe worker` with the same settings and its own web port (``LLMPIPE_WEB_PORT`` + i).
SIGTERM/SIGINT go to every child, which stops gracefully (GracefulWorker). If one child
exits on its own, the others are stopped and the supervisor exits with that child's code,
so whatever runs the supervisor (systemd, Kubernetes) restarts the set: no half-running
worker pretends to be healthy."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from pipeline.settings import Settings

log = logging.getLogger("llmpipe.supervisor")

POLL_S = 0.2


class SupervisorError(ValueError):
    pass


def child_envs(settings: Settings, processes: int) -> list[dict[str, str]]:
    """The environment of each child: the parent's, with its own web port."""
    if processes < 1:
        raise SupervisorError(f"--processes must be at least 1, got {processes}")
    if processes > 1 and "ledger" in settings.agents and settings.clickhouse_dsn.startswith("chdb://"):
        raise SupervisorError(
            "the ledger on chDB can run in one process only (chDB owns its path): run the "
            "ledger as its own worker (LLMPIPE_AGENTS=ledger,monitor, its own LLMPIPE_APP_ID) "
            "and the front workers with LLMPIPE_AGENTS=intake,dispatch --processes N")
    envs = []
    for i in range(processes):
        env = dict(os.environ)
        env.update(settings.with_(web_port=settings.web_port + i if settings.web_port > 0 else 0).to_env())
        envs.append(env)
    return envs


def supervise(settings: Settings, processes: int) -> int:
    children = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env)
                for env in child_envs(settings, processes)]
    log.info("supervisor_started processes=%d pids=%s", processes, [c.pid for c in children])
    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        codes = [c.poll() for c in children]
        if all(code is not None for code in codes):
            return max(abs(code) for code in codes if code is not None)
        exited = next((c for c, code in zip(children, codes) if code is not None), None)
        if exited is not None and not stopping:
            log.error("worker_exited pid=%s code=%s: stopping the others", exited.pid,
                      exited.returncode)
            stop(signal.SIGTERM, None)
        time.sleep(POLL_S)
