"""settle_heap: start-up's objects out of the collector's sight, a larger young generation.
Run in a child process: freezing this test process's heap would outlive the test."""

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.settings import Settings

PROBE = """
import gc, json, sys
from pipeline.heap import settle_heap
kept = [[i] for i in range(5000)]           # start-up state, lives until exit
before = gc.get_threshold()
settle_heap(int(sys.argv[1]))
young = [[i] for i in range(100)]
print(json.dumps({"before": before, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects()),
                  "kept_scanned": any(x is kept for x in gc.get_objects())}))
"""


def probe(young: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(young)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def test_settle_heap_freezes_start_up_and_raises_the_young_threshold():
    seen = probe(20_000)
    assert seen["after"] == [20_000, *seen["before"][1:]]
    assert seen["frozen"] > 5000                       # start-up's objects, ours among them
    assert seen["tracked"] < 1000                      # what a collection still scans
    assert not seen["kept_scanned"]


def test_zero_leaves_pythons_collector_alone():
    seen = probe(0)
    assert seen["after"] == seen["before"]
    assert seen["frozen"] == 0
    assert seen["tracked"] > 5000
    assert seen["kept_scanned"]


def test_the_threshold_reaches_worker_processes_through_the_environment(monkeypatch):
    env = Settings(gc_young=1234).to_env()
    assert env["LLMPIPE_GC_YOUNG"] == "1234"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env().gc_young == 1234
    monkeypatch.delenv("LLMPIPE_GC_YOUNG")
    assert Settings.from_env().gc_young == Settings.gc_young == 20_000


def test_the_bench_gc_probe_records_every_process_collections(tmp_path):
    """pipeline/bench/gc_probe: on PYTHONPATH, a process writes its collections at exit."""
    probe_dir = Path(__file__).resolve().parents[2] / "pipeline" / "bench" / "gc_probe"
    env = {**os.environ, "PYTHONPATH": str(probe_dir), "LLMPIPE_GC_PROBE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", "import gc; gc.collect(); gc.collect()"],
                   env=env, check=True)
    [written] = tmp_path.glob("*.txt")
    lines = written.read_text().splitlines()
    counts = {line.split()[0]: int(line.split()[1].removeprefix("count=")) for line in lines
              if line.startswith("gen")}
    assert counts["gen2"] >= 2
    assert sum(" gen2 " in line for line in lines) >= 2      # each full one listed
