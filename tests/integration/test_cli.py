"""The operator commands, run as a user would: `llmpipe topics apply` and `llmpipe migrate`."""

from __future__ import annotations

import subprocess
import sys


def llmpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_topics_apply_creates_then_reports_unchanged(broker, topic_prefix):
    first = llmpipe("topics", "apply", "--bootstrap", broker.bootstrap, "--prefix", topic_prefix)
    assert first.returncode == 0, first.stderr
    assert f"{topic_prefix}llm.requests" in first.stdout and "created" in first.stdout.lower()
    again = llmpipe("topics", "apply", "--bootstrap", broker.bootstrap, "--prefix", topic_prefix)
    assert again.returncode == 0 and "unchanged" in again.stdout.lower()


def test_migrate_is_idempotent(tmp_path):
    dsn = f"chdb://{tmp_path / 'ch'}"
    first = llmpipe("migrate", "--dsn", dsn)
    assert first.returncode == 0, first.stderr
    assert "001_usage" in first.stdout
    again = llmpipe("migrate", "--dsn", dsn)
    assert again.returncode == 0 and "up to date" in again.stdout
