"""Shared chDB fixtures: ONE engine path for the whole test run, one database per test.

chDB runs one engine per process and cannot open a second path while the first is open
(see ``pipeline/analytics/clickhouse.py``), so every test in a run must share the path
that ``chdb_dsn`` opens; isolation comes from a fresh database per test. tests/conftest.py
declares them once for every test (a module importing them itself would get a session
fixture, and so an engine path, of its own).

- ``chdb_dsn`` (session): ``chdb:///<tmp>/chdb`` — the engine stays open all session.
- ``chdb_database`` (function): a DSN ``chdb:///<tmp>/chdb?database=t_<hex>`` for code under
  test that connects by itself; the database exists, is empty, and is dropped afterwards.
- ``chdb_client`` (function): a connected ``ClickHouse`` on that fresh database (no tables;
  call ``apply_migrations(chdb_client)`` for the ledger schema).

Never ``connect()`` a different chdb path in-process during a run; a test about paths must
run in a subprocess. Close every client you open on the shared path.
"""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from pipeline.analytics.clickhouse import ClickHouse, connect


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("chdb")
    dsn = f"chdb://{path.resolve()}"
    anchor = connect(dsn)  # holds the engine open so every test shares it
    try:
        yield dsn
    finally:
        anchor.close()


@pytest.fixture
def chdb_database(chdb_dsn: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    with connect(chdb_dsn) as admin:
        admin.command(f"CREATE DATABASE {name}")
    try:
        yield f"{chdb_dsn}?database={name}"
    finally:
        with connect(chdb_dsn) as admin:
            admin.command(f"DROP DATABASE IF EXISTS {name} SYNC")


@pytest.fixture
def chdb_client(chdb_database: str) -> Iterator[ClickHouse]:
    client = connect(chdb_database)
    try:
        yield client
    finally:
        client.close()
