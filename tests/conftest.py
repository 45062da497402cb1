"""Fixtures every test directory shares: the chDB engine path (one per process, opened once
per session; a fresh database per test). See tests/chdb_fixture.py."""

from tests.chdb_fixture import chdb_client, chdb_database, chdb_dsn  # noqa: F401
