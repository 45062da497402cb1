"""The garbage collector's cost in every Python process of a bench run.

Not imported by anything: put this directory on ``PYTHONPATH`` and every Python process
started with that environment (the bench, its workers, the simulator) loads it at start::

    PYTHONPATH=pipeline/bench/gc_probe llmpipe bench latency --concurrency 50 --only direct,interactive

Each process times its collections through ``gc.callbacks`` (wall clock, and the
collecting thread's CPU from ``time.thread_time``) and writes, every 2 s and at exit,
``$LLMPIPE_GC_PROBE_DIR/PID.txt`` (default /tmp/llmpipe-gc-probe): its command line,
per generation the count and the time, and every full collection, or slower than 10 ms,
with its time since the process started (start-up's come first). Used for the garbage
collector's section of docs/BENCHMARKS.md.
"""

import atexit
import gc
import os
import sys
import threading
import time

_DIR = os.environ.get("LLMPIPE_GC_PROBE_DIR", "/tmp/llmpipe-gc-probe")
_STARTED = time.monotonic()
_totals = {generation: [0, 0.0, 0.0] for generation in range(3)}   # count, wall s, CPU s
_slow: list[str] = []
_open: dict[int, tuple[float, float]] = {}


def _timed(phase: str, info: dict) -> None:
    generation = info["generation"]
    if phase == "start":
        _open[generation] = (time.perf_counter(), time.thread_time())
        return
    wall0, cpu0 = _open.pop(generation, (time.perf_counter(), time.thread_time()))
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    total = _totals[generation]
    total[0] += 1
    total[1] += wall
    total[2] += cpu
    if generation == 2 or wall > 0.010:
        _slow.append(f"t={time.monotonic() - _STARTED:7.1f}s gen{generation} "
                     f"wall={wall * 1000:.1f}ms cpu={cpu * 1000:.1f}ms "
                     f"collected={info.get('collected')}")


def _write() -> None:
    try:
        os.makedirs(_DIR, exist_ok=True)
        lines = [" ".join(sys.argv)[:200]]
        lines += [f"gen{g} count={n} wall={w * 1000:.1f}ms cpu={c * 1000:.1f}ms"
                  for g, (n, w, c) in _totals.items()]
        lines.append(f"process cpu={time.process_time():.2f}s up={time.monotonic() - _STARTED:.1f}s "
                     f"frozen={gc.get_freeze_count()} threshold={gc.get_threshold()}")
        lines += _slow[-100:]
        with open(os.path.join(_DIR, f"{os.getpid()}.txt"), "w") as out:
            out.write("\n".join(lines) + "\n")
    except OSError:
        pass


def _every_2s() -> None:
    while True:
        time.sleep(2)
        _write()


gc.callbacks.append(_timed)
atexit.register(_write)
threading.Thread(target=_every_2s, name="gc-probe", daemon=True).start()
