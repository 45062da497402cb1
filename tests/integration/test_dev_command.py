"""`llmpipe dev` as a newcomer runs it: demo traffic, a report, and Ctrl-C stops every child."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time


def test_dev_runs_demo_prints_report_and_ctrl_c_stops_every_child(tmp_path):
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        dev = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "dev", "--demo-requests", "12",
                                "--latency-scale", "0.05", "--data-dir", str(tmp_path / "data")],
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in log.read_text() and time.monotonic() < deadline:
            assert dev.poll() is None, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        # 12 over Kafka, 6+ through the HTTP gateway (plain, streamed, a tool call, a json
        # answer, an embedding, the plain call repeated until the cache answers it)
        accounted = re.search(r"accounted for: (\d+)/\1 responses, \1/\1 with exactly one "
                              r"usage row", text)
        assert accounted and int(accounted.group(1)) >= 18, text
        assert re.search(r"repeat    200 in [\d,]+ ms, from the cache \(hit; kind=exact\)", text), text
        assert "tool call 200: get_weather(" in text and "embedding 200: 2 vectors" in text, text
        assert re.search(r"plain     200 in [\d,]+ ms", text), text
        assert re.search(r"streamed  200: \d+ content events", text), text
        assert "bad key   401 invalid_api_key" in text and "unknown model 404" in text, text
        assert re.search(r"base_url=\"http://127.0.0.1:\d+/v1\", api_key=\"sk-llmp-", text), text
        assert "Model mix" in text and "Cost (USD)" in text and "p99" in text
        assert re.search(r"first token\s+1\s", text), text     # the streamed gateway call
        assert re.search(r"metrics \(Prometheus\): http://127.0.0.1:\d+/metrics", text), text
        in_intake = re.search(r"dispatched in intake (\d+) \(over the llm.batches hop \d+\)", text)
        assert in_intake and int(in_intake.group(1)) > 0, text    # the gateway's interactive calls
        spend = re.search(r"tenants' spend this month \$(\d+\.\d{4}) settled", text)
        assert spend and float(spend.group(1)) > 0, text
        lookups = re.search(r"cache lookups (\d+);", text)
        assert lookups and int(lookups.group(1)) > 0, text          # the repeat was a hit
        writes = re.search(r"table writes (\d+) sent as (\d+) changelog records", text)
        assert writes and 0 < int(writes.group(2)) <= int(writes.group(1)), text
        assert "garbage bytes                        -> dead letter (undecodable)" in text, text
        assert text.count("-> invalid_request: ") == 3 and "MISSING" not in text, text
        children = [int(p) for p in re.findall(r"pid (\d+)", text)]
        assert len(children) == 4, text              # broker, simulator, worker, gateway
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0
        time.sleep(0.5)
        alive = [pid for pid in children if _alive(pid)]
        assert alive == [], f"children still running: {alive}"
    finally:
        if dev.poll() is None:
            dev.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is already dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
